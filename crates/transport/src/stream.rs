//! Exchanges over a QUIC stream pair, whichever QUIC library carries it (quinn for
//! [`crate::quic`], iroh's noq for [`crate::iroh`]): reading one frame (its length checked
//! before anything is allocated, nothing accepted after it), writing one, and a request
//! paired with its answer. The transports supply only the stream calls and their errors.

use std::future::Future;
use std::time::Duration;

use crate::frame::{FrameError, LEN_PREFIX_BYTES, check_prefix};
use crate::{Frame, TransportError};

/// The receiving half of a stream, errors already mapped to [`TransportError`].
pub(crate) trait RecvHalf: Send {
    /// Fills `buf`; a stream that ends first is [`FrameError::Truncated`].
    fn read_exact(
        &mut self,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Some bytes into `buf`, or `None` at the end of the stream.
    fn read_some(
        &mut self,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<Option<usize>, TransportError>> + Send;
    /// Asks the peer to stop sending (best effort).
    fn stop(&mut self);
}

/// The sending half of a stream.
pub(crate) trait SendHalf: Send {
    /// Sends `bytes` (handed over as they are: no copy of a possibly large frame) and ends
    /// the stream.
    fn send_all_and_finish(
        &mut self,
        bytes: bytes::Bytes,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// Reads one frame from `recv`: the prefix, checked against `max` before allocating, the
/// body, then the end of the stream (anything after the frame is an error).
pub(crate) async fn read_frame<R: RecvHalf>(
    recv: &mut R,
    max: u32,
) -> Result<Frame, TransportError> {
    let mut prefix = [0u8; LEN_PREFIX_BYTES];
    recv.read_exact(&mut prefix).await?;
    let len = match check_prefix(prefix, max) {
        Ok(len) => len,
        Err(e) => {
            // Tell the peer to stop sending; nothing of the body is read or stored.
            recv.stop();
            return Err(e.into());
        }
    };
    let mut buf = vec![0u8; LEN_PREFIX_BYTES + len];
    buf[..LEN_PREFIX_BYTES].copy_from_slice(&prefix);
    recv.read_exact(&mut buf[LEN_PREFIX_BYTES..]).await?;
    let mut probe = [0u8; 1];
    match recv.read_some(&mut probe).await? {
        None => Ok(Frame::from_checked(buf)),
        Some(n) => {
            recv.stop();
            Err(FrameError::Trailing(n as u64).into())
        }
    }
}

/// Writes `frame` to `send` and ends the stream.
pub(crate) async fn write_frame<S: SendHalf>(
    send: &mut S,
    frame: Frame,
) -> Result<(), TransportError> {
    send.send_all_and_finish(bytes::Bytes::from(frame.into_vec()))
        .await
}

/// A request on a fresh stream pair, and its answer.
pub(crate) async fn exchange<S: SendHalf, R: RecvHalf>(
    send: &mut S,
    recv: &mut R,
    request: Frame,
    response_bytes_max: u32,
) -> Result<Frame, TransportError> {
    let written = match write_frame(send, request).await {
        Err(e) if !matches!(e, TransportError::Aborted(_)) => return Err(e),
        written => written,
    };
    // Even when the peer stopped reading (an oversized request, say), its answer says why;
    // report the write error only if there is no answer.
    match read_frame(recv, response_bytes_max).await {
        Ok(frame) => Ok(frame),
        Err(read) => Err(written.err().unwrap_or(read)),
    }
}

/// `f`, or [`TransportError::Timeout`] after `timeout`.
pub(crate) async fn within<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| TransportError::Timeout(timeout.as_millis() as u64))?
}
