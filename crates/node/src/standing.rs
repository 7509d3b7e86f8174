//! The node operator's view: asking the dispatcher how this node stands
//! ([`NodeRequest::Standing`]): what it proved, the running round so far (uptime,
//! commitment, estimated rank and bonus, tasks served) and its earnings of closed rounds.
//!
//! A running [`Node`](crate::runtime::Node) asks on its own connection
//! ([`Node::standing`](crate::runtime::Node::standing)); an operator's tool that holds the
//! node's key asks on a connection of its own, without registering ([`ask_standing`]), which
//! is what `crat node status` does while the node runs.

use crat_core::id::{NodeId, PeerAddr};
use crat_core::wire::{
    DispatcherReply, NodeRequest, NodeStanding, Reach, STANDING_ROUNDS_MAX, WireError,
};
use crat_transport::{Connection, ConnectionExt, Conversation, FrameLimits, Transport};

/// Why a standing query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StandingError {
    /// More closed rounds were asked for than one answer carries.
    #[error("{asked} rounds asked; at most {STANDING_ROUNDS_MAX}")]
    TooManyRounds {
        /// Rounds asked for.
        asked: u32,
    },
    /// The node has no connection to the dispatcher now, or it failed.
    #[error("transport: {0}")]
    Transport(#[from] crat_transport::TransportError),
    /// The dispatcher refused the query.
    #[error("refused: {0}")]
    Refused(WireError),
    /// The dispatcher answered something else, or about another node.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// Asks on `conn` (whose identity is node `node`) for its standing with the last `rounds`
/// closed rounds (at most [`STANDING_ROUNDS_MAX`]).
pub async fn query_standing<C: Connection>(
    conn: &C,
    node: NodeId,
    rounds: u32,
    limits: FrameLimits,
) -> Result<NodeStanding, StandingError> {
    if rounds > STANDING_ROUNDS_MAX {
        return Err(StandingError::TooManyRounds { asked: rounds });
    }
    match conn
        .call::<_, DispatcherReply>(
            &NodeRequest::Standing { rounds },
            Conversation::NodeDispatcher,
            limits,
        )
        .await?
    {
        DispatcherReply::Standing(s) if s.node == node => Ok(*s),
        DispatcherReply::Standing(s) => Err(StandingError::Unexpected(format!(
            "the standing of node {} instead of {node}",
            s.node
        ))),
        DispatcherReply::Error(e) => Err(StandingError::Refused(e)),
        other => Err(StandingError::Unexpected(format!("{other:?}"))),
    }
}

/// Connects `transport` (its identity: the node's key, `node`) to the dispatcher and asks for
/// the node's standing without registering: the node may be running elsewhere with the same
/// key, and is not disturbed.
pub async fn ask_standing<T: Transport>(
    transport: &T,
    node: NodeId,
    dispatcher_addr: &PeerAddr,
    dispatcher_id: &NodeId,
    rounds: u32,
    limits: FrameLimits,
) -> Result<NodeStanding, StandingError> {
    if rounds > STANDING_ROUNDS_MAX {
        return Err(StandingError::TooManyRounds { asked: rounds });
    }
    let conn = transport.connect(dispatcher_addr, dispatcher_id).await?;
    let standing = query_standing(&conn, node, rounds, limits).await;
    conn.close("standing answered");
    standing
}

/// Connects `transport` (any identity) to the dispatcher and asks for the standing of the
/// node whose key is `node_key`, in a query signed with it at `now_s`
/// ([`NodeRequest::StandingOf`]): what `crat node status` does, from an endpoint of its own,
/// while the node may be running with that key (an iroh endpoint id cannot be on two
/// endpoints at once).
pub async fn ask_standing_signed<T: Transport>(
    transport: &T,
    node_key: &ed25519_dalek::SigningKey,
    dispatcher_addr: &PeerAddr,
    dispatcher_id: &NodeId,
    rounds: u32,
    now_s: u64,
    limits: FrameLimits,
) -> Result<NodeStanding, StandingError> {
    if rounds > STANDING_ROUNDS_MAX {
        return Err(StandingError::TooManyRounds { asked: rounds });
    }
    let node = NodeId::from_key(&node_key.verifying_key());
    let query = crat_core::sign::Signed::sign(
        crat_core::sign::StandingQuery {
            node,
            rounds,
            issued_at_s: now_s,
        },
        node_key,
    );
    let conn = transport.connect(dispatcher_addr, dispatcher_id).await?;
    let reply = conn
        .call::<_, DispatcherReply>(
            &NodeRequest::StandingOf(Box::new(query)),
            Conversation::NodeDispatcher,
            limits,
        )
        .await;
    conn.close("standing answered");
    match reply? {
        DispatcherReply::Standing(s) if s.node == node => Ok(*s),
        DispatcherReply::Standing(s) => Err(StandingError::Unexpected(format!(
            "the standing of node {} instead of {node}",
            s.node
        ))),
        DispatcherReply::Error(e) => Err(StandingError::Refused(e)),
        other => Err(StandingError::Unexpected(format!("{other:?}"))),
    }
}

/// Connects `transport` to the dispatcher and asks whether it reaches this endpoint directly
/// ([`NodeRequest::Reach`]): the address its packets come from and whether the dispatcher's
/// dial from another port to that address got through (what `crat node doctor` reports). The
/// transport must accept incoming connections meanwhile (an iroh or QUIC endpoint does).
pub async fn ask_reach<T: Transport>(
    transport: &T,
    dispatcher_addr: &PeerAddr,
    dispatcher_id: &NodeId,
    limits: FrameLimits,
) -> Result<Reach, StandingError> {
    let conn = transport.connect(dispatcher_addr, dispatcher_id).await?;
    let reach = query_reach(&conn, limits).await;
    conn.close("reach answered");
    reach
}

/// Asks on `conn` whether the dispatcher reaches its peer directly ([`NodeRequest::Reach`]).
pub async fn query_reach<C: Connection>(
    conn: &C,
    limits: FrameLimits,
) -> Result<Reach, StandingError> {
    match conn
        .call::<_, DispatcherReply>(&NodeRequest::Reach, Conversation::NodeDispatcher, limits)
        .await?
    {
        DispatcherReply::Reach(r) => Ok(r),
        DispatcherReply::Error(e) => Err(StandingError::Refused(e)),
        other => Err(StandingError::Unexpected(format!("{other:?}"))),
    }
}

/// The standing as JSON, with ids in hex and amounts in integer µUSD and µCRAT, named as in
/// `docs/economics.md`: what `crat node status --json` prints and the dashboard reads.
pub fn to_json(s: &NodeStanding) -> serde_json::Value {
    let r = &s.round;
    serde_json::json!({
        "node": s.node.to_string(),
        "online": s.online,
        "proven": {
            "rating": s.proven.rating.get(),
            "mining_income_usd_micro_per_day": s.proven.mining_income_usd_micro_per_day.get(),
            "cpu": s.proven.cpu,
            "gpus": s.proven.gpus.iter().map(|g| serde_json::json!({
                "device": g.device,
                "name": g.name,
                "rating": g.rating.get(),
            })).collect::<Vec<_>>(),
            "challenged": s.proven.challenged,
        },
        "challenges_passed": s.challenges_passed,
        "challenges_failed": s.challenges_failed,
        "crat_micro": s.crat_micro.get(),
        "streak": s.streak,
        "uptime_total_s": s.uptime_total_s,
        "direct": s.direct,
        "round": {
            "index": r.index,
            "start_s": r.start_s,
            "length_s": r.length_s,
            "elapsed_s": r.elapsed_s,
            "uptime_s": r.uptime_s,
            "committed": r.committed,
            "eligible": r.eligible,
            "rank": r.rank,
            "ranked": r.ranked,
            "paid_ranks": r.paid_ranks,
            "guaranteed_usd_micro": r.guaranteed_usd_micro.get(),
            "bonus_usd_micro": r.bonus_usd_micro.get(),
            "tasks_served": r.tasks_served,
        },
        "closed": s.closed.iter().map(|e| serde_json::json!({
            "index": e.index,
            "start_s": e.start_s,
            "uptime_s": e.uptime_s,
            "committed": e.committed,
            "rank": e.rank,
            "guaranteed_usd_micro": e.guaranteed_usd_micro.get(),
            "bonus_usd_micro": e.bonus_usd_micro.get(),
            "crat_issued_micro": e.crat_issued_micro.get(),
            "crat_slashed_micro": e.crat_slashed_micro.get(),
            "crat_end_micro": e.crat_end_micro.get(),
        })).collect::<Vec<_>>(),
    })
}
