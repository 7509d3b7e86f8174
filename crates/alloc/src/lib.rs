//! `crat-alloc`: the allocator the `crat` binary, the benchmarks and the simulator's examples
//! run on, and its tuned options.
//!
//! mimalloc reuses freed memory for the next large frame (64 MiB tensors) where glibc maps
//! and faults in fresh pages every time (`benches/benches/quic.rs` measures the difference).
//! [`retain_freed_memory_ms`] keeps freed memory with the process for a while before mimalloc
//! returns it to the OS (its default is 10 ms): a simulator round of a million nodes frees and
//! allocates hundreds of megabytes, and returned at once, every round faulted in fresh zeroed
//! pages (a third of its time). [`RETAIN_FREED_MEMORY_MS`] is the delay the binaries use.
//!
//! [`huge_pages_off_unless_asked`] turns transparent huge pages off for a process that
//! touches a large heap once and then reuses it (the simulator): on the 2-vCPU VMs we run on,
//! each fresh 2 MiB page cost far more to fault in than its 512 small pages, and a
//! million-node run spent a quarter of its wall time there.
//!
//! Libraries never choose the allocator; binaries do:
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: crat_alloc::MiMalloc = crat_alloc::MiMalloc;
//!
//! fn main() {
//!     crat_alloc::retain_freed_memory_ms(crat_alloc::RETAIN_FREED_MEMORY_MS);
//!     let v = vec![0u8; 1 << 20];
//!     assert_eq!(v.len(), 1 << 20);
//! }
//! ```

pub use mimalloc::MiMalloc;

/// mimalloc's option index for the purge delay (`mi_option_purge_delay` in both the v2 and
/// v3 headers bundled by `libmimalloc-sys` 0.1; the crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc's own environment variable for transparent huge pages; where it is set, the
/// process keeps the choice it names.
pub const ALLOW_THP_ENV: &str = "MIMALLOC_ALLOW_THP";

/// How long the `crat` binary and the simulator keep freed memory: 1 s.
pub const RETAIN_FREED_MEMORY_MS: i64 = 1_000;

/// Makes mimalloc keep freed memory for `delay_ms` before returning it to the OS, so a steady
/// stream of large allocations reuses pages instead of faulting in fresh zeroed ones. Takes
/// effect for the process; harmless (the option is only recorded) when mimalloc is not the
/// global allocator.
///
/// # Panics
/// If mimalloc does not read back the value it was given (a `libmimalloc-sys` whose option
/// indices moved).
#[allow(unsafe_code)]
pub fn retain_freed_memory_ms(delay_ms: i64) {
    // SAFETY: plain FFI calls reading and setting a process-wide option; no pointers involved.
    let now = unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay_ms as _);
        libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY)
    };
    // `c_long` is `i64` here, `i32` on Windows.
    assert_eq!(
        now as i64, delay_ms,
        "mimalloc did not take the purge delay"
    );
}

/// Turns transparent huge pages off for this whole process (`prctl(PR_SET_THP_DISABLE)`:
/// the kernel then backs every later fault with small pages, mimalloc's heap included),
/// unless [`ALLOW_THP_ENV`] is set, in which case mimalloc applied the caller's choice at
/// start-up and it is left alone. Returns whether huge pages are now off.
///
/// For processes that fault in a large heap and then reuse it, like a simulator run. On the
/// 2-vCPU KVM guests of our CI (Firecracker, `virtio_balloon`), a fresh transparent huge page
/// costs the guest its 2 MiB zeroing and, likely, the host's backing of memory it had taken
/// back. `scenarios/bench_1m.toml` spent 6.3–6.7 s of system time with huge pages against
/// 0.4–0.5 s without, and took 20.6–23.7 s of wall time against 15.8–17.9 s (three runs each,
/// alternated, 2026-12-07; `docs/simulator.md`). Where huge pages are cheap (bare metal),
/// set `MIMALLOC_ALLOW_THP=1` to keep them.
///
/// Only for binaries, as the allocator itself: the setting holds for the whole process and
/// is inherited by its children.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn huge_pages_off_unless_asked() -> bool {
    if std::env::var_os(ALLOW_THP_ENV).is_some() {
        // SAFETY: reads a process flag; no pointers involved.
        return unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) } == 1;
    }
    // SAFETY: sets a process flag; no pointers involved. The extra arguments must be zero.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}

/// Transparent huge pages are Linux's; elsewhere there is nothing to turn off.
#[cfg(not(target_os = "linux"))]
pub fn huge_pages_off_unless_asked() -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The flag is the kernel's, read back through `prctl` and `/proc`; a child process keeps
    /// the test runner's own setting untouched.
    #[test]
    #[allow(unsafe_code)]
    fn huge_pages_go_off_and_the_kernel_says_so() {
        if std::env::var_os("CRAT_ALLOC_THP_CHILD").is_some() {
            let asked = std::env::var_os(super::ALLOW_THP_ENV).is_some();
            let off = super::huge_pages_off_unless_asked();
            // SAFETY: reads a process flag.
            let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let line = status
                .lines()
                .find(|l| l.starts_with("THP_enabled:"))
                .map(str::to_owned);
            println!("asked={asked} off={off} flag={flag} status={line:?}");
            return;
        }
        let run = |allow: Option<&str>| {
            let mut c = std::process::Command::new(std::env::current_exe().expect("test binary"));
            c.args([
                "--exact",
                "tests::huge_pages_go_off_and_the_kernel_says_so",
                "--nocapture",
            ])
            .env("CRAT_ALLOC_THP_CHILD", "1")
            .env_remove(super::ALLOW_THP_ENV);
            if let Some(v) = allow {
                c.env(super::ALLOW_THP_ENV, v);
            }
            let out = c.output().expect("run the test binary again");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let off = run(None);
        assert!(off.contains("asked=false off=true flag=1"), "{off}");
        // Kernels since 4.4 show the flag in /proc (as 0: huge pages not enabled).
        if off.contains("THP_enabled") {
            assert!(off.contains("THP_enabled:\\t0"), "{off}");
        }
        let kept = run(Some("1"));
        assert!(kept.contains("asked=true off=false flag=0"), "{kept}");
    }
}
