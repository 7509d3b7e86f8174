//! The [`Client`]: one dispatcher connection, the node connection pool
//! ([`pool`](crate::pool)), and the calls that go to the dispatcher (upload, quote, balance,
//! key status; `deploy` is written beside [`Deployment`](crate::Deployment)).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crat_core::id::{KeyId, ModelId, NodeId, PeerAddr, SdkKey};
use crat_core::money::Credits;
use crat_core::pricing::{DeployPlan, PriceQuote};
use crat_core::wire::{CHUNK_BYTES_MAX, ClientCall, ClientRequest, DispatcherResponse, KeyInfo};
use crat_transport::{ConnectionExt, Conversation, Transport};
use ed25519_dalek::SigningKey;
use futures_util::StreamExt;
use futures_util::stream;

use crate::config::ClientConfig;
use crate::error::{Error, unexpected};
use crate::pool::{NodePool, breaks_connection};
use crate::stats::{Counters, Stats};

/// How far an upload has come; passed to the progress callback of
/// [`Client::upload_model`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadProgress {
    /// The model being uploaded.
    pub model: ModelId,
    /// Bytes the dispatcher has acknowledged (including those it had before a resume).
    pub acked_bytes: u64,
    /// The model's size.
    pub total_bytes: u64,
    /// Where this upload resumed: bytes the dispatcher already had when it began.
    pub resumed_from_bytes: u64,
    /// True when the dispatcher already stored the model and nothing was sent.
    pub already_stored: bool,
}

pub(crate) struct Inner<T: Transport> {
    pub(crate) transport: T,
    /// The transport's identity key: it signs acknowledgements.
    pub(crate) identity: SigningKey,
    dispatcher_addr: PeerAddr,
    pub(crate) dispatcher_id: NodeId,
    key: SdkKey,
    pub(crate) config: ClientConfig,
    dispatcher: tokio::sync::Mutex<Option<(u64, T::Connection)>>,
    dispatcher_generation: AtomicU64,
    /// Which of the dispatcher's addresses to dial first ([`ClientConfig::dispatcher_alternates`]).
    dispatcher_turn: std::sync::atomic::AtomicUsize,
    pub(crate) pool: NodePool<T::Connection>,
    pub(crate) stats: Counters,
}

/// A connection to the network through one dispatcher, authenticated by an SDK key.
///
/// Cheap to clone: clones share the dispatcher connection, the node connection pool and the
/// counters. A lost dispatcher connection is re-established by the next call.
pub struct Client<T: Transport> {
    pub(crate) inner: Arc<Inner<T>>,
}

impl<T: Transport> Clone for Client<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Transport> std::fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("dispatcher", &self.inner.dispatcher_addr)
            .field("key", &self.inner.key.id)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Client<T> {
    /// Connects to the dispatcher at `dispatcher_addr`, which must prove identity
    /// `dispatcher_id`, with default settings.
    pub async fn connect(
        transport: T,
        identity: SigningKey,
        dispatcher_addr: PeerAddr,
        dispatcher_id: NodeId,
        key: SdkKey,
    ) -> Result<Self, Error> {
        Self::connect_with(
            transport,
            identity,
            dispatcher_addr,
            dispatcher_id,
            key,
            ClientConfig::default(),
        )
        .await
    }

    /// [`Client::connect`] with explicit settings. `identity` is the transport's identity
    /// key: the client signs its acknowledgements of nodes' work with it (a node accepts a
    /// ticket only from the identity that leased it).
    pub async fn connect_with(
        transport: T,
        identity: SigningKey,
        dispatcher_addr: PeerAddr,
        dispatcher_id: NodeId,
        key: SdkKey,
        config: ClientConfig,
    ) -> Result<Self, Error> {
        if NodeId::from_key(&identity.verifying_key()) != transport.local_id() {
            return Err(Error::Protocol(
                "the identity key is not the transport's identity".into(),
            ));
        }
        let client = Self {
            inner: Arc::new(Inner {
                transport,
                identity,
                dispatcher_addr,
                dispatcher_id,
                key,
                pool: NodePool::new(config.node_connections_max),
                config,
                dispatcher: tokio::sync::Mutex::new(None),
                dispatcher_generation: AtomicU64::new(1),
                dispatcher_turn: std::sync::atomic::AtomicUsize::new(0),
                stats: Counters::default(),
            }),
        };
        client.dispatcher_conn().await?;
        Ok(client)
    }

    /// The settings in use.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The transport endpoint (its identity is the client's QUIC identity).
    pub fn transport(&self) -> &T {
        &self.inner.transport
    }

    /// The id of the SDK key the client authenticates with.
    pub fn key_id(&self) -> KeyId {
        self.inner.key.id
    }

    /// The nodes this client is connected to now, in id order, each with the path its
    /// packets take: [`PathKind::Direct`](crat_transport::PathKind::Direct), or
    /// [`PathKind::Relayed`](crat_transport::PathKind::Relayed) through a relay on a transport
    /// that has them (iroh) until hole punching finds a direct one.
    pub fn node_paths(&self) -> Vec<(NodeId, crat_transport::PathKind)> {
        self.inner.pool.paths()
    }

    /// Counters summed over every deployment used through this client.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// The dispatcher's address of turn `turn`: its address, then its alternates
    /// ([`ClientConfig::dispatcher_alternates`]).
    fn dispatcher_addr_at(&self, turn: usize) -> &PeerAddr {
        let inner = &self.inner;
        match turn % (inner.config.dispatcher_alternates.len() + 1) {
            0 => &inner.dispatcher_addr,
            i => &inner.config.dispatcher_alternates[i - 1],
        }
    }

    /// The pooled dispatcher connection, dialled if there is none (the dispatcher's addresses
    /// in turn, from the last that answered, until one does); `fresh` if just dialled.
    async fn dispatcher_conn(&self) -> Result<(u64, T::Connection, bool), Error> {
        let inner = &self.inner;
        let mut slot = inner.dispatcher.lock().await;
        if let Some((generation, conn)) = &*slot {
            return Ok((*generation, conn.clone(), false));
        }
        let first = inner.dispatcher_turn.load(Ordering::Relaxed);
        let mut failure = None;
        for turn in first..=first + inner.config.dispatcher_alternates.len() {
            let addr = self.dispatcher_addr_at(turn);
            let dialled = tokio::time::timeout(
                inner.config.connect_timeout(),
                inner.transport.connect(addr, &inner.dispatcher_id),
            )
            .await;
            let e = match dialled {
                Ok(Ok(conn)) => {
                    inner.dispatcher_turn.store(turn, Ordering::Relaxed);
                    let generation = inner.dispatcher_generation.fetch_add(1, Ordering::Relaxed);
                    *slot = Some((generation, conn.clone()));
                    return Ok((generation, conn, true));
                }
                Ok(Err(e)) => Error::from(e),
                Err(_) => Error::Timeout(format!(
                    "connecting to the dispatcher at {addr} took over {} ms",
                    inner.config.connect_timeout_ms
                )),
            };
            failure = Some(e);
        }
        Err(failure.expect("at least one address is tried"))
    }

    /// Forgets dispatcher connection `generation` (it died); the next is dialled from the
    /// dispatcher's next address, if it has several.
    async fn drop_dispatcher(&self, generation: u64) {
        let mut slot = self.inner.dispatcher.lock().await;
        if matches!(&*slot, Some((g, _)) if *g == generation) {
            *slot = None;
            self.inner.dispatcher_turn.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One dispatcher exchange. A refusal becomes its typed error. A call that fails on a
    /// reused connection which turns out to be dead is repeated once on a new connection,
    /// except `Deploy` (not idempotent).
    pub(crate) async fn call(&self, call: ClientCall) -> Result<DispatcherResponse, Error> {
        let inner = &self.inner;
        let may_repeat = !matches!(call, ClientCall::Deploy { .. });
        let request = ClientRequest {
            key: inner.key.clone(),
            call,
        };
        let mut repeated = false;
        loop {
            let (generation, conn, fresh) = self.dispatcher_conn().await?;
            let answer = tokio::time::timeout(
                inner.config.dispatcher_timeout(),
                conn.call::<_, DispatcherResponse>(
                    &request,
                    Conversation::ClientDispatcher,
                    inner.config.frame_limits,
                ),
            )
            .await;
            match answer {
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "the dispatcher did not answer within {} ms",
                        inner.config.dispatcher_timeout_ms
                    )));
                }
                Ok(Err(e)) => {
                    if breaks_connection(&e) {
                        self.drop_dispatcher(generation).await;
                        if !fresh && may_repeat && !repeated {
                            tracing::debug!(error = %e, "dispatcher connection lost; redialling");
                            repeated = true;
                            continue;
                        }
                    }
                    return Err(e.into());
                }
                Ok(Ok(DispatcherResponse::Error(e))) => return Err(Error::from_wire(e)),
                Ok(Ok(answer)) => return Ok(answer),
            }
        }
    }

    /// Uploads a model (ONNX bytes) and returns its id (the blake3 hash of the bytes).
    ///
    /// Resumes where an earlier, interrupted upload of the same bytes stopped; returns at once
    /// if the dispatcher already stores the model. Chunks of the size the dispatcher asks for
    /// are sent at chunk-aligned offsets, [`ClientConfig::upload_window`] at a time;
    /// `progress` is called once when the upload begins and after every acknowledged chunk.
    pub async fn upload_model(
        &self,
        model: &[u8],
        mut progress: impl FnMut(UploadProgress),
    ) -> Result<ModelId, Error> {
        let uploaded = self
            .upload_model_with(model, |p| {
                progress(p);
                ControlFlow::Continue(())
            })
            .await?;
        // This `progress` never stops it.
        uploaded.ok_or_else(|| Error::Internal("the upload stopped unasked".into()))
    }

    /// [`Client::upload_model`] with a `progress` that may stop the upload: when it returns
    /// [`ControlFlow::Break`], no further chunk is sent nor the upload finished, and this
    /// returns `Ok(None)`. What the dispatcher acknowledged stays there: a later upload of
    /// the same bytes resumes from it.
    pub async fn upload_model_with(
        &self,
        model: &[u8],
        mut progress: impl FnMut(UploadProgress) -> ControlFlow<()>,
    ) -> Result<Option<ModelId>, Error> {
        let id = ModelId::of_bytes(model);
        let total = model.len() as u64;
        let begin = self
            .call(ClientCall::UploadBegin {
                model: id,
                total_bytes: total,
            })
            .await?;
        let (received, chunk) = match begin {
            DispatcherResponse::ModelStored { model, .. } if model == id => {
                // Stored already: there is nothing left to stop.
                let _ = progress(UploadProgress {
                    model: id,
                    acked_bytes: total,
                    total_bytes: total,
                    resumed_from_bytes: total,
                    already_stored: true,
                });
                return Ok(Some(id));
            }
            DispatcherResponse::Upload {
                received_bytes,
                total_bytes,
                chunk_bytes_max,
            } if total_bytes == total && chunk_bytes_max > 0 => (
                received_bytes.min(total),
                u64::from(chunk_bytes_max.min(CHUNK_BYTES_MAX)),
            ),
            other => return Err(unexpected("UploadBegin", &other)),
        };
        // Chunks start at multiples of the chunk size; re-sending a few received bytes is
        // harmless (the dispatcher accepts any chunk-aligned write).
        let start = received - received % chunk;
        let mut acked = start;
        let report = |acked| UploadProgress {
            model: id,
            acked_bytes: acked,
            total_bytes: total,
            resumed_from_bytes: start,
            already_stored: false,
        };
        if progress(report(acked)).is_break() {
            return Ok(None);
        }
        // `chunk` ≤ CHUNK_BYTES_MAX, so it fits in usize.
        let offsets = (start..total).step_by(chunk as usize);
        let mut acks = stream::iter(offsets)
            .map(|offset| async move {
                let end = offset.saturating_add(chunk).min(total);
                // Offsets are below `model.len()`, a usize.
                let data = model[offset as usize..end as usize].to_vec();
                match self
                    .call(ClientCall::UploadChunk {
                        model: id,
                        offset,
                        data,
                    })
                    .await?
                {
                    DispatcherResponse::Upload { .. } => Ok(end - offset),
                    other => Err(unexpected("UploadChunk", &other)),
                }
            })
            .buffer_unordered(self.inner.config.upload_window.max(1));
        while let Some(bytes) = acks.next().await {
            acked += bytes?;
            if progress(report(acked)).is_break() {
                // Dropping the stream gives up the chunks in flight.
                return Ok(None);
            }
        }
        drop(acks);
        match self.call(ClientCall::UploadFinish { model: id }).await? {
            DispatcherResponse::ModelStored { model, .. } if model == id => Ok(Some(id)),
            other => Err(unexpected("UploadFinish", &other)),
        }
    }

    /// Reads a model file and uploads it ([`Client::upload_model`]).
    pub async fn upload_model_file(
        &self,
        path: impl AsRef<Path>,
        progress: impl FnMut(UploadProgress),
    ) -> Result<ModelId, Error> {
        let path = path.as_ref().to_owned();
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))??;
        self.upload_model(&bytes, progress).await
    }

    /// What deploying `model` under `plan` would cost.
    pub async fn quote(&self, model: ModelId, plan: DeployPlan) -> Result<PriceQuote, Error> {
        match self.call(ClientCall::Quote { model, plan }).await? {
            DispatcherResponse::Quote(q) => Ok(q),
            other => Err(unexpected("Quote", &other)),
        }
    }

    /// Makes a model this account uploaded public, so that any account may deploy it by its
    /// id, or private again. Models are otherwise usable only by the accounts that uploaded
    /// their bytes ([`Error::NotFound`] for anyone else, also here).
    pub async fn set_model_public(&self, model: ModelId, public: bool) -> Result<(), Error> {
        match self
            .call(ClientCall::SetModelPublic { model, public })
            .await?
        {
            DispatcherResponse::Ok => Ok(()),
            other => Err(unexpected("SetModelPublic", &other)),
        }
    }

    /// Credits left on the account.
    pub async fn balance(&self) -> Result<Credits, Error> {
        match self.call(ClientCall::Balance).await? {
            DispatcherResponse::Balance(c) => Ok(c),
            other => Err(unexpected("Balance", &other)),
        }
    }

    /// Whether `endpoint` may use the network's relays (what `crat relay` asks when an
    /// endpoint connects to it).
    pub async fn relay_access(&self, endpoint: NodeId) -> Result<bool, Error> {
        match self.call(ClientCall::RelayAccess { endpoint }).await? {
            DispatcherResponse::RelayAccess { allowed } => Ok(allowed),
            other => Err(unexpected("RelayAccess", &other)),
        }
    }

    /// The status of the key this client uses.
    pub async fn key_status(&self) -> Result<KeyInfo, Error> {
        match self.call(ClientCall::KeyStatus).await? {
            DispatcherResponse::Key(k) => Ok(k),
            other => Err(unexpected("KeyStatus", &other)),
        }
    }
}
