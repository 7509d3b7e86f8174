//! Which transport the network verbs run on: `--transport quic|iroh`, the relays of an iroh
//! network (`--relay`, `--relay-ca`, `--relay-qad-port`), or the `[network]` table of the
//! settings file. Every peer of one network uses the same transport.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use crat_transport::any::{AnyTransport, TransportKind};
use crat_transport::iroh::{IrohConfig, RelayUrl};
use crat_transport::quic::QuicConfig;
use ed25519_dalek::SigningKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;

/// The UDP port of a relay's QUIC address discovery (`crat relay --qad-port`): iroh's default.
pub(crate) const DEFAULT_QAD_PORT: u16 = 7842;

/// How long a node or client waits for its home relay at start before going on without it.
const RELAY_WAIT: Duration = Duration::from_secs(10);

/// Transport flags shared by the network verbs.
#[derive(Debug, Default, Args)]
pub(crate) struct TransportArgs {
    /// The network's transport: `quic` (peers reach each other's UDP address) or `iroh` (QUIC
    /// through NATs: hole punching, with a relay as the fallback path). Every peer of a
    /// network uses the same one. Default: `[network] transport`, else quic.
    #[arg(long)]
    transport: Option<TransportKind>,
    /// A relay's URL (`crat relay` prints it), e.g. http://203.0.113.5:3340/; repeatable; iroh
    /// only. Default: `[network] relays`.
    #[arg(long = "relay")]
    relays: Vec<String>,
    /// The relays' certificate (PEM; `crat relay` writes its own), trusted for their address
    /// discovery. Default: `[network] relay_ca`, else the web PKI.
    #[arg(long)]
    relay_ca: Option<PathBuf>,
    /// UDP port of the relays' address discovery. Default: `[network] relay_qad_port`, else
    /// 7842.
    #[arg(long)]
    relay_qad_port: Option<u16>,
}

/// The `[network]` table: the flags of [`TransportArgs`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkSection {
    /// `quic` (the default) or `iroh`.
    pub(crate) transport: Option<TransportKind>,
    /// Relay URLs (iroh).
    pub(crate) relays: Option<Vec<String>>,
    /// The relays' certificate (PEM).
    pub(crate) relay_ca: Option<PathBuf>,
    /// UDP port of the relays' address discovery. Default 7842.
    pub(crate) relay_qad_port: Option<u16>,
}

/// A resolved transport choice: what to bind.
#[derive(Debug, Clone)]
pub(crate) struct TransportChoice {
    kind: TransportKind,
    iroh: IrohConfig,
}

impl TransportChoice {
    /// The flags over the settings file's `[network]` table.
    pub(crate) fn resolve(args: TransportArgs, file: NetworkSection) -> anyhow::Result<Self> {
        let kind = args
            .transport
            .or(file.transport)
            .unwrap_or(TransportKind::Quic);
        let relays = if args.relays.is_empty() {
            file.relays.unwrap_or_default()
        } else {
            args.relays
        };
        let relay_ca = args.relay_ca.or(file.relay_ca);
        let qad_port = args.relay_qad_port.or(file.relay_qad_port);
        if kind == TransportKind::Quic && (!relays.is_empty() || relay_ca.is_some()) {
            bail!("relays are for the iroh transport: add --transport iroh");
        }
        let relay_urls = relays
            .iter()
            .map(|r| {
                r.parse::<RelayUrl>()
                    .with_context(|| format!("relay URL {r:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let relay_roots = match &relay_ca {
            Some(path) => read_certs(path)?,
            None => Vec::new(),
        };
        let iroh = IrohConfig {
            relay_qad_port: (!relay_urls.is_empty()).then(|| qad_port.unwrap_or(DEFAULT_QAD_PORT)),
            relay_urls,
            relay_roots,
            ..IrohConfig::default()
        };
        Ok(Self { kind, iroh })
    }

    /// The transport.
    pub(crate) fn kind(&self) -> TransportKind {
        self.kind
    }

    /// The iroh settings (relays) of a network on iroh; `None` on QUIC.
    pub(crate) fn iroh_config(&self) -> Option<IrohConfig> {
        (self.kind == TransportKind::Iroh).then(|| self.iroh.clone())
    }

    /// Whether relays are configured.
    pub(crate) fn has_relays(&self) -> bool {
        !self.iroh.relay_urls.is_empty()
    }

    /// An endpoint peers may have to reach through NATs (a node, a client): with the relays;
    /// `external` are public addresses it cannot discover itself (a forwarded port). With
    /// `wait_relay`, waits up to 10 s for the home relay, so that its address names it.
    pub(crate) async fn bind(
        &self,
        addr: SocketAddr,
        key: &SigningKey,
        external: &[SocketAddr],
        wait_relay: bool,
    ) -> anyhow::Result<AnyTransport> {
        match self.kind {
            TransportKind::Iroh => {
                let config = IrohConfig {
                    external_addrs: external.to_vec(),
                    ..self.iroh.clone()
                };
                let t = crat_transport::iroh::IrohTransport::bind(addr, key, config).await?;
                if wait_relay && self.has_relays() && !t.online(RELAY_WAIT).await {
                    eprintln!(
                        "warning: no relay reached within {} s; going on (peers behind NATs \
                         may not reach this endpoint until it does)",
                        RELAY_WAIT.as_secs()
                    );
                }
                Ok(AnyTransport::Iroh(t))
            }
            _ => Ok(AnyTransport::quic(addr, key, QuicConfig::default())?),
        }
    }

    /// An endpoint reached directly, or reaching only directly reachable peers (the
    /// dispatcher): on iroh it uses no relay. Every peer reaches it directly, and the address
    /// it sees a node's packets come from is that node's (never a relay's): what operator
    /// limits are keyed by.
    pub(crate) async fn bind_public(
        &self,
        addr: SocketAddr,
        key: &SigningKey,
    ) -> anyhow::Result<AnyTransport> {
        self.bind_direct(addr, key, None).await
    }

    /// The dispatcher's own endpoint: public ([`Self::bind_public`]), and each peer starts
    /// with [`crat_dispatcher::ACCEPTED_EXCHANGES_INITIAL`] exchanges at once, which the
    /// dispatcher raises for clients.
    pub(crate) async fn bind_dispatcher(
        &self,
        addr: SocketAddr,
        key: &SigningKey,
    ) -> anyhow::Result<AnyTransport> {
        let initial = Some(crat_dispatcher::ACCEPTED_EXCHANGES_INITIAL);
        self.bind_direct(addr, key, initial).await
    }

    async fn bind_direct(
        &self,
        addr: SocketAddr,
        key: &SigningKey,
        streams_initial: Option<u32>,
    ) -> anyhow::Result<AnyTransport> {
        match self.kind {
            TransportKind::Iroh => {
                let config = IrohConfig {
                    relay_urls: Vec::new(),
                    relay_qad_port: None,
                    streams_initial,
                    ..self.iroh.clone()
                };
                Ok(AnyTransport::iroh(addr, key, config).await?)
            }
            _ => {
                let config = QuicConfig {
                    streams_accepted_initial: streams_initial,
                    ..QuicConfig::default()
                };
                Ok(AnyTransport::quic(addr, key, config)?)
            }
        }
    }
}

/// Every certificate of a PEM file.
pub(crate) fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate (PEM)", path.display());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(transport: Option<&str>, relays: &[&str]) -> TransportArgs {
        TransportArgs {
            transport: transport.map(|t| t.parse().unwrap()),
            relays: relays.iter().map(ToString::to_string).collect(),
            ..TransportArgs::default()
        }
    }

    #[test]
    fn quic_by_default_and_relays_need_iroh() {
        let c = TransportChoice::resolve(args(None, &[]), NetworkSection::default()).unwrap();
        assert_eq!(c.kind(), TransportKind::Quic);
        let e = TransportChoice::resolve(
            args(None, &["http://127.0.0.1:3340/"]),
            NetworkSection::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--transport iroh"), "{e}");
    }

    #[test]
    fn flags_override_the_file_and_qad_follows_relays() {
        let file = NetworkSection {
            transport: Some(TransportKind::Iroh),
            relays: Some(vec!["http://192.0.2.1:3340/".into()]),
            ..NetworkSection::default()
        };
        let c = TransportChoice::resolve(args(None, &["http://192.0.2.2:3340/"]), file).unwrap();
        assert_eq!(c.kind(), TransportKind::Iroh);
        assert_eq!(c.iroh.relay_urls.len(), 1);
        assert_eq!(c.iroh.relay_urls[0].to_string(), "http://192.0.2.2:3340/");
        assert_eq!(c.iroh.relay_qad_port, Some(DEFAULT_QAD_PORT));
        let bare =
            TransportChoice::resolve(args(Some("iroh"), &[]), NetworkSection::default()).unwrap();
        assert!(!bare.has_relays());
        assert_eq!(bare.iroh.relay_qad_port, None);
    }

    #[test]
    fn bad_relay_urls_and_certificates_are_refused() {
        let e = TransportChoice::resolve(
            args(Some("iroh"), &["not a url"]),
            NetworkSection::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("relay URL"), "{e:#}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "nothing here\n").unwrap();
        let e = read_certs(&path).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
    }
}
