//! `crat node status` as the built binaries run it: a `crat dispatcher` with 4-second rounds
//! and one `crat node` process; a per-request `crat deploy` on this one-node network is
//! created degraded (two replicas wanted) and says why; after rounds closed, `crat node
//! status --json` prints the earnings the ledger stored for each closed round, and the text
//! form prints them readably.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[allow(dead_code)]
mod common;
#[path = "chaos/processes.rs"]
#[allow(dead_code)]
mod processes;

use std::time::{Duration, Instant};

use common::{Network, crat};
use crat_core::id::NodeId;
use crat_dispatcher::ledger::{Ledger, SqliteLedger};
use crat_rewards::RoundOutcome;
use processes::NodeProc;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crat_node_status_prints_the_ledger_s_earnings() {
    let dir = tempfile::tempdir().unwrap();
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The default two replicas, one node; rounds of 4 s; challenges at test scale.
    let net = Network::start(
        dir.path(),
        &format!(
            "heartbeat_interval_s = 1\nproof_scale = \"test\"\nround_s = 4\n\
             round_epoch_s = {epoch}\nround_close_delay_s = 1\n"
        ),
    )
    .await
    .unwrap();
    let node_dir = dir.path().join("node");
    let mut node = NodeProc {
        index: 0,
        port: net.free_port().unwrap(),
        data: node_dir.clone(),
        logs: net.logs.clone(),
        proc: None,
        lives: 0,
    };
    node.start(&net.dispatcher).unwrap();
    let (addr, id) = (net.addr.clone(), net.id.clone());

    // A per-request deploy on one node: created degraded, the reason printed, and waited for
    // until its one replica serves.
    let (_, _, stderr) = net.deploy(dir.path(), TINY).unwrap();
    assert!(
        stderr.contains("degraded: 1 of 2 replicas placed: the network has 1 node"),
        "{stderr}"
    );
    assert!(stderr.contains("Degraded: 1/2 replicas ready"), "{stderr}");

    // Two rounds closed.
    let ledger = SqliteLedger::open(&net.data.join("ledger.sqlite")).unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    while ledger.round(1).unwrap().is_none() {
        assert!(Instant::now() < deadline, "rounds not closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let status = [
        "node",
        "status",
        "--dispatcher",
        &addr,
        "--dispatcher-id",
        &id,
        "--data-dir",
        node_dir.to_str().unwrap(),
        "--rounds",
        "5",
    ];
    let out = crat(&[&status[..], &["--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let node_id: NodeId = json["node"].as_str().unwrap().parse().unwrap();
    assert!(ledger.node(&node_id).unwrap().is_some());
    assert_eq!(json["online"], true);
    let closed = json["closed"].as_array().unwrap();
    assert!(closed.len() >= 2, "{json}");
    for e in closed {
        let index = e["index"].as_u64().unwrap();
        let record = ledger.round(index).unwrap().unwrap();
        let outcome = RoundOutcome::from_json(&record.outcome_json).unwrap();
        let o = outcome.nodes.iter().find(|o| o.id == node_id).unwrap();
        assert_eq!(e["uptime_s"], o.uptime_s, "{e}");
        assert_eq!(e["committed"], o.committed, "{e}");
        assert_eq!(e["rank"].as_u64(), o.rank, "{e}");
        assert_eq!(
            e["guaranteed_usd_micro"],
            o.guaranteed_usd_micro.get(),
            "{e}"
        );
        assert_eq!(e["bonus_usd_micro"], o.bonus_usd_micro.get(), "{e}");
        assert_eq!(e["crat_issued_micro"], o.crat_issued_micro.get(), "{e}");
        assert_eq!(e["crat_end_micro"], o.crat_end_micro.get(), "{e}");
    }
    // Its CPU is proven (test-scale challenges), its declared GPU is not.
    assert_eq!(json["proven"]["cpu"], true, "{json}");
    assert!(json["challenges_passed"].as_u64().unwrap() >= 1, "{json}");

    let out = crat(&status);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with(&format!("node {node_id} — online")),
        "{text}"
    );
    assert!(text.contains("closed rounds:"), "{text}");
    assert!(text.contains("guaranteed_usd"), "{text}");

    // More rounds than one answer carries: refused with the cap named.
    let out = crat(&[&status[..8], &["--rounds", "65"]].concat());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most 64"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
