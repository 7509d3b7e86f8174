//! `crat relay`: the deployment's own iroh relay. Nodes and clients of an iroh network
//! (`--transport iroh --relay URL`) keep a connection to it; it carries their end-to-end
//! encrypted QUIC packets while they have no direct path, signals their hole punching, and
//! tells each its public address (QUIC address discovery, QAD, on a UDP port). It never sees
//! tensors in the clear, and the dispatcher never carries them (DESIGN.md, principle 4).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

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
}

/// The `[relay]` table: the flags of `crat relay`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RelaySection {
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) qad_port: Option<u16>,
    pub(crate) names: Option<Vec<String>>,
    pub(crate) data_dir: Option<PathBuf>,
}

pub(crate) fn run(args: RelayArgs) -> anyhow::Result<()> {
    let file = crate::net::load_config(args.config.as_deref())?.relay;
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
        let relay = Relay::spawn_http_with_qad_cert(
            listen,
            SocketAddr::new(listen.ip(), qad_port),
            cert,
            key,
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
