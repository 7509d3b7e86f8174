//! The file exporter: files written, digest checked, idempotent by (round, node).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::PathBuf;

use common::{DAY, id, node, round};
use crat_core::money::MicroUsd;
use crat_rewards::file_export::FileSettlement;
use crat_rewards::{PAYOUT_CSV_HEADER, PayoutBatch, Settlement, SettlementError, compute};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("crat-rewards-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn batch() -> PayoutBatch {
    // Node 3 earns nothing (offline), so it is left out of the batch.
    let nodes = vec![
        node(2, 5, 1_000_000, &[(0, DAY)]),
        node(1, 1, 0, &[(0, DAY)]),
        node(3, 1, 0, &[]),
    ];
    let out = compute(&round(0, 100_000, 0, nodes)).unwrap();
    PayoutBatch::from_outcome(7, &out).unwrap()
}

#[test]
fn batch_lists_non_zero_payouts_by_id() {
    let b = batch();
    assert_eq!(b.round_index, 7);
    let ids: Vec<_> = b.payouts.iter().map(|p| p.node).collect();
    assert_eq!(ids, [id(1), id(2)]);
    // Guaranteed 500,000 each; bonus pool 80,000 → 53,334 (rank 1, node 2) and 26,666.
    assert_eq!(b.payouts[1].total_usd_micro, MicroUsd::new(553_334));
    assert_eq!(b.payouts[0].total_usd_micro, MicroUsd::new(526_666));
    assert_eq!(b.total_usd_micro, MicroUsd::new(1_080_000));
    let csv = b.to_csv();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(PAYOUT_CSV_HEADER));
    assert_eq!(
        lines.next(),
        Some(format!("7,{},500000,26666,526666", id(1)).as_str())
    );
    assert_eq!(lines.count(), 1);
}

#[test]
fn exporting_twice_pays_once_and_conflicts_are_refused() {
    let dir = temp_dir("idempotent");
    let mut s = FileSettlement::new(&dir);
    let b = batch();
    let first = s.settle(&b).unwrap();
    assert!(first.newly_settled);
    assert_eq!(first.payouts, 2);
    assert_eq!(first.digest_hex, b.digest_hex());
    let json = std::fs::read_to_string(s.path(7, "json")).unwrap();
    assert_eq!(json, b.to_json());
    assert_eq!(
        std::fs::read_to_string(s.path(7, "csv")).unwrap(),
        b.to_csv()
    );
    let digest = std::fs::read_to_string(s.path(7, "blake3")).unwrap();
    assert_eq!(
        digest,
        format!(
            "{}  round-00000000000000000007.json\n",
            blake3::hash(json.as_bytes()).to_hex()
        )
    );

    // The same batch again: nothing new, nothing rewritten.
    let again = s.settle(&b).unwrap();
    assert!(!again.newly_settled);
    assert_eq!(again.digest_hex, first.digest_hex);
    assert_eq!(std::fs::read_to_string(s.path(7, "json")).unwrap(), json);
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 3);

    // A different amount for a node of a settled round is a conflict, not a second payment.
    let mut changed = b.clone();
    changed.payouts[1].bonus_usd_micro = MicroUsd::new(1);
    match s.settle(&changed) {
        Err(SettlementError::Conflict {
            round_index: 7,
            node,
        }) => assert_eq!(node, id(2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // So is a node added to a settled round.
    let mut added = b.clone();
    added.payouts.push(crat_rewards::Payout {
        node: id(9),
        ..b.payouts[0]
    });
    assert!(matches!(
        s.settle(&added),
        Err(SettlementError::Conflict { .. })
    ));
    // Another round is independent.
    let mut other_round = b.clone();
    other_round.round_index = 8;
    assert!(s.settle(&other_round).unwrap().newly_settled);

    // A tampered record is reported, not trusted.
    std::fs::write(s.path(7, "json"), json.replace("526666", "926666")).unwrap();
    assert!(matches!(s.settle(&b), Err(SettlementError::Corrupt { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What a crash (of a build that did not `fsync`, or a power loss) can leave: a partial JSON,
/// an empty digest file, a stale temporary file. None of them blocks the round: settling it
/// again rewrites or repairs the files, pays once and leaves files that verify.
#[test]
fn files_left_by_a_crash_are_rewritten_or_repaired() {
    let dir = temp_dir("crash");
    let mut s = FileSettlement::new(&dir);
    let b = batch();
    let json = b.to_json();
    let verify = |s: &FileSettlement| {
        let text = std::fs::read_to_string(s.path(7, "json")).unwrap();
        assert_eq!(text, json);
        assert_eq!(
            std::fs::read_to_string(s.path(7, "blake3")).unwrap(),
            format!(
                "{}  round-00000000000000000007.json\n",
                blake3::hash(text.as_bytes()).to_hex()
            )
        );
        assert_eq!(
            std::fs::read_to_string(s.path(7, "csv")).unwrap(),
            b.to_csv()
        );
        let names: Vec<_> = std::fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("round-00000000000000000007"))
            .collect();
        assert_eq!(names.len(), 3, "no temporary file is left: {names:?}");
    };

    // A truncated JSON (its data lost after the rename), with the digest of the whole one and
    // a stale temporary file: the round was never completely settled, so it is settled now.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(s.path(7, "json"), &json[..json.len() / 2]).unwrap();
    std::fs::write(
        s.path(7, "blake3"),
        format!("{}  round-00000000000000000007.json\n", b.digest_hex()),
    )
    .unwrap();
    std::fs::write(s.path(7, "json.tmp"), "{").unwrap();
    assert!(s.settle(&b).unwrap().newly_settled);
    verify(&s);

    // An empty JSON (a zero-length file after a power loss) is the same.
    std::fs::write(s.path(7, "json"), "").unwrap();
    assert!(s.settle(&b).unwrap().newly_settled);
    verify(&s);

    // A whole JSON with an empty digest file and a missing CSV: paid before, so nothing is
    // paid again; the lost files are written again.
    std::fs::write(s.path(7, "blake3"), "").unwrap();
    std::fs::remove_file(s.path(7, "csv")).unwrap();
    let again = s.settle(&b).unwrap();
    assert!(!again.newly_settled);
    assert_eq!(again.digest_hex, b.digest_hex());
    verify(&s);

    // Even then a different batch is a conflict, never a second payment.
    std::fs::write(s.path(7, "blake3"), "").unwrap();
    let mut changed = b.clone();
    changed.payouts[0].bonus_usd_micro = MicroUsd::new(1);
    assert!(matches!(
        s.settle(&changed),
        Err(SettlementError::Conflict { round_index: 7, .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
