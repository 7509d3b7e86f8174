//! The NAT lab behaves as the NAT tests assume (`crat_testnet::netlab`): behind an
//! endpoint-independent NAT one socket shows the same public address and port to every
//! destination, even after a peer's probe arrived first; behind an endpoint-dependent ("symmetric") one each destination sees another
//! port; nothing unsolicited gets in, an answer to what the host sent does (the way hole
//! punching works), and a port mapping lets anything in.
//!
//! Needs root, `ip` and `nft` (`.ci/run` installs nftables); without them the test fails and
//! says why. Traffic stays inside the namespaces the test creates.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use crat_testnet::netlab::{Lab, Nat};

const UDP: &str = env!("CARGO_BIN_EXE_netlab-udp");

/// A process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(lab: &Lab, ns: &str, args: &[&str]) -> Running {
    Running(
        lab.command(ns, UDP)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Runs `netlab-udp args` in `ns` to completion; its output.
fn udp(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let out = lab.command(ns, UDP).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "netlab-udp {args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Starts `netlab-udp listen …` in `listen_ns`, then runs `netlab-udp send …` in
/// `sender_ns`; what the listener printed.
fn deliver(lab: &Lab, listen_ns: &str, listen: &[&str], sender_ns: &str, send: &[&str]) -> String {
    let waiting = lab
        .command(listen_ns, UDP)
        .arg("listen")
        .args(listen)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    udp(lab, sender_ns, &[&["send"][..], send].concat());
    let out = waiting.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What each echo saw, in order.
fn observed(probe_output: &str) -> Vec<SocketAddr> {
    probe_output
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn the_lab_s_nats_map_filter_and_forward_as_real_ones_do() {
    let mut lab = Lab::new().unwrap_or_else(|e| panic!("the NAT lab cannot be built here: {e}"));
    let a = lab.add_public("a").unwrap();
    let b = lab.add_public("b").unwrap();
    let easy = lab.add_home(Nat::EndpointIndependent).unwrap();
    let hard = lab.add_home(Nat::EndpointDependent).unwrap();
    let _echo_a = spawn(&lab, &a.ns, &["echo", "7000"]);
    let _echo_b = spawn(&lab, &b.ns, &["echo", "7000"]);
    let (to_a, to_b) = (format!("{}:7000", a.ip), format!("{}:7000", b.ip));
    // The echoes bind at once; the probe retries anyway.
    std::thread::sleep(Duration::from_millis(200));

    // Public hosts see each other as they are.
    let seen = observed(&udp(&lab, &b.ns, &["probe", "7100", &to_a]));
    assert_eq!(seen, [SocketAddr::from((b.ip, 7100))]);

    // Endpoint-independent: the same public address and port for both destinations (the
    // port kept, being free).
    let seen = observed(&udp(&lab, &easy.host_ns, &["probe", "40001", &to_a, &to_b]));
    assert_eq!(
        seen,
        [
            SocketAddr::from((easy.public_ip, 40001)),
            SocketAddr::from((easy.public_ip, 40001))
        ]
    );

    // Endpoint-dependent: the public address, a port per destination.
    let seen = observed(&udp(&lab, &hard.host_ns, &["probe", "40002", &to_a, &to_b]));
    assert!(
        seen.iter().all(|s| s.ip() == hard.public_ip),
        "{seen:?} behind {}",
        hard.public_ip
    );
    assert_ne!(seen[0].port(), seen[1].port(), "{seen:?}");

    // Nothing unsolicited gets in.
    let target = format!("{}:40003", easy.public_ip);
    let heard = deliver(
        &lab,
        &easy.host_ns,
        &["40003", "1500"],
        &a.ns,
        &["7001", &target],
    );
    assert_eq!(heard, "none");

    // An answer to what the host sent gets in: the host sends first, then the public host
    // sends to the mapping that opened (what hole punching relies on).
    let (peer, target) = (
        format!("{}:7002", a.ip),
        format!("{}:40005", easy.public_ip),
    );
    let heard = deliver(
        &lab,
        &easy.host_ns,
        &["40005", "3000", &peer],
        &a.ns,
        &["7002", &target],
    );
    assert_eq!(heard, format!("got {}:7002", a.ip));

    // A probe that arrives before the host's first packet leaves no trace on the router: the
    // host's socket still gets its own port as its public one (a router that let the probe
    // create a connection-tracking entry would map it to another port).
    // The probe comes from the port the host then sends to: the port an echo then answers on.
    let early = format!("{}:40006", easy.public_ip);
    udp(&lab, &a.ns, &["send", "7005", &early]);
    let _echo_a2 = spawn(&lab, &a.ns, &["echo", "7005"]);
    std::thread::sleep(Duration::from_millis(200));
    let to_a2 = format!("{}:7005", a.ip);
    let seen = observed(&udp(&lab, &easy.host_ns, &["probe", "40006", &to_a2]));
    assert_eq!(seen, [SocketAddr::from((easy.public_ip, 40006))]);

    // A port mapping lets anyone in.
    easy.forward_udp(40004).unwrap();
    let target = format!("{}:40004", easy.public_ip);
    let heard = deliver(
        &lab,
        &easy.host_ns,
        &["40004", "3000"],
        &b.ns,
        &["7003", &target],
    );
    assert_eq!(heard, format!("got {}:7003", b.ip));
}

#[test]
fn a_dropped_lab_leaves_no_namespace() {
    let names = || {
        String::from_utf8(
            std::process::Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    let prefix = {
        let mut lab =
            Lab::new().unwrap_or_else(|e| panic!("the NAT lab cannot be built here: {e}"));
        let home = lab.add_home(Nat::EndpointIndependent).unwrap();
        assert!(names().contains(&home.host_ns));
        home.host_ns.rsplit_once('-').unwrap().0.to_owned()
    };
    assert!(!names().contains(&prefix), "{}", names());
}
