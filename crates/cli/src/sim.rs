//! `crat sim …`: run scenario files (seeds, Monte-Carlo, sweeps) and plot their results.
//! The models live in `crat-sim`; this module reads scenario files and writes result files.
//!
//! Layout of `--out DIR` (default `sim-out/<scenario name>`):
//! `runs.csv` (one row per run: index, label, seed, status, rounds) and per run
//! `run-NNNN/{run.json, rounds.csv, nodes.csv, summary.json}` (`error.txt` and the rounds
//! finished so far when a run fails), plus SVG charts with `--plot`.

use std::fmt::Write as _;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Subcommand;
use crat_sim::{Report, Scenario, Simulation, write_nodes_csv};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

/// Most Monte-Carlo seeds one invocation may run.
const SEEDS_MAX: u64 = 10_000;

/// Largest scenario file read.
const SCENARIO_BYTES_MAX: u64 = 1 << 20;

/// `crat sim` verbs.
#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// Run a scenario file: every `[sweep]` combination × every seed, in parallel on all
    /// cores. Results (CSV, JSON, each run's seed and parameters) go under `--out`.
    Run {
        /// The scenario TOML (see `scenarios/` for examples).
        scenario: PathBuf,
        /// Seed of the first run (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Monte-Carlo: runs per parameter set, seeds `seed, seed+1, …`.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        /// Output directory (default `sim-out/<scenario name>`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write each round's rewards input (interchange JSON, `crat rewards compute` reads
        /// it) as `round-NNNNNN.json` and its result as `round-NNNNNN.result.json` here
        /// (in `run-NNNN/` subfolders when there are several runs).
        #[arg(long)]
        export_rounds: Option<PathBuf>,
        /// Also write SVG charts of the main metrics into each run's folder.
        #[arg(long)]
        plot: bool,
    },
    /// Write SVG charts from a run folder's `rounds.csv` into the same folder.
    Plot {
        /// A `run-NNNN` folder written by `crat sim run`.
        run_dir: PathBuf,
    },
}

/// Runs one `crat sim` verb.
pub(crate) fn run(cmd: SimCommand) -> anyhow::Result<()> {
    // A run faults in its heap once and reuses it round after round (see crat-alloc).
    crat_alloc::huge_pages_off_unless_asked();
    match cmd {
        SimCommand::Run {
            scenario,
            seed,
            seeds,
            out,
            export_rounds,
            plot,
        } => run_scenarios(&scenario, seed, seeds, out, export_rounds, plot),
        SimCommand::Plot { run_dir } => {
            let csv = fs::read_to_string(run_dir.join("rounds.csv"))
                .with_context(|| format!("cannot read {}/rounds.csv", run_dir.display()))?;
            write_plots(&run_dir, &csv)
        }
    }
}

struct RunSpec {
    index: usize,
    label: String,
    seed: u64,
    scenario: Scenario,
}

fn run_scenarios(
    path: &Path,
    seed: Option<u64>,
    seeds: u64,
    out: Option<PathBuf>,
    export: Option<PathBuf>,
    plot: bool,
) -> anyhow::Result<()> {
    use std::io::Read;
    let mut text = String::new();
    fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(SCENARIO_BYTES_MAX)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let sets = Scenario::expand(&text).with_context(|| format!("{}", path.display()))?;
    if seeds == 0 || seeds > SEEDS_MAX {
        bail!("--seeds must be in 1..={SEEDS_MAX}");
    }
    let name = sets
        .first()
        .map(|(_, s)| s.name.clone())
        .unwrap_or_default();
    let out = out.unwrap_or_else(|| PathBuf::from("sim-out").join(&name));
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut specs = Vec::new();
    for (label, scenario) in sets {
        let base = seed.unwrap_or(scenario.seed);
        for k in 0..seeds {
            specs.push(RunSpec {
                index: specs.len(),
                label: label.clone(),
                seed: base.wrapping_add(k),
                scenario: scenario.clone(),
            });
        }
    }
    let total = specs.len();
    let several = total > 1;
    let all_rounds: u64 = specs.iter().map(|s| u64::from(s.scenario.rounds)).sum();
    // Drawn on standard error when it is a terminal, hidden otherwise.
    let bar = ProgressBar::new(all_rounds);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} rounds, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("0/{total} runs"));
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    let statuses: Vec<(usize, String, u64, String, usize)> = specs
        .par_iter()
        .map(|spec| {
            let run_dir = out.join(format!("run-{:04}", spec.index));
            let export_dir = export.as_ref().map(|e| {
                if several {
                    e.join(format!("run-{:04}", spec.index))
                } else {
                    e.clone()
                }
            });
            let t = Instant::now();
            let (status, rounds) = match run_one(spec, &run_dir, export_dir.as_deref(), plot, &bar)
            {
                Ok(rounds) => ("ok".to_owned(), rounds),
                Err((rounds, e)) => (format!("failed: {e:#}"), rounds),
            };
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            bar.set_message(format!("{n}/{total} runs"));
            bar.suspend(|| {
                eprintln!(
                    "[{n}/{total}] run-{:04} seed {} {}{} ({:.1} s)",
                    spec.index,
                    spec.seed,
                    if spec.label.is_empty() {
                        String::new()
                    } else {
                        format!("[{}] ", spec.label)
                    },
                    status,
                    t.elapsed().as_secs_f64()
                )
            });
            (spec.index, spec.label.clone(), spec.seed, status, rounds)
        })
        .collect();
    bar.finish_and_clear();
    let mut index = String::from("run,label,seed,status,rounds\n");
    let mut failed = 0;
    for (i, label, seed, status, rounds) in &statuses {
        if status != "ok" {
            failed += 1;
        }
        let _ = writeln!(
            index,
            "{i},\"{}\",{seed},\"{}\",{rounds}",
            label.replace('"', "'"),
            status.replace('"', "'")
        );
    }
    fs::write(out.join("runs.csv"), index).context("cannot write runs.csv")?;
    eprintln!(
        "{total} run(s) in {:.1} s; results in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    if failed > 0 {
        bail!("{failed} of {total} run(s) failed; see runs.csv and error.txt in their folders");
    }
    Ok(())
}

/// One run; on failure the rounds finished so far are still written.
fn run_one(
    spec: &RunSpec,
    dir: &Path,
    export: Option<&Path>,
    plot: bool,
    bar: &ProgressBar,
) -> Result<usize, (usize, anyhow::Error)> {
    let fail = |e: anyhow::Error| (0, e);
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
        .map_err(fail)?;
    if let Some(e) = export {
        fs::create_dir_all(e)
            .with_context(|| format!("cannot create {}", e.display()))
            .map_err(fail)?;
    }
    let meta = serde_json::json!({
        "label": spec.label,
        "seed": spec.seed,
        "scenario": spec.scenario,
    });
    let meta = serde_json::to_string_pretty(&meta)
        .context("cannot encode run.json")
        .map_err(fail)?;
    fs::write(dir.join("run.json"), meta + "\n")
        .context("cannot write run.json")
        .map_err(fail)?;
    let mut sim = Simulation::new(&spec.scenario, spec.seed)
        .context("invalid scenario")
        .map_err(fail)?;
    let mut result: anyhow::Result<()> = Ok(());
    while !sim.finished() {
        let step = match export {
            // Nothing to export: rounds are closed without the rank-ordered outcome.
            None => sim.advance().map(Ok),
            Some(e) => sim.step_with(|closed| {
                let r = closed.inputs.round.index;
                fs::write(
                    e.join(format!("round-{r:06}.json")),
                    closed.inputs.to_json(),
                )
                .and_then(|()| {
                    fs::write(
                        e.join(format!("round-{r:06}.result.json")),
                        closed.outcome.to_json(),
                    )
                })
            }),
        };
        match step {
            Ok(Ok(())) => bar.inc(1),
            Ok(Err(err)) => {
                result = Err(anyhow::Error::new(err).context("cannot export round"));
                break;
            }
            Err(err) => {
                result = Err(anyhow::Error::new(err).context("run stopped"));
                break;
            }
        }
    }
    let report = sim.report();
    let rounds = report.rounds.len();
    let written = write_results(dir, report, &sim, plot);
    match (result, written) {
        (Ok(()), Ok(())) => Ok(rounds),
        (Err(e), _) | (Ok(()), Err(e)) => {
            let _ = fs::write(dir.join("error.txt"), format!("{e:#}\n"));
            Err((rounds, e))
        }
    }
}

fn write_results(dir: &Path, report: &Report, sim: &Simulation, plot: bool) -> anyhow::Result<()> {
    let mut rounds = Vec::new();
    report.write_rounds_csv(&mut rounds)?;
    fs::write(dir.join("rounds.csv"), &rounds).context("cannot write rounds.csv")?;
    let nodes = fs::File::create(dir.join("nodes.csv")).context("cannot create nodes.csv")?;
    write_nodes_csv(&sim.node_summaries(), BufWriter::new(nodes))
        .context("cannot write nodes.csv")?;
    fs::write(dir.join("summary.json"), report.summary_json())
        .context("cannot write summary.json")?;
    if plot {
        write_plots(dir, &String::from_utf8_lossy(&rounds))?;
    }
    Ok(())
}

/// Charts written by `--plot` / `crat sim plot`: (file, title, metrics, class).
const CHARTS: &[(&str, &str, &[&str], &str)] = &[
    (
        "usd.svg",
        "USD per round (µUSD): income, guaranteed, bonus, treasury",
        &[
            "income_usd_micro",
            "guaranteed_usd_micro",
            "bonus_usd_micro",
            "treasury_usd_micro",
        ],
        "all",
    ),
    (
        "ratios.svg",
        "Ratios: SLA fulfilment, retention, Gini of earnings, CRAT top-decile share",
        &[
            "sla_fulfilment",
            "retention",
            "gini_earnings",
            "crat_top_decile_share",
        ],
        "all",
    ),
    (
        "requests.svg",
        "Requests served and dropped",
        &["requests_served", "requests_dropped"],
        "all",
    ),
    (
        "nodes.svg",
        "Nodes active, committed; paid ranks",
        &["nodes_active", "nodes_committed", "paid_ranks"],
        "all",
    ),
];

/// One line of a chart: its name and (round, value) points.
type Series<'a> = (&'a str, Vec<(u64, f64)>);

const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// Plain SVG line charts (no font or plotting library needed: text is left to the viewer).
fn write_plots(dir: &Path, rounds_csv: &str) -> anyhow::Result<()> {
    let rows: Vec<(u64, &str, &str, f64)> = rounds_csv
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            let r = f.next()?.parse().ok()?;
            let m = f.next()?;
            let c = f.next()?;
            let v = f.next()?.parse().ok()?;
            Some((r, m, c, v))
        })
        .collect();
    let mut charts: Vec<(&str, &str, Vec<Series<'_>>)> = CHARTS
        .iter()
        .map(|(file, title, metrics, class)| {
            let series = metrics
                .iter()
                .map(|m| {
                    let pts = rows
                        .iter()
                        .filter(|(_, rm, rc, _)| rm == m && rc == class)
                        .map(|(r, _, _, v)| (*r, *v))
                        .collect();
                    (*m, pts)
                })
                .collect();
            (*file, *title, series)
        })
        .collect();
    // Bonus USD by rating class.
    let by_class = (1..=5)
        .map(|c| {
            let pts = rows
                .iter()
                .filter(|(_, m, rc, _)| *m == "bonus_usd_micro" && rc.parse() == Ok(c))
                .map(|(r, _, _, v)| (*r, *v))
                .collect();
            (
                ["rating 1", "rating 2", "rating 3", "rating 4", "rating 5"][c as usize - 1],
                pts,
            )
        })
        .collect();
    charts.push((
        "bonus_by_rating.svg",
        "Bonus USD per rating class (µUSD)",
        by_class,
    ));
    for (file, title, series) in charts {
        let svg = svg_chart(title, &series);
        fs::write(dir.join(file), svg).with_context(|| format!("cannot write {file}"))?;
    }
    Ok(())
}

fn svg_chart(title: &str, series: &[Series<'_>]) -> String {
    let (w, h, left, right, top, bottom) = (800.0, 420.0, 90.0, 20.0, 40.0, 90.0);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x as f64);
        x1 = x1.max(x as f64);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let sy = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"24\" font-size=\"14\">{}</text>\n",
        xml(title)
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{0}\" stroke=\"black\"/>",
        h - bottom,
        w - right
    );
    for k in 0..=4 {
        let v = y0 + (y1 - y0) * f64::from(k) / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><line x1=\"{left}\" y1=\"{1:.1}\" x2=\"{}\" y2=\"{1:.1}\" stroke=\"#ddd\"/>",
            left - 6.0,
            sy(v),
            fmt_num(v),
            w - right
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"{0}\">round {x0}</text><text x=\"{1}\" y=\"{0}\" text-anchor=\"end\">round {x1}</text>",
        h - bottom + 18.0,
        w - right
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x as f64), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        let ly = h - bottom + 40.0 + 16.0 * (i / 2) as f64;
        let lx = left + 340.0 * (i % 2) as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{lx}\" y=\"{:.1}\" width=\"12\" height=\"4\" fill=\"{colour}\"/><text x=\"{}\" y=\"{ly:.1}\">{}</text>",
            ly - 5.0,
            lx + 18.0,
            xml(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.3e}", v)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn xml(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
