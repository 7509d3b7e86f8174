//! `crat-alloc`: the allocator the `crat` binary, the benchmarks and the simulator's examples
//! run on, and its one tuned option.
//!
//! mimalloc reuses freed memory for the next large frame (64 MiB tensors) where glibc maps
//! and faults in fresh pages every time (`benches/benches/quic.rs` measures the difference).
//! [`retain_freed_memory_ms`] keeps freed memory with the process for a while before mimalloc
//! returns it to the OS (its default is 10 ms): a simulator round of a million nodes frees and
//! allocates hundreds of megabytes, and returned at once, every round faulted in fresh zeroed
//! pages (a third of its time). [`RETAIN_FREED_MEMORY_MS`] is the delay the binaries use.
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
