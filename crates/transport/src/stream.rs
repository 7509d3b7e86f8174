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
    /// At most `max` bytes as quinn holds them (no zero-filled buffer to copy them into),
    /// or `None` at the end of the stream.
    fn read_chunk(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<bytes::Bytes>, TransportError>> + Send;
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
    // Filled from the stream's chunks as they come: zero-filling it first was a pass over
    // every byte of a large frame (a detector's 1.2 MB input) for nothing.
    let total = LEN_PREFIX_BYTES + len;
    let mut buf = Vec::with_capacity(total);
    buf.extend_from_slice(&prefix);
    while buf.len() < total {
        match recv.read_chunk(total - buf.len()).await? {
            Some(chunk) => buf.extend_from_slice(&chunk),
            None => {
                return Err(FrameError::Truncated {
                    expected: len as u64,
                    got: (buf.len() - LEN_PREFIX_BYTES) as u64,
                }
                .into());
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A receiving half that hands out `chunks` in order, then the end of the stream.
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
        stopped: bool,
    }

    impl Chunks {
        fn new(bytes: &[u8], chunk: usize) -> Self {
            Self {
                chunks: bytes.chunks(chunk).map(<[u8]>::to_vec).collect(),
                stopped: false,
            }
        }

        fn take(&mut self, max: usize) -> Option<Vec<u8>> {
            let mut chunk = self.chunks.pop_front()?;
            if chunk.len() > max {
                self.chunks.push_front(chunk.split_off(max));
            }
            Some(chunk)
        }
    }

    impl RecvHalf for Chunks {
        async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
            let mut filled = 0;
            while filled < buf.len() {
                let chunk = self.take(buf.len() - filled).ok_or(FrameError::Truncated {
                    expected: buf.len() as u64,
                    got: filled as u64,
                })?;
                buf[filled..filled + chunk.len()].copy_from_slice(&chunk);
                filled += chunk.len();
            }
            Ok(())
        }

        async fn read_chunk(&mut self, max: usize) -> Result<Option<bytes::Bytes>, TransportError> {
            Ok(self.take(max).map(bytes::Bytes::from))
        }

        async fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>, TransportError> {
            Ok(self.take(buf.len()).map(|chunk| {
                buf[..chunk.len()].copy_from_slice(&chunk);
                chunk.len()
            }))
        }

        fn stop(&mut self) {
            self.stopped = true;
        }
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    fn read_in(bytes: &[u8], chunk: usize) -> (Result<Frame, TransportError>, bool) {
        let mut recv = Chunks::new(bytes, chunk);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let read = rt.block_on(read_frame(&mut recv, 1 << 20));
        (read, recv.stopped)
    }

    #[test]
    fn a_frame_in_chunks_of_any_size_reads_back_whole() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in [1, 3, 4, 5, 1000, 10_004, 20_000] {
            let (read, stopped) = read_in(&frame(&body), chunk);
            assert_eq!(read.unwrap().body(), &body[..], "chunks of {chunk}");
            assert!(!stopped);
        }
    }

    #[test]
    fn a_stream_that_ends_inside_the_body_is_truncated_with_what_came() {
        let bytes = frame(&[9; 100]);
        for chunk in [1, 7, 64] {
            let (read, _) = read_in(&bytes[..LEN_PREFIX_BYTES + 37], chunk);
            match read {
                Err(TransportError::Frame(FrameError::Truncated { expected, got })) => {
                    assert_eq!((expected, got), (100, 37), "chunks of {chunk}");
                }
                other => panic!("chunks of {chunk}: {other:?}"),
            }
        }
    }

    #[test]
    fn bytes_after_the_frame_or_a_prefix_above_the_cap_stop_the_stream() {
        let mut bytes = frame(&[1, 2, 3]);
        bytes.push(0);
        let (read, stopped) = read_in(&bytes, 2);
        assert!(
            matches!(read, Err(TransportError::Frame(FrameError::Trailing(1)))),
            "{read:?}"
        );
        assert!(stopped);
        let (read, stopped) = read_in(&((1u32 << 20) + 1).to_le_bytes(), 4);
        assert!(
            matches!(
                read,
                Err(TransportError::Frame(FrameError::TooLarge { .. }))
            ),
            "{read:?}"
        );
        assert!(stopped);
    }
}
