//! Nodes behind NAT, end to end with real `crat` processes in network namespaces
//! (`crat_testnet::netlab`): a `crat dispatcher` and a `crat relay` on public hosts, a
//! `crat node` behind a home router's NAT, and the client verbs behind another, all on the iroh
//! transport (`--transport iroh --relay URL --relay-ca relay.pem`).
//!
//! - Behind endpoint-independent NATs on both sides, tasks flow and the client's connection to
//!   the node moves to a direct path (hole punched through both NATs).
//! - Behind an endpoint-dependent ("symmetric") NAT, tasks flow through the relay; once the
//!   operator opens a port mapping on the node's router (and the node announces it with
//!   `--advertise`), a new connection goes direct.
//!
//! Needs root, `ip` and `nft` (`.ci/run` installs nftables); without them the tests fail and
//! say why. Traffic stays inside the namespaces the tests create.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crat_dispatcher::ledger::Ledger as _;
use crat_testnet::netlab::{Home, Lab, Nat};

const CRAT: &str = env!("CARGO_BIN_EXE_crat");
const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");
const NODE_PORT: u16 = 7401;

/// A `crat` process in a namespace, killed when dropped; its output lines arrive on `lines`
/// and are kept in `<logs>/<name>.log`.
struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
    /// The threads copying its output, done once it exited and they wrote all of it.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn spawn(lab: &Lab, ns: &str, name: &str, args: &[&str], logs: &Path) -> Self {
        let mut child = lab
            .command(ns, CRAT)
            .args(args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            // Tests never download ONNX Runtime: a node without one serves with tract.
            .env("CRAT_ONNXRUNTIME_INSTALL", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let log = logs.join(format!("{name}.log"));
        // A new process of a name starts a new log.
        std::fs::write(&log, "").unwrap();
        let mut readers = Vec::new();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                use std::io::Write as _;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap();
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    // One write per line: lines of stdout and stderr never interleave.
                    let _ = file.write_all(format!("{line}\n").as_bytes());
                    let _ = tx.send(line);
                }
            }));
        }
        Self {
            name: name.to_owned(),
            child,
            lines,
            log,
            readers,
        }
    }

    /// The first line containing `needle` within `timeout`; panics with the log otherwise.
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} printed no {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    /// Waits for the process to exit; its status and whole output.
    fn finish(mut self, timeout: Duration) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {timeout:?}:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // Its output is whole once the copying threads reach the end of the pipes.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (
            status.success(),
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dispatcher and a relay on public hosts, with a funded SDK key.
struct Network {
    lab: Lab,
    dir: tempfile::TempDir,
    relay: Option<Proc>,
    _dispatcher: Proc,
    dispatcher: String,
    dispatcher_id: String,
    relay_url: String,
    relay_ca: String,
    key: String,
}

impl Network {
    /// With `settings` added to the dispatcher's `[dispatcher]` table.
    fn start(settings: &str) -> Self {
        let mut lab = Lab::new().unwrap_or_else(|e| panic!("the NAT lab cannot be built: {e}"));
        let disp = lab.add_public("disp").unwrap();
        let relay_host = lab.add_public("relay").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let path = |p: &str| dir.path().join(p).to_str().unwrap().to_owned();

        let data = path("dispatcher");
        let config = dir.path().join("dispatcher.toml");
        std::fs::write(
            &config,
            format!("[dispatcher]\nheartbeat_interval_s = 1\nproof_scale = \"test\"\n{settings}"),
        )
        .unwrap();
        let operator = |args: &[&str]| {
            let out = std::process::Command::new(CRAT)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "crat {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        operator(&[
            "credits",
            "grant",
            "--data-dir",
            &data,
            "--account",
            "test",
            "100000",
        ]);
        let key = operator(&["keys", "create", "--data-dir", &data, "--account", "test"]);
        let dispatcher = format!("{}:7400", disp.ip);
        let mut dispatcher_proc = Proc::spawn(
            &lab,
            &disp.ns,
            "dispatcher",
            &[
                "dispatcher",
                "--listen",
                &dispatcher,
                "--data-dir",
                &data,
                "--config",
                config.to_str().unwrap(),
                "--transport",
                "iroh",
            ],
            &logs,
        );
        let line = dispatcher_proc.wait_for("listening on", Duration::from_secs(60));
        let dispatcher_id = line.split_whitespace().nth(1).unwrap().to_owned();
        // The relay serves members only: it asks the dispatcher, with an SDK key.
        let relay_dir = path("relay");
        let mut relay = Proc::spawn(
            &lab,
            &relay_host.ns,
            "relay",
            &[
                "relay",
                "--listen",
                &format!("{}:3340", relay_host.ip),
                "--data-dir",
                &relay_dir,
                "--dispatcher",
                &dispatcher,
                "--dispatcher-id",
                &dispatcher_id,
                "--key",
                &key,
                "--transport",
                "iroh",
            ],
            &logs,
        );
        relay.wait_for("members only", Duration::from_secs(30));
        let line = relay.wait_for("relay on ", Duration::from_secs(30));
        let relay_url = line
            .split_whitespace()
            .nth(2)
            .expect("relay on URL")
            .to_owned();
        Self {
            lab,
            relay_ca: format!("{relay_dir}/relay.pem"),
            dir,
            relay: Some(relay),
            _dispatcher: dispatcher_proc,
            dispatcher,
            dispatcher_id,
            relay_url,
            key,
        }
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The flags every peer of this network gives.
    fn net_flags(&self) -> Vec<String> {
        [
            "--dispatcher",
            &self.dispatcher,
            "--dispatcher-id",
            &self.dispatcher_id,
            "--transport",
            "iroh",
            "--relay",
            &self.relay_url,
            "--relay-ca",
            &self.relay_ca,
        ]
        .map(String::from)
        .to_vec()
    }

    /// A `crat node` behind `home`, listening on its port 7401 (plus `extra` flags); returns
    /// once it serves.
    fn node(&mut self, home: &Home, extra: &[&str]) -> Proc {
        let data = self.dir.path().join(format!("node-{}", home.host_ns));
        let mut args = vec!["node".to_owned()];
        args.extend(self.net_flags());
        args.extend(
            [
                "--listen",
                &format!("0.0.0.0:{NODE_PORT}"),
                "--data-dir",
                data.to_str().unwrap(),
                "--no-dashboard",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(ToString::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut node = Proc::spawn(&self.lab, &home.host_ns, "node", &args, &self.logs());
        node.wait_for("serving on", Duration::from_secs(60));
        node
    }

    /// `crat VERB` behind `home` with the client flags, started.
    fn client(&self, home: &Home, name: &str, verb: &str, args: &[&str]) -> Proc {
        let mut all = vec![verb.to_owned()];
        all.extend(self.net_flags());
        all.extend(["--key".to_owned(), self.key.clone()]);
        all.extend(args.iter().map(ToString::to_string));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        Proc::spawn(&self.lab, &home.host_ns, name, &all, &self.logs())
    }

    /// `crat VERB` behind `home`, which must succeed: its last stdout line.
    fn client_verb(&self, home: &Home, verb: &str, args: &[&str]) -> String {
        let (ok, output) = self
            .client(home, verb, verb, args)
            .finish(Duration::from_secs(120));
        assert!(ok, "crat {verb} {args:?} failed:\n{output}");
        output
            .lines()
            .rfind(|l| !l.contains(' ') && !l.is_empty())
            .unwrap_or_default()
            .to_owned()
    }

    /// `crat infer` behind `home`: `tasks` tasks of the tiny CNN on `deployment`, 100 ms
    /// apart, on one client (one connection per node), started.
    fn infer(&self, home: &Home, deployment: &str, tasks: u32) -> Proc {
        let tasks = tasks.to_string();
        let args = [
            "--deployment",
            deployment,
            "--input",
            "input:f32:1x1x28x28=zeros",
            "--repeat",
            &tasks,
            "--interval-ms",
            "100",
        ];
        self.client(home, "infer", "infer", &args)
    }

    /// Uploads and deploys the tiny CNN from behind `home` (retrying while the node is not
    /// placeable yet); the deployment id.
    fn deploy(&self, home: &Home) -> String {
        let model_path = self.dir.path().join("tiny.onnx");
        std::fs::write(&model_path, TINY).unwrap();
        let model = self.client_verb(home, "upload", &[model_path.to_str().unwrap()]);
        assert_eq!(model.len(), 64, "model id {model:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, output) = self
                .client(
                    home,
                    "deploy",
                    "deploy",
                    &["--model", &model, "--allowance", "50000"],
                )
                .finish(Duration::from_secs(120));
            if ok {
                return output
                    .lines()
                    .find(|l| l.starts_with("dep_"))
                    .unwrap()
                    .to_owned();
            }
            assert!(
                output.contains("no capacity") && Instant::now() < deadline,
                "deploy failed:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The path each `task N: node X over a P path` line of `crat infer` reports, in order.
fn paths(output: &str) -> Vec<(u32, String)> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("task ")?;
            let (n, rest) = rest.split_once(": node ")?;
            let path = rest.split(" over a ").nth(1)?.strip_suffix(" path")?;
            Some((n.parse().ok()?, path.to_owned()))
        })
        .collect()
}

#[test]
fn behind_two_endpoint_independent_nats_tasks_go_direct() {
    let mut net = Network::start("replicas = 1\n");
    let node_home = net.lab.add_home(Nat::EndpointIndependent).unwrap();
    let client_home = net.lab.add_home(Nat::EndpointIndependent).unwrap();
    let _node = net.node(&node_home, &[]);
    let deployment = net.deploy(&client_home);
    // 40 tasks, 100 ms apart: hole punching has 4 s to find the direct path.
    let (ok, output) = net
        .infer(&client_home, &deployment, 40)
        .finish(Duration::from_secs(120));
    assert!(ok, "crat infer failed:\n{output}");
    assert!(output.contains("40 task(s)"), "{output}");
    let seen = paths(&output);
    assert_eq!(
        seen.last().map(|(_, p)| p.as_str()),
        Some("direct"),
        "the connection never went direct: {seen:?}\n{output}"
    );
}

#[test]
fn behind_a_symmetric_nat_tasks_are_relayed_until_a_port_is_mapped() {
    let mut net = Network::start("replicas = 1\n");
    let node_home = net.lab.add_home(Nat::EndpointDependent).unwrap();
    let client_home = net.lab.add_home(Nat::EndpointIndependent).unwrap();
    // The operator tells the node the public address it will map (the router does not map it
    // yet).
    let mapped = format!("{}:{NODE_PORT}", node_home.public_ip);
    let _node = net.node(&node_home, &["--advertise", &mapped]);
    let deployment = net.deploy(&client_home);
    // The dispatcher could not reach the node from outside (its probe gives up after 3 s):
    // its leases and standing say so.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = node_status(&net, &node_home);
    while status["direct"].is_null() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        status = node_status(&net, &node_home);
    }
    assert_eq!(status["direct"], false, "{status:#}");
    // One client, 150 tasks 100 ms apart (15 s), on one connection to the node.
    let mut infer = net.infer(&client_home, &deployment, 150);
    infer.wait_for("over a relayed path", Duration::from_secs(60));
    // Relayed it stays while nothing changes: hole punching cannot pass this NAT.
    std::thread::sleep(Duration::from_secs(3));
    node_home.forward_udp(NODE_PORT).unwrap();
    let (ok, output) = infer.finish(Duration::from_secs(120));
    assert!(ok, "crat infer failed:\n{output}");
    assert!(output.contains("150 task(s)"), "{output}");
    let seen = paths(&output);
    // Relayed from the first task until after the mapping opened (30 tasks in at least).
    let direct_from = seen.iter().find(|(_, p)| p == "direct").map(|(n, _)| *n);
    assert_eq!(
        seen.first().map(|(_, p)| p.as_str()),
        Some("relayed"),
        "the first tasks go through the relay: {seen:?}\n{output}"
    );
    assert!(
        direct_from.is_some_and(|n| n > 25),
        "direct only once the port is mapped: {seen:?}\n{output}"
    );
    assert_eq!(
        seen.last().map(|(_, p)| p.as_str()),
        Some("direct"),
        "with the port mapped the connection must go direct: {seen:?}\n{output}"
    );
}

#[test]
fn the_relay_killed_mid_stream_direct_paths_keep_serving_and_relayed_tasks_fail_over() {
    // Tickets of 10 s whose usage is final 2 s after they expire: the test sees every task
    // charged, including those whose acknowledgement the client had not sent yet.
    let mut net = Network::start("replicas = 2\nticket_lifetime_s = 10\nusage_grace_s = 2\n");
    let direct_home = net.lab.add_home(Nat::EndpointIndependent).unwrap();
    let relayed_home = net.lab.add_home(Nat::EndpointDependent).unwrap();
    let client_home = net.lab.add_home(Nat::EndpointIndependent).unwrap();
    let _direct = net.node(&direct_home, &[]);
    let _relayed = net.node(&relayed_home, &[]);
    let deployment = net.deploy(&client_home);
    // Tasks go round robin over the two replicas: one reached directly, one only through the
    // relay.
    let mut infer = net.infer(&client_home, &deployment, 60);
    infer.wait_for("over a relayed path", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    drop(net.relay.take());
    let (ok, output) = infer.finish(Duration::from_secs(180));
    assert!(ok, "crat infer failed:\n{output}");
    assert!(output.contains("60 task(s)"), "{output}");
    let failovers: u32 = output
        .lines()
        .find_map(|l| l.split("failovers ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no failover count:\n{output}"));
    assert!(
        failovers >= 1,
        "tasks of the relayed replica failed over after the relay died:\n{output}"
    );
    // Each task is charged once: failover resends carry the same task id, and the ledger
    // stores one record per task; the last ones once their ticket's window ends.
    let ledger = crat_dispatcher::ledger::SqliteLedger::open(
        &net.dir.path().join("dispatcher").join("ledger.sqlite"),
    )
    .unwrap();
    let id = deployment.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut totals = ledger.usage_totals(&id).unwrap();
    while totals.0 < 60 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        totals = ledger.usage_totals(&id).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let (records, _) = ledger.usage_totals(&id).unwrap();
    assert_eq!(
        records, 60,
        "60 tasks, each charged once ({failovers} failovers)"
    );
}

/// `crat node status --json` of the node behind `home`.
fn node_status(net: &Network, home: &Home) -> serde_json::Value {
    let data = net.dir.path().join(format!("node-{}", home.host_ns));
    let mut args = vec!["node".to_owned(), "status".to_owned()];
    args.extend(net.net_flags());
    args.extend(["--data-dir", data.to_str().unwrap(), "--json"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, output) = Proc::spawn(&net.lab, &home.host_ns, "status", &args, &net.logs())
        .finish(Duration::from_secs(60));
    assert!(ok, "crat node status failed:\n{output}");
    let json = &output[output.find('{').expect("JSON")..=output.rfind('}').expect("JSON")];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {output}"))
}

/// `crat node doctor --json` behind `home` (no node running there): its findings.
fn doctor(net: &Network, home: &Home) -> serde_json::Value {
    let mut args = vec!["node".to_owned(), "doctor".to_owned()];
    args.extend(net.net_flags());
    args.extend(["--listen", &format!("0.0.0.0:{NODE_PORT}"), "--json"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, output) = Proc::spawn(&net.lab, &home.host_ns, "doctor", &args, &net.logs())
        .finish(Duration::from_secs(60));
    assert!(ok, "crat node doctor failed:\n{output}");
    let json = &output[output.find('{').expect("JSON")..=output.rfind('}').expect("JSON")];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {output}"))
}

#[test]
fn the_doctor_tells_the_nats_apart_and_sees_a_forwarded_port() {
    let mut net = Network::start("replicas = 1\n");
    let eim = net.lab.add_home(Nat::EndpointIndependent).unwrap();
    let symmetric = net.lab.add_home(Nat::EndpointDependent).unwrap();

    let found = doctor(&net, &eim);
    assert_eq!(found["nat"], "endpoint_independent", "{found:#}");
    assert_eq!(found["inbound"], false, "{found:#}");
    assert_eq!(
        found["observed"],
        format!("{}:{NODE_PORT}", eim.public_ip),
        "the router kept the port: {found:#}"
    );
    assert_eq!(
        found["relays"][0]["url"],
        net.relay_url.as_str(),
        "{found:#}"
    );

    let found = doctor(&net, &symmetric);
    assert_eq!(found["nat"], "endpoint_dependent", "{found:#}");
    assert_eq!(found["inbound"], false, "{found:#}");
    let advice = found["advice"].to_string();
    assert!(advice.contains("forward UDP port"), "{found:#}");

    // The operator forwards the port: the dispatcher's dial from another port gets in.
    eim.forward_udp(NODE_PORT).unwrap();
    let found = doctor(&net, &eim);
    assert_eq!(found["inbound"], true, "{found:#}");
    assert_eq!(found["nat"], "reachable", "{found:#}");
}
