//! Uploads against the fake dispatcher: chunking, progress, resume, already-stored models.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use crat_core::id::ModelId;
use crat_sdk::{Error, UploadProgress};
use crat_transport::memory::MemoryNetwork;
use std::ops::ControlFlow;

const CHUNK: u32 = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_in_chunks_with_progress_then_already_stored() {
    let net = MemoryNetwork::new();
    let clock = clock();
    let fake = start_dispatcher(&net, clock.clone(), CHUNK);
    let client = client(&net, "mem:client", sdk_key(), config(clock))
        .await
        .unwrap();

    // From a file, as an integrator would.
    let path = std::env::temp_dir().join(format!("crat-sdk-upload-{}.onnx", std::process::id()));
    std::fs::write(&path, TINY).unwrap();
    let mut seen: Vec<UploadProgress> = Vec::new();
    let id = client
        .upload_model_file(&path, |p| seen.push(p))
        .await
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(id, ModelId::of_bytes(TINY));

    let total = TINY.len() as u64;
    let chunks = total.div_ceil(u64::from(CHUNK)) as usize;
    // One report when the upload begins, then one per acknowledged chunk, never going back.
    assert_eq!(seen.len(), chunks + 1);
    assert_eq!(seen[0].acked_bytes, 0);
    assert!(seen.windows(2).all(|w| w[0].acked_bytes < w[1].acked_bytes));
    assert_eq!(seen.last().unwrap().acked_bytes, total);
    assert!(
        seen.iter()
            .all(|p| p.total_bytes == total && !p.already_stored)
    );

    {
        let s = fake.state();
        assert_eq!(s.models[&id], TINY, "stored bytes are the model");
        let mut offsets = s.chunk_log.clone();
        offsets.sort_unstable();
        let want: Vec<u64> = (0..chunks as u64).map(|i| i * u64::from(CHUNK)).collect();
        assert_eq!(offsets, want, "every chunk once, at aligned offsets");
    }

    // The same bytes again: answered at once, nothing sent.
    let mut again = Vec::new();
    assert_eq!(
        client.upload_model(TINY, |p| again.push(p)).await.unwrap(),
        id
    );
    assert_eq!(again.len(), 1);
    assert!(again[0].already_stored && again[0].acked_bytes == total);
    assert_eq!(fake.state().chunk_log.len(), chunks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_upload_resumes_where_the_dispatcher_stopped() {
    let net = MemoryNetwork::new();
    let clock = clock();
    let fake = start_dispatcher(&net, clock.clone(), CHUNK);
    let mut config = config(clock);
    config.upload_window = 4;
    let client = client(&net, "mem:client", sdk_key(), config).await.unwrap();
    let id = ModelId::of_bytes(TINY);

    // The chunk at 10 KiB fails once: the upload stops with the server's error.
    fake.state().fail_chunks.insert(10 * u64::from(CHUNK));
    let err = client.upload_model(TINY, |_| {}).await.unwrap_err();
    assert!(
        matches!(err, Error::Internal(ref m) if m.contains("hiccup")),
        "{err}"
    );
    // The chunks sent before the failing one (up to the window of 4) may still be landing
    // when the error comes back: wait for them (bounded) before reading the resume point.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let (have, sent_first) = loop {
        let (have, sent) = {
            let s = fake.state();
            (
                s.uploads[&id].contiguous(u64::from(CHUNK)),
                s.chunk_log.len(),
            )
        };
        if have >= 10 * u64::from(CHUNK) || tokio::time::Instant::now() >= deadline {
            break (have, sent);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(
        have >= 10 * u64::from(CHUNK),
        "chunks before the failure arrived"
    );

    let mut seen = Vec::new();
    assert_eq!(
        client.upload_model(TINY, |p| seen.push(p)).await.unwrap(),
        id
    );
    assert_eq!(seen[0].resumed_from_bytes, have);
    assert_eq!(seen[0].acked_bytes, have);
    assert_eq!(seen.last().unwrap().acked_bytes, TINY.len() as u64);
    let s = fake.state();
    assert!(
        s.chunk_log[sent_first..].iter().all(|&o| o >= have),
        "nothing below the resume point is sent again"
    );
    assert_eq!(s.models[&id], TINY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_that_breaks_stops_the_upload_before_the_next_chunk_and_the_finish() {
    let net = MemoryNetwork::new();
    let clock = clock();
    let fake = start_dispatcher(&net, clock.clone(), CHUNK);
    let mut config = config(clock);
    config.upload_window = 4;
    let client = client(&net, "mem:client", sdk_key(), config).await.unwrap();
    let id = ModelId::of_bytes(TINY);
    let chunks = TINY.len().div_ceil(CHUNK as usize);
    assert!(chunks > 10, "the model has {chunks} chunks");

    let mut reports = 0;
    let stopped = client
        .upload_model_with(TINY, |p| {
            reports += 1;
            if p.acked_bytes >= 3 * u64::from(CHUNK) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await
        .unwrap();
    assert_eq!(stopped, None);
    assert_eq!(
        reports, 4,
        "the start and three chunks; nothing after the break"
    );
    // Only the window in flight at the break may still land; the upload was not finished.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let have = {
        let s = fake.state();
        assert!(
            s.chunk_log.len() <= 3 + 4,
            "{} chunks sent",
            s.chunk_log.len()
        );
        assert!(!s.models.contains_key(&id));
        s.uploads[&id].contiguous(u64::from(CHUNK))
    };

    // A break at the very first report sends nothing.
    let sent = fake.state().chunk_log.len();
    let again = client
        .upload_model_with(TINY, |_| ControlFlow::Break(()))
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(fake.state().chunk_log.len(), sent);

    // The next upload resumes and finishes.
    let mut seen = Vec::new();
    assert_eq!(
        client.upload_model(TINY, |p| seen.push(p)).await.unwrap(),
        id
    );
    assert_eq!(seen[0].resumed_from_bytes, have);
    assert!(!seen[0].already_stored);
    assert_eq!(fake.state().models[&id], TINY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_unauthenticated() {
    let net = MemoryNetwork::new();
    let clock = clock();
    let _fake = start_dispatcher(&net, clock.clone(), CHUNK);
    let mut key = sdk_key();
    key.secret = [0; 32];
    let client = client(&net, "mem:client", key, config(clock))
        .await
        .unwrap();
    let err = client.balance().await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
    let err = client.upload_model(TINY, |_| {}).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
}
