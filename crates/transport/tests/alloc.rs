//! Hostile frames are refused without allocating beyond the cap: a counting global allocator
//! records the largest single allocation while each bad frame is parsed and decoded, over
//! the sans-IO path and over a real QUIC stream.
#![allow(unsafe_code, clippy::unwrap_used)] // the allocator shim; tests panic to report

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use crat_core::wire::{self, ClientToNode, ErrorCode, NodeToClient};
use crat_transport::frame::check_prefix;
use crat_transport::{Connection, Conversation, Frame, FrameError, FrameLimits, Transport, serve};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests in this binary share the counter; run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The largest single allocation made while `f` runs.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.store(0, Ordering::SeqCst);
    let r = f();
    (r, LARGEST.load(Ordering::SeqCst))
}

const CAP: u32 = 1 << 20;
/// Nothing parsing a hostile frame may allocate more than this (the frame itself, at most).
const BUDGET: usize = 64 << 10;

fn hostile_frames() -> Vec<(&'static str, Vec<u8>)> {
    let version = crat_core::wire::PROTOCOL_VERSION.to_le_bytes();
    // version, NodeToClient::Outputs, task id, then a varint claiming 2^32 outputs.
    let mut claims_2_32 = version.to_vec();
    claims_2_32.push(0);
    claims_2_32.extend_from_slice(&[0; 16]);
    claims_2_32.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x10]);
    let mut byte_claim = version.to_vec();
    byte_claim.push(2); // DispatcherReply::ModelChunk
    byte_claim.extend_from_slice(&[0, 0]); // offset, total
    byte_claim.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // 4 GiB of data follows...
    // NodeToClient::Outputs with one tensor whose shape claims 60,000 dimensions, each a
    // one-byte 0: 480 KB of `u64`s if decoded in full before the rank check.
    let mut deep_shape = version.to_vec();
    deep_shape.push(0);
    deep_shape.extend_from_slice(&[0; 16]);
    deep_shape.extend_from_slice(&[1, 0, 0]); // one output, empty name, f32
    deep_shape.extend_from_slice(&[0xe0, 0xd4, 0x03]); // 60,000 dimensions
    deep_shape.extend(std::iter::repeat_n(0u8, 60_000));
    let framed = |body: &[u8]| {
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(body);
        f
    };
    vec![
        ("truncated prefix", vec![8, 0]),
        ("truncated body", vec![8, 0, 0, 0, 1, 0, 0]),
        (
            "garbage",
            framed(&[0xde, 0xad, 0xbe, 0xef, 0x11, 0x22, 0x33]),
        ),
        ("trailing bytes", {
            let mut f = framed(&wire::encode(&ClientToNode::Ping).unwrap());
            f.push(0);
            f
        }),
        ("u32::MAX prefix", {
            let mut f = u32::MAX.to_le_bytes().to_vec();
            f.extend_from_slice(&[0; 8]);
            f
        }),
        (
            "8-byte body claiming 2^32 elements",
            framed(&claims_2_32[..]),
        ),
        ("byte string claiming 4 GiB", framed(&byte_claim)),
        ("a shape of 60,000 dimensions", framed(&deep_shape)),
    ]
}

#[test]
fn hostile_frames_allocate_nothing_beyond_the_cap() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    for (name, bytes) in hostile_frames() {
        let (result, largest) = largest_allocation(|| {
            let prefix: [u8; 4] = bytes.get(..4).map_or([0; 4], |p| p.try_into().unwrap());
            let _ = check_prefix(prefix, CAP);
            Frame::parse(bytes.clone(), CAP).and_then(|f| {
                f.decode::<NodeToClient>()?;
                f.decode::<ClientToNode>()?;
                f.decode::<crat_core::wire::DispatcherReply>()
            })
        });
        assert!(result.is_err(), "{name}: accepted");
        assert!(largest <= BUDGET, "{name}: allocated {largest} bytes");
    }
    // The 2^32-element claim is a decode error, not an allocation failure or panic.
    let claims = hostile_frames().remove(5).1;
    let f = Frame::parse(claims, CAP).unwrap();
    assert!(matches!(
        f.decode::<NodeToClient>(),
        Err(FrameError::Codec(_))
    ));
}

#[test]
fn hostile_frames_over_quic_get_typed_errors_without_allocation() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = quic(1);
        let addr = server.local_addr();
        tokio::spawn(async move {
            while let Ok(conn) = server.accept().await {
                tokio::spawn(serve(
                    conn,
                    Conversation::NodeDispatcher,
                    FrameLimits::default(),
                    8,
                    |_: ClientToNode| async { NodeToClient::Pong },
                ));
            }
        });
        let client = quic(2);
        let conn = client.connect(&addr, &id(1)).await.unwrap();
        for (name, bytes) in hostile_frames() {
            let raw = conn.quinn().clone();
            let ((), largest) = {
                LARGEST.store(0, Ordering::SeqCst);
                let (mut send, mut recv) = raw.open_bi().await.unwrap();
                // The server may stop reading early; that is the point.
                let _ = send.write_all(&bytes).await;
                let _ = send.finish();
                let answer = recv.read_to_end(1 << 16).await;
                let largest = LARGEST.load(Ordering::SeqCst);
                // A typed error, never a Pong, for every hostile frame.
                let answer = answer.unwrap_or_else(|e| panic!("{name}: no answer: {e}"));
                {
                    let frame = Frame::parse(answer, CAP).unwrap();
                    match frame.decode::<NodeToClient>().unwrap() {
                        NodeToClient::Error(e) => assert!(
                            matches!(e.code, ErrorCode::BadRequest | ErrorCode::TooLarge),
                            "{name}: {e:?}"
                        ),
                        other => panic!("{name}: answered {other:?}"),
                    }
                }
                ((), largest)
            };
            assert!(largest <= 4 * BUDGET, "{name}: allocated {largest} bytes");
        }
        // And the connection still serves.
        let pong: NodeToClient = crat_transport::ConnectionExt::call(
            &conn,
            &ClientToNode::Ping,
            Conversation::NodeDispatcher,
            FrameLimits::default(),
        )
        .await
        .unwrap();
        assert_eq!(pong, NodeToClient::Pong);
        let _ = conn.remote_id();
    });
}
