//! Keeps the operator files in `dist/` true: `dist/crat.toml` names every key `crat --config`
//! accepts, with the defaults it claims, and the systemd units in `dist/systemd/` start
//! commands the CLI accepts, with their state where the unit keeps it.
//!
//! The example writes keys that must stay off in production as `#key = value` (and the
//! `[node.idle]` table as `#[node.idle]`); [`switched_on`] removes those `#`s, and both the
//! file as shipped and the file switched on are parsed. A field added to any table fails to
//! compile in [`keys_set`] (every struct is destructured without `..`) until the example and
//! this module name it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use crat_core::id::{NodeId, SdkKey};
use crat_dispatcher::DispatcherConfig;
use crat_gateway::GatewayConfig;
use crat_node::idle::IdlePolicy;

use super::{ClientSection, ConfigFile, DispatcherSection, IdleSection, NodeSection, ProofScale};
use crat_transport::any::TransportKind;

use crate::onnxruntime::OnnxRuntimeSection;
use crate::relay::RelaySection;
use crate::transport::{DEFAULT_QAD_PORT, NetworkSection};

const EXAMPLE: &str = include_str!("../../../../dist/crat.toml");
const NODE_UNIT: &str = include_str!("../../../../dist/systemd/crat-node.service");
const DISPATCHER_UNIT: &str = include_str!("../../../../dist/systemd/crat-dispatcher.service");

/// The keys the example writes as `#key = value` (off as shipped).
const OFF_AS_SHIPPED: [&str; 22] = [
    "dispatcher.ledger",
    "dispatcher.ledger_schema",
    "dispatcher.ledger_ca",
    "dispatcher.models_dir",
    "dispatcher.models_store",
    "dispatcher.models_store_options",
    "dispatcher.payouts_dir",
    "dispatcher.cluster_addr",
    "node.gpu",
    "node.dashboard_token",
    "node.network_threads_yield",
    "node.idle",
    "node.idle.command",
    "node.idle.idle_s",
    "node.idle.demand_bps_max",
    "node.idle.stop_grace_ms",
    "node.onnxruntime.path",
    "client.key",
    "client.dispatcher_alternates",
    "network.relays",
    "network.relay_ca",
    "relay.names",
];

/// The `[gateway]` keys ([`GatewayConfig`] fills absent ones with defaults, so presence is
/// checked on the TOML itself). Keep in step with the destructuring in [`keys_set`].
const GATEWAY_KEYS: [&str; 9] = [
    "listen",
    "grpc_addr",
    "models",
    "body_bytes_max",
    "http_inflight_max",
    "infer_inflight_max",
    "clients_max",
    "deployments_per_client_max",
    "threads",
];

/// The example with its `#key = value` and `#[table]` lines switched on: a `#` directly
/// followed by a lower-case letter or `[` (prose comments start with `# `).
fn switched_on(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c == '[' || c.is_ascii_lowercase()) => rest,
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn parse(text: &str) -> ConfigFile {
    toml::from_str(text).unwrap_or_else(|e| panic!("dist/crat.toml does not parse: {e}"))
}

/// Whether each optional key is set. Every struct is destructured without `..`: a new field
/// fails to compile here until it is in the example and in this map.
fn keys_set(file: &ConfigFile) -> BTreeMap<&'static str, bool> {
    let ConfigFile {
        dispatcher,
        node,
        client,
        gateway,
        network,
        relay,
    } = file;
    let NetworkSection {
        transport,
        relays,
        relay_ca,
        relay_qad_port,
    } = network;
    let RelaySection {
        listen: relay_listen,
        qad_port,
        names,
        data_dir: relay_data_dir,
        open,
        client_bytes_per_s,
    } = relay;
    let DispatcherSection {
        listen,
        data_dir,
        round_s,
        round_epoch_s,
        round_close_delay_s,
        heartbeat_interval_s,
        replicas,
        ticket_lifetime_s,
        usage_grace_s,
        model_bytes_max,
        proof_scale,
        metrics_addr,
        ledger,
        ledger_schema,
        ledger_ca,
        models_dir,
        models_store,
        models_store_options,
        payouts_dir,
        cluster_addr,
    } = dispatcher;
    let NodeSection {
        listen: node_listen,
        advertise,
        data_dir: node_data_dir,
        gpu,
        metrics_addr: node_metrics_addr,
        dashboard,
        dashboard_addr,
        dashboard_token,
        start_stopped,
        network_threads_yield,
        idle,
        onnxruntime,
    } = node;
    let OnnxRuntimeSection {
        path,
        install,
        index_url,
    } = onnxruntime;
    let ClientSection {
        dispatcher: client_dispatcher,
        dispatcher_alternates,
        dispatcher_id,
        key,
    } = client;
    // Only `grpc_addr` is an Option; the others are checked by `gateway_keys_present`.
    let GatewayConfig {
        listen: _,
        grpc_addr,
        models: _,
        body_bytes_max: _,
        http_inflight_max: _,
        infer_inflight_max: _,
        clients_max: _,
        deployments_per_client_max: _,
        threads: _,
    } = gateway;
    let mut set = BTreeMap::from([
        ("dispatcher.listen", listen.is_some()),
        ("dispatcher.data_dir", data_dir.is_some()),
        ("dispatcher.round_s", round_s.is_some()),
        ("dispatcher.round_epoch_s", round_epoch_s.is_some()),
        (
            "dispatcher.round_close_delay_s",
            round_close_delay_s.is_some(),
        ),
        (
            "dispatcher.heartbeat_interval_s",
            heartbeat_interval_s.is_some(),
        ),
        ("dispatcher.replicas", replicas.is_some()),
        ("dispatcher.ticket_lifetime_s", ticket_lifetime_s.is_some()),
        ("dispatcher.usage_grace_s", usage_grace_s.is_some()),
        ("dispatcher.model_bytes_max", model_bytes_max.is_some()),
        ("dispatcher.proof_scale", proof_scale.is_some()),
        ("dispatcher.metrics_addr", metrics_addr.is_some()),
        ("dispatcher.ledger", ledger.is_some()),
        ("dispatcher.ledger_schema", ledger_schema.is_some()),
        ("dispatcher.ledger_ca", ledger_ca.is_some()),
        ("dispatcher.models_dir", models_dir.is_some()),
        ("dispatcher.models_store", models_store.is_some()),
        (
            "dispatcher.models_store_options",
            models_store_options.is_some(),
        ),
        ("dispatcher.payouts_dir", payouts_dir.is_some()),
        ("dispatcher.cluster_addr", cluster_addr.is_some()),
        ("node.listen", node_listen.is_some()),
        ("node.advertise", advertise.is_some()),
        ("node.data_dir", node_data_dir.is_some()),
        ("node.gpu", gpu.is_some()),
        ("node.metrics_addr", node_metrics_addr.is_some()),
        ("node.dashboard", dashboard.is_some()),
        ("node.dashboard_addr", dashboard_addr.is_some()),
        ("node.dashboard_token", dashboard_token.is_some()),
        ("node.start_stopped", start_stopped.is_some()),
        (
            "node.network_threads_yield",
            network_threads_yield.is_some(),
        ),
        ("node.idle", idle.is_some()),
        ("node.onnxruntime.path", path.is_some()),
        ("node.onnxruntime.install", install.is_some()),
        ("node.onnxruntime.index_url", index_url.is_some()),
        ("client.dispatcher", client_dispatcher.is_some()),
        ("client.dispatcher_id", dispatcher_id.is_some()),
        (
            "client.dispatcher_alternates",
            dispatcher_alternates.is_some(),
        ),
        ("client.key", key.is_some()),
        ("gateway.grpc_addr", grpc_addr.is_some()),
        ("network.transport", transport.is_some()),
        ("network.relays", relays.is_some()),
        ("network.relay_ca", relay_ca.is_some()),
        ("network.relay_qad_port", relay_qad_port.is_some()),
        ("relay.listen", relay_listen.is_some()),
        ("relay.qad_port", qad_port.is_some()),
        ("relay.names", names.is_some()),
        ("relay.data_dir", relay_data_dir.is_some()),
        ("relay.open", open.is_some()),
        ("relay.client_bytes_per_s", client_bytes_per_s.is_some()),
    ]);
    let (command, idle_s, demand_bps_max, stop_grace_ms) = match idle {
        Some(IdleSection {
            command,
            idle_s,
            demand_bps_max,
            stop_grace_ms,
        }) => (
            !command.is_empty(),
            idle_s.is_some(),
            demand_bps_max.is_some(),
            stop_grace_ms.is_some(),
        ),
        None => (false, false, false, false),
    };
    set.insert("node.idle.command", command);
    set.insert("node.idle.idle_s", idle_s);
    set.insert("node.idle.demand_bps_max", demand_bps_max);
    set.insert("node.idle.stop_grace_ms", stop_grace_ms);
    set
}

/// The keys of the `[gateway]` table as written in `text`.
fn gateway_keys(text: &str) -> BTreeSet<String> {
    let value: toml::Table = toml::from_str(text).expect("dist/crat.toml is TOML");
    value
        .get("gateway")
        .and_then(toml::Value::as_table)
        .expect("dist/crat.toml has a [gateway] table")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn example_sets_every_key_when_switched_on() {
    let text = switched_on(EXAMPLE);
    let unset: Vec<_> = keys_set(&parse(&text))
        .into_iter()
        .filter_map(|(key, set)| (!set).then_some(key))
        .collect();
    assert!(unset.is_empty(), "dist/crat.toml lacks {unset:?}");
    let expected: BTreeSet<String> = GATEWAY_KEYS.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(gateway_keys(&text), expected, "dist/crat.toml's [gateway]");
}

#[test]
fn example_as_shipped_sets_all_but_the_off_keys() {
    let set = keys_set(&parse(EXAMPLE));
    let off: BTreeSet<&str> = set
        .iter()
        .filter_map(|(key, set)| (!set).then_some(*key))
        .collect();
    assert_eq!(off, BTreeSet::from(OFF_AS_SHIPPED));
    let expected: BTreeSet<String> = GATEWAY_KEYS.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(
        gateway_keys(EXAMPLE),
        expected,
        "dist/crat.toml's [gateway]"
    );
}

#[test]
fn example_values_are_the_defaults_it_claims() {
    let file = parse(EXAMPLE);
    let d = &file.dispatcher;
    let defaults = DispatcherConfig::new("unused");
    assert_eq!(d.listen, Some(SocketAddr::from(([0, 0, 0, 0], 7400))));
    assert_eq!(d.round_s, Some(defaults.rewards.round_s));
    assert_eq!(d.round_epoch_s, Some(defaults.round_epoch_s));
    assert_eq!(d.round_close_delay_s, Some(defaults.round_close_delay_s));
    assert_eq!(
        d.heartbeat_interval_s,
        Some(defaults.dispatch.heartbeat_interval_s)
    );
    assert_eq!(d.replicas, Some(defaults.dispatch.replicas));
    assert_eq!(d.ticket_lifetime_s, Some(defaults.ticket_lifetime_s));
    assert_eq!(d.usage_grace_s, Some(defaults.usage_grace_s));
    assert_eq!(d.model_bytes_max, Some(defaults.model_bytes_max));
    assert_eq!(d.proof_scale, Some(ProofScale::default()));
    assert!(d.metrics_addr.is_some_and(|a| a.ip().is_loopback()));

    let n = &file.node;
    assert_eq!(n.listen, Some(SocketAddr::from(([0, 0, 0, 0], 7401))));
    assert!(n.metrics_addr.is_some_and(|a| a.ip().is_loopback()));
    assert_eq!(n.onnxruntime.install, Some(true));
    assert_eq!(
        n.onnxruntime.index_url.as_deref(),
        Some(crat_node::ort_setup::INDEX_URL_DEFAULT)
    );

    // The data directories are the units' state directories.
    assert_eq!(d.data_dir, Some(unit_state_dir(DISPATCHER_UNIT)));
    assert_eq!(n.data_dir, Some(unit_state_dir(NODE_UNIT)));

    // The placeholders are well-formed, so replacing them is the only edit needed.
    let id = file.client.dispatcher_id.as_deref().expect("dispatcher_id");
    id.parse::<NodeId>()
        .expect("[client] dispatcher_id is a node id");
    assert!(file.client.dispatcher.is_some());

    let g = &file.gateway;
    let gd = GatewayConfig::default();
    g.validate().expect("[gateway] is valid");
    assert_eq!(g.listen, gd.listen);
    assert_eq!(g.body_bytes_max, gd.body_bytes_max);
    assert_eq!(g.http_inflight_max, gd.http_inflight_max);
    assert_eq!(g.infer_inflight_max, gd.infer_inflight_max);
    assert_eq!(g.clients_max, gd.clients_max);
    assert_eq!(g.deployments_per_client_max, gd.deployments_per_client_max);
    assert_eq!(g.models.len(), 1);

    let net = &file.network;
    assert_eq!(net.transport, Some(TransportKind::Quic));
    assert_eq!(net.relay_qad_port, Some(DEFAULT_QAD_PORT));
    let r = &file.relay;
    assert_eq!(r.listen, Some(SocketAddr::from(([0, 0, 0, 0], 3340))));
    assert_eq!(r.qad_port, Some(DEFAULT_QAD_PORT));
    assert_eq!(r.open, Some(false));
    assert_eq!(
        r.client_bytes_per_s,
        Some(crate::relay::CLIENT_BYTES_PER_S_DEFAULT)
    );
}

#[test]
fn example_off_keys_are_valid_and_harmless() {
    let file = parse(&switched_on(EXAMPLE));
    let idle = file
        .node
        .idle
        .as_ref()
        .expect("[node.idle] is in the example");
    // A command that only sleeps: switching the table on runs nothing that matters.
    assert_eq!(idle.command, ["/bin/sleep", "infinity"]);
    assert_eq!(
        idle.policy().expect("[node.idle] policy"),
        IdlePolicy::default()
    );
    assert_eq!(idle.stop_grace_ms, Some(5_000));
    idle.controller(0).expect("[node.idle] controller");
    let key = file.client.key.as_deref().expect("[client] key");
    key.parse::<SdkKey>().expect("[client] key is an SDK key");
    assert!(file.node.gpu.is_some());
    assert!(file.node.onnxruntime.path.is_some());
}

/// The value of the one `key=` line of `unit`.
fn directive<'a>(unit: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    let mut values = unit.lines().filter_map(|l| l.strip_prefix(prefix.as_str()));
    let value = values.next().unwrap_or_else(|| panic!("no {key}= line"));
    assert!(values.next().is_none(), "{key}= appears twice");
    value
}

/// `/var/lib/<StateDirectory>`.
fn unit_state_dir(unit: &str) -> PathBuf {
    Path::new("/var/lib").join(directive(unit, "StateDirectory"))
}

/// The unit's `ExecStart=` as the words systemd passes (it has no quoting, `%` specifiers or
/// `$` variables, so splitting on white space is what systemd does).
fn exec_start(unit: &str) -> Vec<&str> {
    let line = directive(unit, "ExecStart");
    assert!(
        !line.contains(['"', '\'', '%', '$', '\\']),
        "ExecStart={line}: keep it to plain words"
    );
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"/usr/local/bin/crat"));
    words
}

#[test]
fn node_unit_starts_a_node_with_its_state_in_the_state_directory() {
    let words = exec_start(NODE_UNIT);
    let cli = crate::Cli::try_parse_from(&words).expect("crat accepts the node unit's ExecStart");
    let args = match cli.command {
        crate::Command::Node(args) => args,
        other => panic!("the node unit runs {other:?}"),
    };
    assert!(args.command.is_none(), "`crat node` runs the node");
    let state = unit_state_dir(NODE_UNIT);
    assert_eq!(
        args.run.config.as_deref(),
        Some(Path::new("/etc/crat/crat.toml"))
    );
    assert_eq!(args.run.data_dir.as_ref(), Some(&state));
    assert_eq!(Path::new(directive(NODE_UNIT, "WorkingDirectory")), state);
    // crat node stops cleanly on SIGINT (it closes its endpoint), not on SIGTERM.
    assert_eq!(directive(NODE_UNIT, "KillSignal"), "SIGINT");
    assert_eq!(directive(NODE_UNIT, "User"), "crat");
    // The node keeps the NVIDIA devices: nothing that restricts devices (ProtectClock= implies
    // DeviceAllow= on older systemd), /proc/driver/nvidia, or writable-executable memory (the
    // idle workload inherits the filter, and miners JIT-compile).
    for key in [
        "PrivateDevices",
        "DeviceAllow",
        "DevicePolicy",
        "ProtectClock",
        "ProcSubset",
        "MemoryDenyWriteExecute",
    ] {
        assert!(
            !NODE_UNIT.lines().any(|l| l.starts_with(&format!("{key}="))),
            "the node unit sets {key}=: see the comment in dist/systemd/crat-node.service"
        );
    }
}

#[test]
fn dispatcher_unit_starts_a_dispatcher_with_its_state_in_the_state_directory() {
    let words = exec_start(DISPATCHER_UNIT);
    let cli =
        crate::Cli::try_parse_from(&words).expect("crat accepts the dispatcher unit's ExecStart");
    let args = match cli.command {
        crate::Command::Dispatcher(args) => args,
        other => panic!("the dispatcher unit runs {other:?}"),
    };
    let state = unit_state_dir(DISPATCHER_UNIT);
    assert_eq!(
        args.config.as_deref(),
        Some(Path::new("/etc/crat/crat.toml"))
    );
    assert_eq!(args.data_dir.as_ref(), Some(&state));
    assert_eq!(
        Path::new(directive(DISPATCHER_UNIT, "WorkingDirectory")),
        state
    );
    // crat dispatcher settles closed rounds before it stops on SIGINT; SIGTERM kills it.
    assert_eq!(directive(DISPATCHER_UNIT, "KillSignal"), "SIGINT");
    assert_eq!(directive(DISPATCHER_UNIT, "User"), "crat");
}

/// `systemd-analyze verify` on both units, with `/usr/local/bin/crat` replaced by an
/// executable that exists here (this test binary): systemd's own parser, offline, no running
/// systemd needed. It must print nothing: an unknown or malformed directive is only a warning
/// (exit status 0) to it. Needs `systemd-analyze` (package systemd): a machine without it
/// fails this test rather than skipping it.
#[test]
fn units_pass_systemd_analyze_verify() {
    let exe = std::env::current_exe().expect("the test binary's path");
    let exe = exe.to_str().expect("the test binary's path is UTF-8");
    assert!(
        !exe.contains(char::is_whitespace),
        "{exe}: a path without spaces"
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut paths = Vec::new();
    for (name, unit) in [
        ("crat-node.service", NODE_UNIT),
        ("crat-dispatcher.service", DISPATCHER_UNIT),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, unit.replace("/usr/local/bin/crat", exe)).expect("writing a unit");
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install systemd to verify dist/systemd/")
        });
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && printed.trim().is_empty(),
        "systemd-analyze verify dist/systemd/*.service: {}\n{printed}",
        out.status
    );
}
