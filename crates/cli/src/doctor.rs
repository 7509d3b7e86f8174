//! `crat node doctor`: can clients reach this node? It binds an endpoint as the node would
//! (on the node's port when the node is not running; with an identity of its own), and
//! reports:
//! - the address the dispatcher sees its packets come from (its public address after NAT);
//! - whether the dispatcher's dial from another port to that address got through (reachable
//!   directly: a public address, or a port forwarded to it);
//! - on iroh, the public address the relays' address discovery saw and the round trip to each
//!   relay; from the two views, the NAT's behaviour (endpoint-independent: direct paths by hole
//!   punching; endpoint-dependent, "symmetric": clients behind NATs go through the relay);
//! - what the operator can do about it.
//!
//! The dispatcher records the same check for the running node at each registration, which
//! `crat node status` and the dashboard show (`direct`), and places replicas on nodes it
//! reaches directly first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use crat_core::id::{NodeId, PeerAddr};
use crat_core::wire::Reach;
use crat_transport::Transport as _;
use crat_transport::any::{AnyTransport, TransportKind};
use crat_transport::iroh::NatReport;
use ed25519_dalek::SigningKey;

use crate::transport::{TransportArgs, TransportChoice};

/// Options of `crat node doctor`.
#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Settings file (TOML, `[node]`, `[client]` and `[network]` tables).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The dispatcher's address.
    #[arg(long)]
    dispatcher: Option<SocketAddr>,
    /// The dispatcher's id (64 hex digits).
    #[arg(long)]
    dispatcher_id: Option<String>,
    /// The UDP address the node listens on: checked from there when it is free (the node is
    /// not running), else from another port. Default: `[node] listen`, else 0.0.0.0:7401.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A public address forwarded to the node (as `crat node --advertise`).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    net: TransportArgs,
}

/// How the NAT in front of the node maps its packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NatBehaviour {
    /// No NAT in the way: the dispatcher reached the node directly.
    Reachable,
    /// One public port whatever the destination: hole punching gives direct paths.
    EndpointIndependent,
    /// Another public port per destination ("symmetric"): relayed, unless a port is forwarded.
    EndpointDependent,
    /// Not enough to tell (no relay with address discovery, or no answer).
    Unknown,
}

impl NatBehaviour {
    fn as_str(self) -> &'static str {
        match self {
            Self::Reachable => "none in the way (reachable directly)",
            Self::EndpointIndependent => "endpoint-independent mapping (hole punching works)",
            Self::EndpointDependent => "endpoint-dependent mapping (\"symmetric\")",
            Self::Unknown => "unknown",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Reachable => "reachable",
            Self::EndpointIndependent => "endpoint_independent",
            Self::EndpointDependent => "endpoint_dependent",
            Self::Unknown => "unknown",
        }
    }
}

/// Everything the doctor found.
struct Findings {
    kind: TransportKind,
    local: PeerAddr,
    /// The node's UDP port (what a router should forward).
    port: u16,
    /// The port checked from, when not the node's own (it was in use).
    moved_from: Option<SocketAddr>,
    reach: Reach,
    nat_report: Option<NatReport>,
    relays_configured: bool,
    relay_wait: Option<Duration>,
}

impl Findings {
    fn behaviour(&self) -> NatBehaviour {
        if self.reach.inbound == Some(true) {
            return NatBehaviour::Reachable;
        }
        let observed = self
            .reach
            .observed
            .as_ref()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
        let Some(report) = &self.nat_report else {
            return NatBehaviour::Unknown;
        };
        if report.mapping_varies_by_destination == Some(true) {
            return NatBehaviour::EndpointDependent;
        }
        let public = match observed {
            Some(SocketAddr::V6(_)) => report.public_v6,
            _ => report.public_v4,
        };
        match (public, observed) {
            // The relay and the dispatcher saw the same public port: one mapping for all.
            (Some(p), Some(o)) if p == o => NatBehaviour::EndpointIndependent,
            // The same public address, another port: a mapping per destination.
            (Some(p), Some(o)) if p.ip() == o.ip() => NatBehaviour::EndpointDependent,
            _ => NatBehaviour::Unknown,
        }
    }

    fn advice(&self) -> Vec<String> {
        let port = self.port;
        let forward = format!(
            "forward UDP port {port} on your router to this machine and start the node with \
             --advertise PUBLIC_IP:{port} (or [node] advertise)"
        );
        let mut out = Vec::new();
        match (self.behaviour(), self.kind) {
            (NatBehaviour::Reachable, _) => {
                out.push("nothing to do: clients connect straight to this node".to_owned());
            }
            (_, TransportKind::Quic) => {
                out.push(format!(
                    "clients cannot reach this node over the quic transport: {forward}, or join \
                     a network that runs the iroh transport (--transport iroh with a relay)"
                ));
            }
            (NatBehaviour::EndpointIndependent, _) => {
                out.push(
                    "clients reach this node directly after hole punching; the relay carries \
                     only the first packets"
                        .to_owned(),
                );
                out.push(format!(
                    "to be reachable without hole punching (placed first): {forward}"
                ));
            }
            (NatBehaviour::EndpointDependent, _) => {
                out.push(
                    "clients behind NATs reach this node only through the relay (slower, and \
                     it is placed after directly reachable nodes)"
                        .to_owned(),
                );
                out.push(format!("to fix it: {forward}"));
            }
            (NatBehaviour::Unknown, _) => {
                out.push(
                    "clients reach this node through the relay at first; hole punching may \
                     find a direct path"
                        .to_owned(),
                );
                out.push(format!("to be sure of direct paths: {forward}"));
            }
        }
        if !self.relays_configured && self.kind != TransportKind::Quic {
            out.push(
                "no relay is configured (--relay): clients behind NATs cannot reach this node \
                 at all unless it is reachable directly"
                    .to_owned(),
            );
        } else if self.relays_configured && self.relay_wait.is_none() {
            out.push("the relay did not answer: check its URL and --relay-ca".to_owned());
        }
        if let Some(from) = self.moved_from {
            out.push(format!(
                "{from} was in use (the node is running?): checked from another port, which the \
                 router may treat differently from the node's"
            ));
        }
        out
    }

    fn to_json(&self) -> serde_json::Value {
        let report = self.nat_report.as_ref();
        serde_json::json!({
            "transport": self.kind.as_str(),
            "local": self.local.as_str(),
            "observed": self.reach.observed.as_ref().map(PeerAddr::as_str),
            "inbound": self.reach.inbound,
            "probe_ms": self.reach.probe_ms,
            "public_v4": report.and_then(|r| r.public_v4).map(|a| a.to_string()),
            "public_v6": report.and_then(|r| r.public_v6).map(|a| a.to_string()),
            "nat": self.behaviour().key(),
            "relays": report.map(|r| r.relay_rtt.iter().map(|(url, rtt)| serde_json::json!({
                "url": url.to_string(),
                "rtt_ms": rtt.as_secs_f64() * 1e3,
            })).collect::<Vec<_>>()),
            "report_ms": self.relay_wait.map(|d| d.as_secs_f64() * 1e3),
            "advice": self.advice(),
        })
    }

    fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "transport:  {}", self.kind);
        let _ = writeln!(out, "local:      {}", self.local);
        let _ = writeln!(
            out,
            "observed:   {} (by the dispatcher)",
            self.reach
                .observed
                .as_ref()
                .map_or("unknown", PeerAddr::as_str)
        );
        let inbound = match self.reach.inbound {
            Some(true) => format!("yes ({} ms)", self.reach.probe_ms),
            Some(false) => format!("no (nothing answered in {} ms)", self.reach.probe_ms),
            None => "not checked (the dispatcher has no probe endpoint)".to_owned(),
        };
        let _ = writeln!(out, "inbound:    {inbound}");
        if let Some(r) = &self.nat_report {
            if let Some(p) = r.public_v4 {
                let _ = writeln!(out, "public:     {p} (by the relay's address discovery)");
            }
            for (url, rtt) in &r.relay_rtt {
                let _ = writeln!(
                    out,
                    "relay:      {url} round trip {:.1} ms",
                    rtt.as_secs_f64() * 1e3
                );
            }
        } else if self.relays_configured {
            let _ = writeln!(out, "relay:      no report (unreachable?)");
        }
        let _ = writeln!(out, "NAT:        {}", self.behaviour().as_str());
        for line in self.advice() {
            let _ = writeln!(out, "- {line}");
        }
        out
    }
}

pub(crate) fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let mut file = crate::net::load_config(args.config.as_deref())?;
    let choice = TransportChoice::resolve(args.net, std::mem::take(&mut file.network))?;
    let dispatcher = args
        .dispatcher
        .or(file.client.dispatcher)
        .context("--dispatcher is required")?;
    let dispatcher_id: NodeId = args
        .dispatcher_id
        .or(file.client.dispatcher_id.clone())
        .context("--dispatcher-id is required")?
        .parse()
        .context("--dispatcher-id")?;
    let listen = args
        .listen
        .or(file.node_listen())
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7401)));
    let advertise: Vec<SocketAddr> = args
        .advertise
        .or(file.node_advertise())
        .into_iter()
        .collect();
    // A throwaway identity: the question is about this machine's address, not the node's
    // key (which may be in use by the running node: an iroh endpoint id cannot be on two
    // endpoints at once).
    let key = SigningKey::from_bytes(&rand::random());
    let findings = crate::net::runtime()?.block_on(async move {
        // The node's own port when free; another when the node holds it.
        let started = Instant::now();
        let (transport, moved_from) = match choice.bind(listen, &key, &advertise, false).await {
            Ok(t) => (t, None),
            Err(_) => (
                choice
                    .bind(SocketAddr::new(listen.ip(), 0), &key, &advertise, false)
                    .await?,
                Some(listen),
            ),
        };
        let reach = crat_node::standing::ask_reach(
            &transport,
            &PeerAddr::from(dispatcher),
            &dispatcher_id,
            crat_transport::FrameLimits::default(),
        )
        .await;
        // The relays' address discovery and round trips (they answer any endpoint; relaying
        // itself is for members only).
        let nat_report = match &transport {
            AnyTransport::Iroh(t) if choice.has_relays() => {
                t.nat_report(Duration::from_secs(10)).await
            }
            _ => None,
        };
        let relay_wait = nat_report.as_ref().map(|_| started.elapsed());
        let local = transport.local_addr();
        transport.shutdown().await;
        anyhow::Ok(Findings {
            kind: choice.kind(),
            local,
            port: listen.port(),
            moved_from,
            reach: reach.context("asking the dispatcher")?,
            nat_report,
            relays_configured: choice.has_relays(),
            relay_wait,
        })
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings.to_json())?);
    } else {
        print!("{}", findings.to_text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(inbound: Option<bool>, observed: &str, public: Option<&str>) -> Findings {
        Findings {
            kind: TransportKind::Iroh,
            local: "10.1.0.2:7401".parse().unwrap(),
            port: 7401,
            moved_from: None,
            reach: Reach {
                observed: Some(observed.parse().unwrap()),
                inbound,
                probe_ms: 3,
            },
            nat_report: public.map(|p| NatReport {
                public_v4: Some(p.parse().unwrap()),
                public_v6: None,
                mapping_varies_by_destination: None,
                udp: true,
                relay_rtt: vec![(
                    "http://198.51.100.11:3340/".parse().unwrap(),
                    Duration::from_millis(2),
                )],
            }),
            relays_configured: true,
            relay_wait: Some(Duration::from_millis(200)),
        }
    }

    #[test]
    fn the_two_views_of_the_public_address_tell_the_nat_apart() {
        let reachable = findings(Some(true), "198.51.100.101:7401", None);
        assert_eq!(reachable.behaviour(), NatBehaviour::Reachable);
        assert!(reachable.advice()[0].starts_with("nothing to do"));
        let eim = findings(
            Some(false),
            "198.51.100.101:7401",
            Some("198.51.100.101:7401"),
        );
        assert_eq!(eim.behaviour(), NatBehaviour::EndpointIndependent);
        let edm = findings(
            Some(false),
            "198.51.100.101:40001",
            Some("198.51.100.101:51234"),
        );
        assert_eq!(edm.behaviour(), NatBehaviour::EndpointDependent);
        assert!(
            edm.advice()
                .iter()
                .any(|a| a.contains("forward UDP port 7401"))
        );
        let unknown = findings(Some(false), "198.51.100.101:7401", None);
        assert_eq!(unknown.behaviour(), NatBehaviour::Unknown);
        let json = edm.to_json();
        assert_eq!(json["nat"], "endpoint_dependent");
        assert_eq!(json["inbound"], false);
        assert_eq!(json["relays"][0]["url"], "http://198.51.100.11:3340/");
    }

    #[test]
    fn quic_nodes_behind_nat_are_told_to_forward_or_use_iroh() {
        let mut quic = findings(Some(false), "198.51.100.101:7401", None);
        quic.kind = TransportKind::Quic;
        quic.relays_configured = false;
        quic.relay_wait = None;
        let advice = quic.advice().join("\n");
        assert!(advice.contains("--transport iroh"), "{advice}");
    }
}
