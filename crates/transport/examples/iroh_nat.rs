//! A manual NAT experiment for the iroh transport: run the three roles in separate network
//! namespaces (see `scripts/iroh-nat-experiment.sh`).
//!
//! ```text
//! iroh_nat relay <bind ip:port> [<QAD bind ip:port> <host name or IP> <certificate file>]
//! iroh_nat serve <bind ip:port> <relay URL> <seed>
//! iroh_nat dial  <bind ip:port> <relay URL> <seed> <peer seed> <peer address...>
//! ```
//! `serve` answers pings; `dial` connects by the peer's id and prints, every 500 ms for 10 s,
//! which path the connection uses and the round trip of a ping. With `IROH_QAD_PORT` and
//! `IROH_RELAY_CERT` (the relay's certificate file, DER) set, `serve` and `dial` use the relay's
//! QUIC address discovery.
#![allow(clippy::unwrap_used)] // a diagnostic tool: a panic is the report

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crat_core::id::{NodeId, PeerAddr};
use crat_core::wire::{ClientToNode, NodeToClient};
use crat_transport::iroh::{IrohConfig, IrohTransport, Relay};
use crat_transport::{Connection, ConnectionExt, Conversation, FrameLimits, Transport, serve};
use ed25519_dalek::SigningKey;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn config(relay: &str) -> anyhow::Result<IrohConfig> {
    let mut config = IrohConfig {
        relay_urls: vec![relay.parse().context("relay URL")?],
        ..IrohConfig::default()
    };
    if let Ok(port) = std::env::var("IROH_QAD_PORT") {
        config.relay_qad_port = Some(port.parse()?);
    }
    if let Ok(path) = std::env::var("IROH_RELAY_CERT") {
        config.relay_roots = vec![std::fs::read(path)?.into()];
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let limits = FrameLimits::default();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["relay", bind] => {
            let relay = Relay::spawn_http(bind.parse()?).await?;
            println!("relay {}", relay.url());
            std::future::pending::<()>().await;
        }
        ["relay", bind, qad, name, cert_file] => {
            let relay =
                Relay::spawn_http_with_qad(bind.parse()?, qad.parse()?, vec![name.to_string()])
                    .await?;
            std::fs::write(cert_file, relay.qad_cert().context("QAD certificate")?)?;
            println!("relay {} with QAD on {:?}", relay.url(), relay.qad_addr());
            std::future::pending::<()>().await;
        }
        ["serve", bind, relay, seed] => {
            let t = IrohTransport::bind(bind.parse()?, &key(seed.parse()?), config(relay)?).await?;
            if !t.online(Duration::from_secs(10)).await {
                bail!("not online on the relay");
            }
            println!("serving {} at {}", t.local_id(), t.local_addr());
            while let Ok(conn) = t.accept().await {
                println!("accepted {} via {:?}", conn.remote_id(), conn.path_kind());
                tokio::spawn(serve(
                    conn,
                    Conversation::ClientNode,
                    limits,
                    16,
                    |_: ClientToNode| async { NodeToClient::Pong },
                ));
            }
        }
        ["dial", bind, relay, seed, peer, addr @ ..] => {
            let t = IrohTransport::bind(bind.parse()?, &key(seed.parse()?), config(relay)?).await?;
            if !t.online(Duration::from_secs(10)).await {
                bail!("not online on the relay");
            }
            println!("dialler {} at {}", t.local_id(), t.local_addr());
            let peer = NodeId::from_key(&key(peer.parse()?).verifying_key());
            let addr = PeerAddr::new(addr.join(" "))?;
            let started = Instant::now();
            let conn = t.connect(&addr, &peer).await?;
            println!(
                "connected in {:?} via {:?} ({})",
                started.elapsed(),
                conn.path_kind(),
                conn.remote_addr()
            );
            for _ in 0..20 {
                let sent = Instant::now();
                let reply: NodeToClient = conn
                    .call(&ClientToNode::Ping, Conversation::ClientNode, limits)
                    .await?;
                assert_eq!(reply, NodeToClient::Pong);
                println!(
                    "t={:>6.0?} ping {:>9.1?} via {:?} ({})",
                    started.elapsed(),
                    sent.elapsed(),
                    conn.path_kind(),
                    conn.remote_addr()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        _ => bail!("usage: see the doc comment of examples/iroh_nat.rs"),
    }
    Ok(())
}
