//! Event-kernel throughput without criterion: the hold model (pop the earliest event,
//! schedule one a random time later) with 100,000 pending events.
//!
//! `cargo run --release -p crat-sim --example kernel_hold`

use std::time::Instant;

use crat_sim::kernel::{EventQueue, mix64};

fn main() -> Result<(), crat_sim::SimError> {
    const PENDING: u64 = 100_000;
    const HOLDS: u64 = 20_000_000;
    let mut q: EventQueue<u32> = EventQueue::with_limit(PENDING as usize + 1);
    for i in 0..PENDING {
        q.schedule(mix64(i) % 1_000_000, i as u32)?;
    }
    let mut x = 1u64;
    let t = Instant::now();
    for _ in 0..HOLDS {
        let (now, e) = q.pop().unwrap_or((0, 0));
        x = mix64(x);
        q.schedule(now + x % 1_000_000, e)?;
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{HOLDS} holds with {PENDING} pending in {s:.2} s: {:.1} M events/s ({:.0} ns per hold)",
        HOLDS as f64 / s / 1e6,
        s * 1e9 / HOLDS as f64
    );
    Ok(())
}
