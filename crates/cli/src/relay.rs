//! `crat relay`: the deployment's own iroh relay. Nodes and clients of an iroh network
//! (`--transport iroh --relay URL`) keep a connection to it; it carries their end-to-end
//! encrypted QUIC packets while they have no direct path, signals their hole punching, and
//! tells each its public address (QUIC address discovery, QAD, on a UDP port). It never sees
//! tensors in the clear, and the dispatcher never carries them (DESIGN.md, principle 4).
//!
//! It serves only the network's members: when an endpoint connects, the relay asks the
//! dispatcher (`--dispatcher`, `--dispatcher-id`, with an SDK key of its own, `--key`)
//! whether it is a node the dispatcher knows, a client that used a valid key within the last
//! hour, or one of the dispatcher's canary endpoints; answers are remembered for 5 minutes
//! (refusals for 10 s), at most 100,000. `--open` serves everyone instead (closed networks
//! and tests). Each client may send at most `--client-bytes-per-s` through it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Args;
use crat_transport::iroh::Relay;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::Deserialize;

use crate::transport::DEFAULT_QAD_PORT;

/// Options of `crat relay`.
#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Settings file (TOML, `[relay]` table).
    #[arg(long)]
    config: Option<PathBuf>,
    /// TCP address of the relay protocol (HTTP). Default 0.0.0.0:3340.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// UDP port of QUIC address discovery, on the listen IP. Default 7842.
    #[arg(long)]
    qad_port: Option<u16>,
    /// The host name or IP address peers reach the relay at (its URL and certificate name);
    /// repeatable. Default: the listen IP, when it is not 0.0.0.0 or ::.
    #[arg(long = "name")]
    names: Vec<String>,
    /// Data directory: the certificate (`relay.pem`, give it to peers as `--relay-ca`) and
    /// its key (`relay.key`), made on first start. Default ./crat-relay.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The dispatcher that says who may use this relay. Default: `[client] dispatcher`.
    #[arg(long)]
    dispatcher: Option<SocketAddr>,
    /// The dispatcher's id. Default: `[client] dispatcher_id`.
    #[arg(long)]
    dispatcher_id: Option<String>,
    /// The relay's SDK key, to ask the dispatcher with (or set CRAT_KEY). Default: `[client]
    /// key`.
    #[arg(long, env = "CRAT_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Serve every endpoint, asking nobody (closed networks, tests).
    #[arg(long)]
    open: bool,
    /// Bytes per second one client may send through the relay. Default: `[relay]
    /// client_bytes_per_s`, else 16 MiB/s.
    #[arg(long)]
    client_bytes_per_s: Option<u32>,
    #[command(flatten)]
    net: crate::transport::TransportArgs,
}

/// The `[relay]` table: the flags of `crat relay`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RelaySection {
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) qad_port: Option<u16>,
    pub(crate) names: Option<Vec<String>>,
    pub(crate) data_dir: Option<PathBuf>,
    /// Serve every endpoint, asking nobody. Default false.
    pub(crate) open: Option<bool>,
    /// Bytes per second one client may send through the relay. Default 16 MiB/s.
    pub(crate) client_bytes_per_s: Option<u32>,
}

/// Bytes per second one client may send through the relay by default.
pub(crate) const CLIENT_BYTES_PER_S_DEFAULT: u32 = 16 << 20;

/// How long the relay remembers that an endpoint may use it, and that it may not.
const ADMITTED_MS: u64 = 300_000;
const REFUSED_MS: u64 = 10_000;

/// Endpoints whose answer is remembered, at most.
const ANSWERS_MAX: usize = 100_000;

/// Questions to the dispatcher in flight at once; more connecting endpoints are refused
/// until one is answered.
const QUESTIONS_MAX: usize = 64;

/// Admits the endpoints the dispatcher says are members ([`ClientCall::RelayAccess`]).
///
/// [`ClientCall::RelayAccess`]: crat_core::wire::ClientCall::RelayAccess
struct DispatcherGate {
    client: crat_sdk::Client<crat_transport::any::AnyTransport>,
    answers: std::sync::Mutex<crat_core::expiring::ExpiringMap<crat_core::id::NodeId, bool>>,
    questions: tokio::sync::Semaphore,
    started: std::time::Instant,
}

impl DispatcherGate {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn ask(&self, endpoint: crat_core::id::NodeId) -> Result<(), String> {
        let now = self.now_ms();
        {
            let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            answers.forget_expired(now);
            if let Some(allowed) = answers.get(&endpoint) {
                return if *allowed {
                    Ok(())
                } else {
                    Err("not a member of this network".into())
                };
            }
        }
        let Ok(_permit) = self.questions.try_acquire() else {
            return Err("the relay is busy; retry".into());
        };
        let asked = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.client.relay_access(endpoint),
        )
        .await;
        let allowed = match asked {
            Ok(Ok(allowed)) => allowed,
            Ok(Err(e)) => return Err(format!("the dispatcher did not answer: {e}")),
            Err(_) => return Err("the dispatcher did not answer in time".into()),
        };
        let ttl = if allowed { ADMITTED_MS } else { REFUSED_MS };
        let now = self.now_ms();
        let _ = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                endpoint,
                allowed,
                now.saturating_add(ttl),
                now,
                crat_core::expiring::WhenFull::ForgetSoonest,
            );
        if allowed {
            Ok(())
        } else {
            Err("not a member of this network".into())
        }
    }
}

impl crat_transport::iroh::RelayGate for DispatcherGate {
    fn admit(
        &self,
        endpoint: crat_core::id::NodeId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(self.ask(endpoint))
    }
}

pub(crate) fn run(args: RelayArgs) -> anyhow::Result<()> {
    let mut all = crate::net::load_config(args.config.as_deref())?;
    let choice =
        crate::transport::TransportChoice::resolve(args.net, std::mem::take(&mut all.network))?;
    let open = args.open || all.relay.open.unwrap_or(false);
    let client_bytes_per_s = std::num::NonZeroU32::new(
        args.client_bytes_per_s
            .or(all.relay.client_bytes_per_s)
            .unwrap_or(CLIENT_BYTES_PER_S_DEFAULT),
    );
    let asker = if open {
        None
    } else {
        let dispatcher = args.dispatcher.or(all.client.dispatcher).context(
            "--dispatcher is required (the dispatcher that says who may use this relay), or --open",
        )?;
        let id: crat_core::id::NodeId = args
            .dispatcher_id
            .or(all.client.dispatcher_id.clone())
            .context("--dispatcher-id is required, or --open")?
            .parse()
            .context("--dispatcher-id")?;
        let key: crat_core::id::SdkKey = args
            .key
            .or(all.client.key.clone())
            .context("--key (or CRAT_KEY) is required, or --open")?
            .parse()
            .context("--key")?;
        Some((dispatcher, id, key))
    };
    let file = all.relay;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 3340)));
    let qad_port = args.qad_port.or(file.qad_port).unwrap_or(DEFAULT_QAD_PORT);
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("crat-relay"));
    let mut names = if args.names.is_empty() {
        file.names.unwrap_or_default()
    } else {
        args.names
    };
    if names.is_empty() {
        if listen.ip().is_unspecified() {
            bail!(
                "--name is required when listening on {}: the host name or IP address peers \
                 reach this relay at",
                listen.ip()
            );
        }
        names.push(listen.ip().to_string());
    }
    let (cert, key) = load_or_create_cert(&data_dir, &names)?;
    crate::net::runtime()?.block_on(async move {
        let gate = match asker {
            Some((dispatcher, id, sdk_key)) => {
                // Its own endpoint to the dispatcher, direct (never through itself).
                let identity = ed25519_dalek::SigningKey::from_bytes(&rand::random());
                let transport = choice
                    .bind_public(crat_sdk::client_bind_addr(dispatcher), &identity)
                    .await?;
                let client =
                    crat_sdk::Client::connect(transport, identity, dispatcher.into(), id, sdk_key)
                        .await
                        .context("connecting to the dispatcher")?;
                // The key must work before anyone is turned away for it.
                client
                    .key_status()
                    .await
                    .context("checking the relay's key")?;
                println!("members only: asking dispatcher {id} at {dispatcher}");
                Some(Arc::new(DispatcherGate {
                    client,
                    answers: std::sync::Mutex::new(crat_core::expiring::ExpiringMap::new(
                        ANSWERS_MAX,
                    )),
                    questions: tokio::sync::Semaphore::new(QUESTIONS_MAX),
                    started: std::time::Instant::now(),
                })
                    as Arc<dyn crat_transport::iroh::RelayGate>)
            }
            None => {
                println!("open: serving every endpoint");
                None
            }
        };
        let relay = Relay::spawn_http_with_qad_cert(
            listen,
            SocketAddr::new(listen.ip(), qad_port),
            cert,
            key,
            crat_transport::iroh::RelayOptions {
                gate,
                client_bytes_per_s,
            },
        )
        .await?;
        let port = relay.http_addr().map_or(listen.port(), |a| a.port());
        let host = match names[0].parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => names[0].clone(),
        };
        println!("relay on http://{host}:{port}/ (give peers --relay http://{host}:{port}/)");
        if let Some(qad) = relay.qad_addr() {
            println!("address discovery on udp {qad}");
        }
        println!(
            "certificate {} (give peers --relay-ca {})",
            data_dir.join(CERT_FILE).display(),
            data_dir.join(CERT_FILE).display()
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for ctrl-c")?;
        println!("stopping");
        relay.shutdown().await?;
        anyhow::Ok(())
    })
}

const CERT_FILE: &str = "relay.pem";
const KEY_FILE: &str = "relay.key";

/// The relay's certificate and key from `dir`, made (self-signed for `names`) when absent. A
/// relay restarted keeps its certificate, which its peers trust.
fn load_or_create_cert(
    dir: &Path,
    names: &[String],
) -> anyhow::Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>)> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if cert_path.exists() || key_path.exists() {
        let cert = CertificateDer::from_pem_file(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key = PrivatePkcs8KeyDer::from_pem_file(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert, key) = Relay::self_signed(names.to_vec())?;
    let pem = |label: &str, der: &[u8]| {
        use std::fmt::Write as _;
        let mut out = format!("-----BEGIN {label}-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
        }
        let _ = writeln!(out, "-----END {label}-----");
        out
    };
    // The key first: a relay that finds a key without its certificate stops (above) rather
    // than serve a certificate its peers do not trust.
    if !crate::keyfile::write_new_private(
        &key_path,
        pem("PRIVATE KEY", key.secret_pkcs8_der()).as_bytes(),
    )? {
        bail!(
            "{} appeared while this relay was starting: start it once at a time",
            key_path.display()
        );
    }
    std::fs::write(&cert_path, pem("CERTIFICATE", &cert))
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["198.51.100.11".to_string()];
        let (cert, key) = load_or_create_cert(dir.path(), &names).unwrap();
        let (again, key_again) = load_or_create_cert(dir.path(), &names).unwrap();
        assert_eq!(cert, again);
        assert_eq!(key.secret_pkcs8_der(), key_again.secret_pkcs8_der());
        // What peers are given as --relay-ca parses.
        let trusted = crate::transport::read_certs(&dir.path().join(CERT_FILE)).unwrap();
        assert_eq!(trusted, vec![cert]);
    }
}
