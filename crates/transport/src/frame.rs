//! Framing: a little-endian `u32` length prefix, then one [`wire`](crat_core::wire) message.
//!
//! Every read path checks the prefix against a cap *before* allocating the body, and every
//! decode refuses bytes after the message. The caps differ per conversation
//! ([`FrameLimits`]): control messages are small, client↔node frames carry tensors.

use crat_core::wire::{self, CodecError, Message};

/// Bytes in the length prefix.
pub const LEN_PREFIX_BYTES: usize = 4;
/// Cap for control frames (node↔dispatcher, client↔dispatcher): 1 MiB.
pub const CONTROL_BYTES_MAX: u32 = 1 << 20;
/// Default cap on tensor payload in a client↔node frame: 64 MiB.
pub const TENSOR_BYTES_MAX_DEFAULT: u32 = 64 << 20;
/// Room left in a tensor frame for everything that is not tensor data (ticket, names,
/// shapes): 1 MiB.
pub const ENVELOPE_BYTES_MAX: u32 = 1 << 20;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is above the cap for this conversation; nothing was allocated.
    #[error("frame of {len} bytes exceeds the cap of {max}")]
    TooLarge {
        /// What the prefix claims.
        len: u64,
        /// The cap.
        max: u32,
    },
    /// Fewer bytes than the prefix promised (or no complete prefix).
    #[error("frame truncated: {got} of {expected} bytes")]
    Truncated {
        /// Bytes the frame should have.
        expected: u64,
        /// Bytes present.
        got: u64,
    },
    /// Bytes after the frame.
    #[error("{0} bytes after the frame")]
    Trailing(u64),
    /// The body is not a valid message.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Which of the three conversations a connection carries; decides its frame caps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Conversation {
    /// Node ↔ dispatcher: control frames both ways.
    NodeDispatcher,
    /// Client ↔ dispatcher: control frames both ways (uploads go in chunks).
    ClientDispatcher,
    /// Client ↔ node: tensor frames both ways.
    ClientNode,
}

/// Frame caps per conversation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameLimits {
    /// Cap on control frames. Default [`CONTROL_BYTES_MAX`].
    pub control_bytes_max: u32,
    /// Cap on tensor data in one client↔node message. Default [`TENSOR_BYTES_MAX_DEFAULT`];
    /// the frame cap is this plus [`ENVELOPE_BYTES_MAX`].
    pub tensor_bytes_max: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            control_bytes_max: CONTROL_BYTES_MAX,
            tensor_bytes_max: TENSOR_BYTES_MAX_DEFAULT,
        }
    }
}

impl FrameLimits {
    /// The cap on one frame body (request or response) in `conversation`.
    pub const fn frame_bytes_max(&self, conversation: Conversation) -> u32 {
        match conversation {
            Conversation::NodeDispatcher | Conversation::ClientDispatcher => self.control_bytes_max,
            Conversation::ClientNode => self.tensor_bytes_max.saturating_add(ENVELOPE_BYTES_MAX),
        }
    }
}

/// A length-prefixed message: `[len: u32 LE][body: len bytes]`, held in one buffer so a
/// transport writes it with one call.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Vec<u8>);

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.body().len())
    }
}

/// Reads a length prefix and checks it against `max` before anything is allocated.
pub fn check_prefix(prefix: [u8; LEN_PREFIX_BYTES], max: u32) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix);
    if len > max {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max,
        });
    }
    Ok(len as usize)
}

impl Frame {
    /// Encodes `msg` into a frame, refusing a body above `max`.
    pub fn encode<M: Message>(msg: &M, max: u32) -> Result<Self, FrameError> {
        let len = wire::encoded_len(msg)?;
        if len > max as usize {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max,
            });
        }
        let mut buf = Vec::with_capacity(LEN_PREFIX_BYTES + len);
        // `len ≤ max: u32`, so the cast is exact.
        buf.extend_from_slice(&(len as u32).to_le_bytes());
        wire::encode_into(msg, &mut buf)?;
        debug_assert_eq!(buf.len(), LEN_PREFIX_BYTES + len);
        Ok(Self(buf))
    }

    /// Checks that `bytes` is exactly one frame with a body of at most `max` bytes.
    pub fn parse(bytes: Vec<u8>, max: u32) -> Result<Self, FrameError> {
        let prefix = bytes
            .first_chunk::<LEN_PREFIX_BYTES>()
            .ok_or(FrameError::Truncated {
                expected: LEN_PREFIX_BYTES as u64,
                got: bytes.len() as u64,
            })?;
        let len = check_prefix(*prefix, max)?;
        let got = bytes.len() - LEN_PREFIX_BYTES;
        if got < len {
            return Err(FrameError::Truncated {
                expected: (LEN_PREFIX_BYTES + len) as u64,
                got: bytes.len() as u64,
            });
        }
        if got > len {
            return Err(FrameError::Trailing((got - len) as u64));
        }
        Ok(Self(bytes))
    }

    /// A frame from a prefix already checked by [`check_prefix`] and a buffer that holds the
    /// prefix followed by the body; used by stream readers.
    pub(crate) fn from_checked(buf: Vec<u8>) -> Self {
        debug_assert_eq!(
            buf.len(),
            LEN_PREFIX_BYTES + u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
        );
        Self(buf)
    }

    /// The body (without the prefix).
    pub fn body(&self) -> &[u8] {
        &self.0[LEN_PREFIX_BYTES..]
    }

    /// The whole frame, prefix included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The whole frame as one buffer, prefix included, without copying.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// The body's length in bytes.
    pub fn body_len(&self) -> usize {
        self.0.len() - LEN_PREFIX_BYTES
    }

    /// This frame, unless its body is over `max` bytes ([`FrameError::TooLarge`]): for
    /// transports that hand over whole frames (in memory, forwarded) rather than read them.
    pub fn within(self, max: u32) -> Result<Self, FrameError> {
        if self.body_len() > max as usize {
            return Err(FrameError::TooLarge {
                len: self.body_len() as u64,
                max,
            });
        }
        Ok(self)
    }

    /// Decodes the body as one message of type `M`.
    pub fn decode<M: Message>(&self) -> Result<M, FrameError> {
        Ok(wire::decode(self.body())?)
    }
}

#[cfg(test)]
mod tests {
    use crat_core::wire::{ClientToNode, NodeAck};

    use super::*;

    #[test]
    fn encode_parse_decode() {
        let f = Frame::encode(&NodeAck::Ok, 16).unwrap();
        let [v0, v1] = crat_core::wire::PROTOCOL_VERSION.to_le_bytes();
        assert_eq!(f.as_bytes(), &[3, 0, 0, 0, v0, v1, 0]);
        let g = Frame::parse(f.as_bytes().to_vec(), 16).unwrap();
        assert_eq!(g.decode::<NodeAck>().unwrap(), NodeAck::Ok);
        assert_eq!(
            Frame::encode(&NodeAck::Ok, 2),
            Err(FrameError::TooLarge { len: 3, max: 2 })
        );
    }

    #[test]
    fn bad_frames() {
        let max = 1 << 20;
        // Truncated prefix and body.
        assert!(matches!(
            Frame::parse(vec![3, 0], max),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            Frame::parse(vec![3, 0, 0, 0, 1, 0], max),
            Err(FrameError::Truncated { .. })
        ));
        // Trailing bytes after the frame.
        assert_eq!(
            Frame::parse(vec![3, 0, 0, 0, 1, 0, 0, 9], max),
            Err(FrameError::Trailing(1))
        );
        // A prefix of u32::MAX is refused before anything is read or allocated.
        assert_eq!(
            check_prefix([0xff; 4], max),
            Err(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                max
            })
        );
        // Garbage body: a frame, but not a message.
        let f = Frame::parse(vec![3, 0, 0, 0, 0xde, 0xad, 0xbe], max).unwrap();
        assert!(matches!(
            f.decode::<ClientToNode>(),
            Err(FrameError::Codec(_))
        ));
    }

    #[test]
    fn caps_per_conversation() {
        let l = FrameLimits::default();
        assert_eq!(l.frame_bytes_max(Conversation::NodeDispatcher), 1 << 20);
        assert_eq!(
            l.frame_bytes_max(Conversation::ClientNode),
            (64 << 20) + (1 << 20)
        );
    }
}
