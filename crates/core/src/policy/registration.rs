//! What a node's registration is worth: its power rating and mining income.

use crate::gpu_table::GpuTable;
use crate::hardware::{HardwareInfo, PowerRating};
use crate::money::MicroUsd;

/// A node's rating (the best of its GPUs', at least [`PowerRating::MIN`]) and mining income
/// (the sum of its GPUs'), from `table`, never from the rating the node claims.
pub fn rate_hardware(table: &GpuTable, hardware: &HardwareInfo) -> (PowerRating, MicroUsd) {
    let mut rating = PowerRating::MIN;
    let mut income = MicroUsd::ZERO;
    for gpu in &hardware.gpus {
        let a = table.assess(gpu);
        rating = rating.max(a.rating);
        income = income.saturating_add(a.mining_income_usd_micro_per_day);
    }
    (rating, income)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::{CpuInfo, GpuInfo};

    fn gpu(name: &str) -> GpuInfo {
        GpuInfo {
            name: name.into(),
            memory_bytes: 24 << 30,
            driver: "550".into(),
            compute_capability: Some((8, 6)),
        }
    }

    #[test]
    fn best_rating_and_summed_income_of_the_gpus() {
        let table = GpuTable::builtin();
        let cpu = CpuInfo {
            model: "cpu".into(),
            cores: 8,
            memory_bytes: 32 << 30,
        };
        let none = HardwareInfo {
            gpus: vec![],
            cpu: cpu.clone(),
        };
        assert_eq!(
            rate_hardware(table, &none),
            (PowerRating::MIN, MicroUsd::ZERO)
        );
        let (a, b) = (
            gpu("NVIDIA GeForce GTX 1050"),
            gpu("NVIDIA GeForce RTX 3090 Ti"),
        );
        let (ra, rb) = (table.assess(&a), table.assess(&b));
        assert!(ra.rating < rb.rating, "the table orders these two");
        let two = HardwareInfo {
            gpus: vec![b, a],
            cpu,
        };
        assert_eq!(
            rate_hardware(table, &two),
            (
                rb.rating,
                ra.mining_income_usd_micro_per_day
                    .saturating_add(rb.mining_income_usd_micro_per_day)
            )
        );
    }
}
