"""What a run's tail is made of, from the files `CRAT_COMPARE_LATENCIES` has the comparison
write (one per measured run: when each request was sent and how long its answer took, in
microseconds).

    python benches/compare/tail.py DIR/tiny-crat-sdk-1-round1.txt [more files] [--over 300]

Prints, per file: the requests, p50, p90, p99 and p99.9; how many took longer than each of
300 µs, 500 µs and 1 ms (or the `--over` thresholds); and the stalls: requests over the
last threshold that came within 20 ms of each other are one stall, shown with when it
began, how long it lasted and how many requests it held up. A tail made of a few stalls
(another program's burst of work on the same cores) reads differently from one spread over
the whole run (the cost of every wake-up).
"""

from __future__ import annotations

import argparse
import statistics

STALL_GAP_US = 20_000


def read(path: str) -> list[tuple[int, int]]:
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            start, latency = line.split()
            rows.append((int(start), int(latency)))
    if not rows:
        raise SystemExit(f"{path}: no requests")
    return rows


def percentile(sorted_values: list[int], p: float) -> int:
    # The comparison's own rule (crat_benches::http::Summary): the nearest rank.
    return sorted_values[round((len(sorted_values) - 1) * p)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--over", type=int, nargs="+", default=[300, 500, 1000], help="µs")
    args = parser.parse_args()
    for path in args.files:
        rows = read(path)
        latencies = sorted(l for _, l in rows)
        n = len(latencies)
        print(f"{path}: {n} requests over {rows[-1][0] / 1e6:.2f} s")
        print(
            "  p50 {} µs, p90 {}, p99 {}, p99.9 {}, max {}; mean {:.0f}".format(
                *(percentile(latencies, p) for p in (0.5, 0.9, 0.99, 0.999)),
                latencies[-1],
                statistics.fmean(latencies),
            )
        )
        over = ", ".join(
            f"{sum(l > t for l in latencies)} over {t} µs ({100 * sum(l > t for l in latencies) / n:.2f} %)"
            for t in args.over
        )
        print(f"  {over}")
        slow = [(s, l) for s, l in rows if l > args.over[-1]]
        stalls: list[list[tuple[int, int]]] = []
        for s, l in slow:
            if stalls and s - (stalls[-1][-1][0] + stalls[-1][-1][1]) <= STALL_GAP_US:
                stalls[-1].append((s, l))
            else:
                stalls.append([(s, l)])
        for stall in stalls:
            begin = stall[0][0]
            end = max(s + l for s, l in stall)
            print(
                f"  stall at {begin / 1000:8.1f} ms: {(end - begin) / 1000:6.1f} ms long, "
                f"{len(stall)} requests over {args.over[-1]} µs, the slowest {max(l for _, l in stall)} µs"
            )


if __name__ == "__main__":
    main()
