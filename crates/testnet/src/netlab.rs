//! A small Internet of Linux network namespaces, for tests of peers behind NAT: public hosts
//! on one shared segment, and homes whose host sits behind a NAT router, as most home GPUs
//! do. Everything lives in namespaces the [`Lab`] creates and deletes (when dropped), so test
//! traffic never leaves the machine and never touches its real interfaces.
//!
//! Topology and addresses (TEST-NET-2 for the "Internet", RFC 1918 inside the homes):
//!
//! ```text
//!   public host "disp"  198.51.100.10 ─┐
//!   public host "relay" 198.51.100.11 ─┤  bridge in <lab>-wan
//!   home 1 router       198.51.100.101 ┤── NAT ── host 10.1.0.2 (router 10.1.0.1)
//!   home 2 router       198.51.100.102 ┘── NAT ── host 10.2.0.2 (router 10.2.0.1)
//! ```
//!
//! Each home's router masquerades its host's traffic behind its public address with nftables:
//! - [`Nat::EndpointIndependent`]: the source port is kept where it is free, so one socket
//!   appears at the same public port whatever it sends to (the common home router; direct
//!   paths can be punched through it);
//! - [`Nat::EndpointDependent`]: `masquerade fully-random`, a new random public port for each
//!   destination (a "symmetric" NAT, as carrier-grade NATs often are; punching fails, a relay
//!   is needed).
//!
//! Inbound packets reach a home host only as answers to what it sent (the router's
//! connection tracking), or through a port mapping the test opens
//! ([`Home::forward_udp`]). Like home routers, the router also drops unsolicited packets
//! addressed to itself from the Internet. Without that rule, a peer's probe that arrives
//! before the host's first packet leaves a connection-tracking entry on the router, and
//! masquerade then maps the host's packets to that peer to another port, which defeats
//! hole punching even behind an endpoint-independent NAT. Commands run inside a namespace with [`Lab::command`]
//! (`ip netns exec`).
//!
//! Needs root (namespaces, nftables) and the `ip` and `nft` programs (Debian: `iproute2`,
//! `nftables`); [`Lab::new`] fails with what is missing. Linux only.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// How a home router translates addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// One public port per local socket, whatever the destination (port preserved when free).
    EndpointIndependent,
    /// A new random public port per destination ("symmetric").
    EndpointDependent,
}

/// Why the lab could not be built or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// A command failed; its output says why.
    #[error("{command}: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed (or why it could not run).
        output: String,
    },
    /// Something the lab needs is missing.
    #[error("{0}")]
    Missing(String),
}

/// A host on the public segment.
#[derive(Clone, Debug)]
pub struct PublicHost {
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// A home: a NAT router and the host behind it.
#[derive(Clone, Debug)]
pub struct Home {
    /// The router's namespace.
    pub router_ns: String,
    /// The host's namespace (where a node runs).
    pub host_ns: String,
    /// The router's public address: what the Internet sees the host as.
    pub public_ip: Ipv4Addr,
    /// The host's private address.
    pub host_ip: Ipv4Addr,
    /// How the router translates.
    pub nat: Nat,
}

/// The namespaces of one test; deleted when dropped.
pub struct Lab {
    prefix: String,
    wan: String,
    namespaces: Vec<String>,
    publics: u8,
    homes: u8,
}

static LABS: AtomicU32 = AtomicU32::new(0);

fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| LabError::Command {
            command: command.clone(),
            output: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS program args…` to completion.
fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `nft -f -` in `ns` with `rules` on its standard input.
fn nft(ns: &str, rules: &str) -> Result<(), LabError> {
    use std::io::Write as _;
    let command = format!("ip netns exec {ns} nft -f -");
    let fail = |output: String| LabError::Command {
        command: command.clone(),
        output,
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    child
        .stdin
        .take()
        .ok_or_else(|| fail("no stdin".into()))?
        .write_all(rules.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(())
}

impl Lab {
    /// The public segment: an empty namespace with a bridge every host plugs into.
    pub fn new() -> Result<Self, LabError> {
        for (program, package) in [("ip", "iproute2"), ("nft", "nftables")] {
            if run(program, &["-V"]).is_err() {
                return Err(LabError::Missing(format!(
                    "`{program}` is not installed: the NAT tests need it (Debian package \
                     {package}; .ci/run installs it)"
                )));
            }
        }
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("crat{}x{n}", std::process::id());
        let wan = format!("{prefix}-wan");
        let mut lab = Self {
            prefix,
            wan: wan.clone(),
            namespaces: Vec::new(),
            publics: 0,
            homes: 0,
        };
        lab.add_ns(&wan).map_err(|e| match e {
            LabError::Command { output, .. } => LabError::Missing(format!(
                "cannot create a network namespace (the NAT tests need root, or \
                 CAP_SYS_ADMIN and CAP_NET_ADMIN): {output}"
            )),
            other => other,
        })?;
        in_ns(&wan, "ip", &["link", "add", "br0", "type", "bridge"])?;
        in_ns(&wan, "ip", &["link", "set", "br0", "up"])?;
        Ok(lab)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), LabError> {
        run("ip", &["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        in_ns(ns, "ip", &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Plugs `ns` into the public segment as `ifname` with `ip`/24.
    fn plug(&self, ns: &str, ifname: &str, ip: Ipv4Addr) -> Result<(), LabError> {
        let port = format!("p{}", self.namespaces.len());
        run(
            "ip",
            &[
                "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", &port, "netns",
                &self.wan,
            ],
        )?;
        in_ns(&self.wan, "ip", &["link", "set", &port, "master", "br0"])?;
        in_ns(&self.wan, "ip", &["link", "set", &port, "up"])?;
        in_ns(
            ns,
            "ip",
            &["addr", "add", &format!("{ip}/24"), "dev", ifname],
        )?;
        in_ns(ns, "ip", &["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// A host on the public segment (198.51.100.10, .11, …), named `name` in its namespace's
    /// name.
    pub fn add_public(&mut self, name: &str) -> Result<PublicHost, LabError> {
        let ip = Ipv4Addr::new(198, 51, 100, 10 + self.publics);
        self.publics += 1;
        let ns = format!("{}-{name}", self.prefix);
        self.add_ns(&ns)?;
        self.plug(&ns, "eth0", ip)?;
        Ok(PublicHost { ns, ip })
    }

    /// A home: a router at 198.51.100.(100 + n) translating with `nat`, and its host at
    /// 10.n.0.2 behind it.
    pub fn add_home(&mut self, nat: Nat) -> Result<Home, LabError> {
        self.homes += 1;
        let n = self.homes;
        let public_ip = Ipv4Addr::new(198, 51, 100, 100 + n);
        let host_ip = Ipv4Addr::new(10, n, 0, 2);
        let router_ns = format!("{}-r{n}", self.prefix);
        let host_ns = format!("{}-h{n}", self.prefix);
        self.add_ns(&router_ns)?;
        self.add_ns(&host_ns)?;
        self.plug(&router_ns, "wan0", public_ip)?;
        run(
            "ip",
            &[
                "link", "add", "lan0", "netns", &router_ns, "type", "veth", "peer", "name", "eth0",
                "netns", &host_ns,
            ],
        )?;
        in_ns(
            &router_ns,
            "ip",
            &["addr", "add", &format!("10.{n}.0.1/24"), "dev", "lan0"],
        )?;
        in_ns(&router_ns, "ip", &["link", "set", "lan0", "up"])?;
        in_ns(
            &host_ns,
            "ip",
            &["addr", "add", &format!("{host_ip}/24"), "dev", "eth0"],
        )?;
        in_ns(&host_ns, "ip", &["link", "set", "eth0", "up"])?;
        in_ns(
            &host_ns,
            "ip",
            &["route", "add", "default", "via", &format!("10.{n}.0.1")],
        )?;
        in_ns(&router_ns, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let masquerade = match nat {
            Nat::EndpointIndependent => "masquerade",
            Nat::EndpointDependent => "masquerade fully-random",
        };
        nft(
            &router_ns,
            &format!(
                "table ip nat {{\n\
                   chain prerouting {{ type nat hook prerouting priority dstnat; }}\n\
                   chain postrouting {{ type nat hook postrouting priority srcnat; \
                     oifname \"wan0\" {masquerade}; }}\n\
                 }}\n\
                 table ip filter {{\n\
                   chain input {{ type filter hook input priority filter; policy drop;\n\
                     ct state established,related accept\n\
                     iifname {{ \"lo\", \"lan0\" }} accept\n\
                   }}\n\
                   chain forward {{ type filter hook forward priority filter; policy drop;\n\
                     ct state established,related accept\n\
                     iifname \"lan0\" oifname \"wan0\" accept\n\
                     ct status dnat accept\n\
                   }}\n\
                 }}\n"
            ),
        )?;
        Ok(Home {
            router_ns,
            host_ns,
            public_ip,
            host_ip,
            nat,
        })
    }

    /// `program` to be run inside namespace `ns` (as `ip netns exec ns program`); add its
    /// arguments, environment and output handling, then spawn it.
    pub fn command(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Home {
    /// Opens a port mapping on the router: UDP to its public address at `port` goes to the
    /// host's `port` (what an operator does on a router's settings page, or UPnP).
    pub fn forward_udp(&self, port: u16) -> Result<(), LabError> {
        nft(
            &self.router_ns,
            &format!(
                "add rule ip nat prerouting iifname \"wan0\" udp dport {port} dnat to {}:{port}\n",
                self.host_ip
            ),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces, and with them their peers.
        for ns in self.namespaces.iter().rev() {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}
