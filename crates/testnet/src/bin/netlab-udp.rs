//! UDP probes the NAT tests run inside the lab's namespaces (`crat_testnet::netlab`):
//!
//! - `netlab-udp echo PORT`: answers every datagram with the address it came from, as seen
//!   here (`observed IP:PORT`), until killed;
//! - `netlab-udp probe PORT TARGET…`: from local `PORT`, asks each echo `TARGET` how it sees
//!   this socket and prints `TARGET OBSERVED` per line;
//! - `netlab-udp listen PORT MS [PEER]`: (first sends one datagram to `PEER`, opening the way
//!   out, then) waits `MS` ms for a datagram on `PORT`; prints `got FROM` or `none`;
//! - `netlab-udp send PORT TARGET`: sends one datagram from local `PORT` to `TARGET`.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn socket(port: &str) -> Result<UdpSocket, String> {
    let port: u16 = port.parse().map_err(|e| format!("port {port}: {e}"))?;
    UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("binding port {port}: {e}"))
}

fn addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|e| format!("address {text}: {e}"))
}

fn run(args: &[String]) -> Result<(), String> {
    let mut buf = [0u8; 1500];
    match args {
        [verb, port] if verb == "echo" => {
            let s = socket(port)?;
            loop {
                let (_, from) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
                let _ = s.send_to(format!("observed {from}").as_bytes(), from);
            }
        }
        [verb, port, targets @ ..] if verb == "probe" => {
            let s = socket(port)?;
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .map_err(|e| e.to_string())?;
            for target in targets {
                let to = addr(target)?;
                let mut observed = None;
                for _ in 0..6 {
                    s.send_to(b"probe", to).map_err(|e| e.to_string())?;
                    if let Ok((n, from)) = s.recv_from(&mut buf)
                        && from == to
                    {
                        observed = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                        break;
                    }
                }
                let observed = observed.ok_or_else(|| format!("no answer from {to}"))?;
                let observed = observed.strip_prefix("observed ").unwrap_or(&observed);
                println!("{to} {observed}");
            }
            Ok(())
        }
        [verb, port, ms, peer @ ..] if verb == "listen" && peer.len() <= 1 => {
            let s = socket(port)?;
            if let Some(peer) = peer.first() {
                s.send_to(b"opening", addr(peer)?)
                    .map_err(|e| e.to_string())?;
            }
            let ms: u64 = ms.parse().map_err(|e| format!("{ms} ms: {e}"))?;
            s.set_read_timeout(Some(Duration::from_millis(ms)))
                .map_err(|e| e.to_string())?;
            match s.recv_from(&mut buf) {
                Ok((_, from)) => println!("got {from}"),
                Err(_) => println!("none"),
            }
            Ok(())
        }
        [verb, port, target] if verb == "send" => {
            let s = socket(port)?;
            s.send_to(b"hello", addr(target)?)
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        _ => Err(format!(
            "usage: netlab-udp echo PORT | probe PORT TARGET… | listen PORT MS [PEER] | send PORT TARGET; got {args:?}"
        )),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netlab-udp: {e}");
            ExitCode::FAILURE
        }
    }
}
