//! `crat dispatcher` and `crat node` serve Prometheus metrics: a dispatcher (its address from
//! the `[dispatcher] metrics_addr` key) and a node (`--metrics-addr`) as real processes, a few
//! tasks through `crat upload`/`deploy`/`infer`, then both `GET /metrics` pages scraped over
//! plain HTTP/1.1 and parsed: the series exist with values that add up to what was run.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[allow(dead_code)]
mod common;
#[path = "chaos/processes.rs"]
#[allow(dead_code)]
mod processes;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Network, crat};
use processes::Proc;

const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");
const TASKS: usize = 3;
/// How long a process may take to start (what `processes` waits for).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A TCP port nobody listens on now.
fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `GET /metrics` on `127.0.0.1:port`: the body, or `None` while nothing answers.
fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut page = String::new();
    s.read_to_string(&mut page).ok()?;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/plain; version=0.0.4"), "{page}");
    let (_, body) = page.split_once("\r\n\r\n")?;
    Some(body.to_owned())
}

/// The samples of `name` (any labels), each with its label text (`outcome="ok"`, or "").
fn samples<'a>(page: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (n == name).then(|| (labels, value.parse().unwrap()))
        })
        .collect()
}

/// The value of `name` with exactly `labels` (0 when absent).
fn value(page: &str, name: &str, labels: &str) -> f64 {
    samples(page, name)
        .into_iter()
        .find(|(l, _)| *l == labels)
        .map_or(0.0, |(_, v)| v)
}

/// The sum of `name` over all its label sets.
fn total(page: &str, name: &str) -> f64 {
    samples(page, name).into_iter().map(|(_, v)| v).sum()
}

/// Scrapes `port` until `ready` holds for the page (or panics after `within`, showing it).
fn scrape_until(port: u16, within: Duration, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let page = scrape(port).unwrap_or_default();
        if ready(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "metrics on port {port} not as expected after {within:?}:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_dispatcher_serve_prometheus_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let dispatcher_metrics = free_tcp_port();
    let node_metrics = free_tcp_port();
    let mut net = Network::start(
        dir.path(),
        &format!(
            "replicas = 1\nheartbeat_interval_s = 1\nproof_scale = \"test\"\n\
             metrics_addr = \"127.0.0.1:{dispatcher_metrics}\"\n"
        ),
    )
    .await
    .unwrap();
    let (addr, id) = (net.addr.clone(), net.id.clone());

    let node_port = net.free_port().unwrap();
    let node_args = [
        "node",
        "--dispatcher",
        &addr,
        "--dispatcher-id",
        &id,
        "--listen",
        &format!("127.0.0.1:{node_port}"),
        "--data-dir",
        dir.path().join("node").to_str().unwrap(),
        "--gpu",
        "NVIDIA GeForce RTX 3080",
        "--metrics-addr",
        &format!("127.0.0.1:{node_metrics}"),
    ]
    .map(String::from);
    let mut node = Proc::spawn("node".into(), &node_args, &net.logs, "warn").unwrap();
    node.wait_for("metrics on http://").await.unwrap();

    // A second node on the same metrics address fails at once, saying why.
    let taken = crat(&[
        "node",
        "--dispatcher",
        &addr,
        "--dispatcher-id",
        &id,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("node2").to_str().unwrap(),
        "--gpu",
        "NVIDIA GeForce RTX 3080",
        "--metrics-addr",
        &format!("127.0.0.1:{node_metrics}"),
    ]);
    assert!(!taken.status.success());
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert!(
        stderr.contains(&format!(
            "metrics endpoint: cannot listen on 127.0.0.1:{node_metrics}"
        )),
        "{stderr}"
    );

    // A few tasks.
    let (_, deployment, _) = net.deploy(dir.path(), TINY).unwrap();
    for _ in 0..TASKS {
        net.infer_zeros(&deployment).unwrap();
    }
    let tasks = TASKS as f64;

    // The node: tasks by outcome, their latency and batches, heartbeats, tickets, the
    // challenges it answered, and its usage reported and acknowledged by the dispatcher.
    let page = scrape_until(node_metrics, Duration::from_secs(30), |p| {
        total(p, "crat_node_usage_records_acknowledged_total") >= tasks
            && value(p, "crat_node_heartbeats_total", r#"result="ok""#) > 0.0
            && value(
                p,
                "crat_node_challenges_total",
                r#"phase="commit",result="ok""#,
            ) > 0.0
    });
    assert!(
        value(&page, "crat_node_tasks_total", r#"outcome="ok""#) >= tasks,
        "{page}"
    );
    assert!(
        total(&page, "crat_node_task_duration_seconds_count") >= tasks,
        "{page}"
    );
    assert!(
        total(&page, "crat_node_task_duration_seconds_sum") > 0.0,
        "{page}"
    );
    // Buckets are cumulative: the last (+Inf) holds every task.
    assert!(
        value(
            &page,
            "crat_node_task_duration_seconds_bucket",
            r#"le="+Inf""#
        ) >= tasks,
        "{page}"
    );
    // Requests merged per run add up to the tasks (runs may merge several).
    assert!(total(&page, "crat_node_batch_size_sum") >= tasks, "{page}");
    assert!(value(&page, "crat_node_tickets_total", "") >= 1.0, "{page}");
    assert!(
        value(&page, "crat_node_usage_records_reported_total", "") >= tasks,
        "{page}"
    );
    assert!(value(&page, "crat_node_registrations_total", r#"result="ok""#) >= 1.0);
    assert_eq!(
        value(&page, "crat_node_dispatcher_connected", ""),
        1.0,
        "{page}"
    );
    assert_eq!(
        value(&page, "crat_node_deployments_served", ""),
        1.0,
        "{page}"
    );
    assert_eq!(samples(&page, "crat_node_queue_depth").len(), 1, "{page}");
    assert!(page.contains("# HELP crat_node_tasks_total"), "{page}");
    // Labels name outcomes and kinds, never a peer's id.
    assert!(!page.contains(&deployment) && !page.contains(&id), "{page}");

    // The dispatcher: the node's registration and heartbeats, the client's lease, the usage
    // it charged or held, its ledger calls, and the node online.
    let page = scrape_until(dispatcher_metrics, Duration::from_secs(30), |p| {
        total(p, "crat_dispatcher_usage_records_total") >= tasks
            && value(p, "crat_dispatcher_nodes_online", "") == 1.0
    });
    assert!(
        value(
            &page,
            "crat_dispatcher_registrations_total",
            r#"result="ok""#
        ) >= 1.0,
        "{page}"
    );
    assert!(
        value(&page, "crat_dispatcher_heartbeats_total", r#"result="ok""#) > 0.0,
        "{page}"
    );
    assert!(
        value(&page, "crat_dispatcher_leases_total", "") >= 1.0,
        "{page}"
    );
    assert!(
        total(&page, "crat_dispatcher_ledger_call_duration_seconds_count") > 0.0,
        "{page}"
    );
    assert!(
        page.contains("# HELP crat_dispatcher_leases_total"),
        "{page}"
    );
    assert!(!page.contains(&deployment), "{page}");

    node.kill().unwrap();
    net.dispatcher.kill().unwrap();
}
