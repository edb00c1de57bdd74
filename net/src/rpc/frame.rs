//! The RPC frame: a small, versioned, length-delimited message. Pure encode
//! and decode functions; no I/O.
//!
//! Layout (all integers big-endian, header 20 bytes):
//!
//! ```text
//! offset size field
//!      0    4 length       bytes after this field (16 + body length)
//!      4    1 version      PROTOCOL_VERSION; checked before anything else
//!      5    1 kind         0 request, 1 response, 2 error
//!      6    8 request id   chosen by the caller, echoed in the answer
//!     14    4 deadline ms  time the caller will wait, relative (clocks of
//!                          two machines are not comparable); 0 in answers
//!     18    2 method       which handler; echoed in the answer
//!     20    n body         request/response payload, or for an error:
//!                          [u16 error code][UTF-8 message]
//! ```
//!
//! One frame per QUIC stream and direction: the stream delimits the message
//! already, the length prefix lets a reader refuse an oversized frame after
//! four bytes instead of buffering it, and keeps the format usable on a
//! byte stream if one is ever needed.
//!
//! The version sits right after the length so that a reader can tell
//! "a newer peer" from "garbage" and answer the former with
//! [`ErrorCode::UNSUPPORTED_VERSION`] naming the versions it speaks.

use std::fmt;

/// The version this build writes.
pub const PROTOCOL_VERSION: u8 = 1;
/// The versions this build reads; an error frame lists them to a peer that
/// sent another.
pub const SUPPORTED_VERSIONS: &[u8] = &[PROTOCOL_VERSION];

/// Size of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Size of the whole header, length prefix included.
pub const HEADER_LEN: usize = 20;
/// Header bytes counted by the length field.
const HEADER_AFTER_LENGTH: usize = HEADER_LEN - LENGTH_PREFIX_LEN;

/// Largest body a frame carries: 16 MiB. A frame is buffered whole on both
/// ends (handlers take a `Vec<u8>`), so this bounds the memory one RPC can
/// pin; it is far above any raft append batch or scheduling request we send,
/// and payloads that can be larger (FSM snapshots) are sent in chunks by the
/// caller.
pub const BODY_LEN_MAX: usize = 16 * 1024 * 1024;
/// Largest frame, header included.
pub const FRAME_LEN_MAX: usize = HEADER_LEN + BODY_LEN_MAX;

/// Longest error message carried in an error frame: enough for a sentence
/// and a path; longer ones are cut (at a character boundary) so that an
/// error can never be the large part of a frame.
pub const ERROR_MESSAGE_LEN_MAX: usize = 1024;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A call, client to server.
    Request,
    /// A successful answer, server to client.
    Response,
    /// A failed answer: the body is a [`RemoteError`].
    Error,
}

impl FrameKind {
    fn to_byte(self) -> u8 {
        match self {
            FrameKind::Request => 0,
            FrameKind::Response => 1,
            FrameKind::Error => 2,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, FrameError> {
        match byte {
            0 => Ok(FrameKind::Request),
            1 => Ok(FrameKind::Response),
            2 => Ok(FrameKind::Error),
            other => Err(FrameError::UnknownKind { kind: other }),
        }
    }
}

/// Everything in a frame but the length, version and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame is.
    pub kind: FrameKind,
    /// Correlates an answer with its request.
    pub request_id: u64,
    /// Milliseconds the caller will wait for an answer (requests only).
    pub deadline_ms: u32,
    /// The handler the request is for.
    pub method: u16,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The fixed fields.
    pub header: FrameHeader,
    /// The payload.
    pub body: Vec<u8>,
}

/// Why bytes are not a frame. Decoding never panics: every malformed input
/// maps to one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header or the length field promise.
    #[error("frame truncated: {needed} bytes needed, {got} present")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// More bytes than the length field promises.
    #[error("{extra} bytes after the end of the frame")]
    TrailingBytes {
        /// Bytes beyond the frame.
        extra: usize,
    },
    /// The length field is below the header size.
    #[error("frame length {length} shorter than the {HEADER_AFTER_LENGTH}-byte header")]
    LengthTooSmall {
        /// The length field.
        length: usize,
    },
    /// The frame (header included) is larger than [`FRAME_LEN_MAX`].
    #[error("frame of {frame_len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The frame's size.
        frame_len: usize,
        /// The maximum.
        max: usize,
    },
    /// A version this build does not read.
    #[error("protocol version {version} not supported; supported versions: {}", VersionList)]
    UnsupportedVersion {
        /// The version received.
        version: u8,
    },
    /// An unknown kind byte.
    #[error("unknown frame kind {kind}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// An error frame whose body is not `[u16 code][UTF-8 message]`.
    #[error("malformed error body")]
    MalformedErrorBody,
}

/// Formats [`SUPPORTED_VERSIONS`] as `1, 2`.
struct VersionList;

impl fmt::Display for VersionList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, version) in SUPPORTED_VERSIONS.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{version}")?;
        }
        Ok(())
    }
}

/// The error code of an error frame. Codes below [`ErrorCode::APPLICATION_MIN`]
/// are the RPC layer's own; handlers use codes from there up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The request was not a well-formed frame.
    pub const BAD_FRAME: ErrorCode = ErrorCode(1);
    /// The request's protocol version is not one the server reads.
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(2);
    /// The request exceeded [`FRAME_LEN_MAX`].
    pub const FRAME_TOO_LARGE: ErrorCode = ErrorCode(3);
    /// No handler for the method.
    pub const UNKNOWN_METHOD: ErrorCode = ErrorCode(4);
    /// The handler did not finish within the request's deadline.
    pub const DEADLINE_EXCEEDED: ErrorCode = ErrorCode(5);
    /// The server is over its memory budget for in-flight requests on this
    /// connection; retry later.
    pub const OVERLOADED: ErrorCode = ErrorCode(6);
    /// The response the handler produced could not be sent (too large).
    pub const INTERNAL: ErrorCode = ErrorCode(7);
    /// First code available to handlers.
    pub const APPLICATION_MIN: ErrorCode = ErrorCode(1000);
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            ErrorCode::BAD_FRAME => "bad frame",
            ErrorCode::UNSUPPORTED_VERSION => "unsupported version",
            ErrorCode::FRAME_TOO_LARGE => "frame too large",
            ErrorCode::UNKNOWN_METHOD => "unknown method",
            ErrorCode::DEADLINE_EXCEEDED => "deadline exceeded",
            ErrorCode::OVERLOADED => "overloaded",
            ErrorCode::INTERNAL => "internal",
            _ => return write!(f, "{}", self.0),
        };
        write!(f, "{} ({name})", self.0)
    }
}

/// An error answered by the remote end: the body of an error frame, and what
/// a handler returns when a request fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("error {code}: {message}")]
pub struct RemoteError {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

impl RemoteError {
    /// An error body, the message cut to [`ERROR_MESSAGE_LEN_MAX`] bytes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > ERROR_MESSAGE_LEN_MAX {
            let mut cut = ERROR_MESSAGE_LEN_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self { code, message }
    }

    /// `[u16 code][message]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.message.len());
        out.extend_from_slice(&self.code.0.to_be_bytes());
        out.extend_from_slice(self.message.as_bytes());
        out
    }

    /// The inverse of [`RemoteError::encode`].
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        let (code, message) = body.split_first_chunk::<2>().ok_or(FrameError::MalformedErrorBody)?;
        if message.len() > ERROR_MESSAGE_LEN_MAX {
            return Err(FrameError::MalformedErrorBody);
        }
        let message = std::str::from_utf8(message).map_err(|_| FrameError::MalformedErrorBody)?;
        Ok(Self { code: ErrorCode(u16::from_be_bytes(*code)), message: message.to_owned() })
    }
}

/// Refuse a body the frame could not carry, before doing any work for it.
pub fn check_body_len(body_len: usize) -> Result<(), FrameError> {
    if body_len > BODY_LEN_MAX {
        return Err(FrameError::TooLarge { frame_len: HEADER_LEN.saturating_add(body_len), max: FRAME_LEN_MAX });
    }
    Ok(())
}

/// Encode a frame of the current [`PROTOCOL_VERSION`].
pub fn encode(header: &FrameHeader, body: &[u8]) -> Result<Vec<u8>, FrameError> {
    check_body_len(body.len())?;
    let length = u32::try_from(HEADER_AFTER_LENGTH + body.len())
        .map_err(|_| FrameError::TooLarge { frame_len: HEADER_LEN + body.len(), max: FRAME_LEN_MAX })?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&length.to_be_bytes());
    out.push(PROTOCOL_VERSION);
    out.push(header.kind.to_byte());
    out.extend_from_slice(&header.request_id.to_be_bytes());
    out.extend_from_slice(&header.deadline_ms.to_be_bytes());
    out.extend_from_slice(&header.method.to_be_bytes());
    out.extend_from_slice(body);
    debug_assert_eq!(out.len(), HEADER_LEN + body.len());
    Ok(out)
}

/// Encode an error frame answering `request_id`/`method`.
pub fn encode_error(request_id: u64, method: u16, error: &RemoteError) -> Vec<u8> {
    let header = FrameHeader { kind: FrameKind::Error, request_id, deadline_ms: 0, method };
    // An error body is at most 2 + ERROR_MESSAGE_LEN_MAX bytes, far below
    // BODY_LEN_MAX, so encoding cannot fail; fall back to an empty message
    // rather than panic should that ever change.
    encode(&header, &error.encode()).unwrap_or_else(|_| {
        let mut frame = Vec::with_capacity(HEADER_LEN + 2);
        frame.extend_from_slice(&((HEADER_AFTER_LENGTH + 2) as u32).to_be_bytes());
        frame.push(PROTOCOL_VERSION);
        frame.push(FrameKind::Error.to_byte());
        frame.extend_from_slice(&request_id.to_be_bytes());
        frame.extend_from_slice(&0u32.to_be_bytes());
        frame.extend_from_slice(&method.to_be_bytes());
        frame.extend_from_slice(&error.code.0.to_be_bytes());
        frame
    })
}

/// Read the length prefix and return the size of the whole frame (prefix
/// included), refusing one above [`FRAME_LEN_MAX`] or below the header size.
/// A streaming reader calls this after 4 bytes to know how much to read.
pub fn frame_len(prefix: [u8; LENGTH_PREFIX_LEN]) -> Result<usize, FrameError> {
    let length = u32::from_be_bytes(prefix) as usize;
    if length < HEADER_AFTER_LENGTH {
        return Err(FrameError::LengthTooSmall { length });
    }
    let frame_len = LENGTH_PREFIX_LEN + length;
    if frame_len > FRAME_LEN_MAX {
        return Err(FrameError::TooLarge { frame_len, max: FRAME_LEN_MAX });
    }
    Ok(frame_len)
}

/// Decode the header of a complete frame; `bytes` must be exactly one frame.
pub fn decode_header(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
    let truncated = || FrameError::Truncated { needed: HEADER_LEN, got: bytes.len() };
    let (prefix, rest) = bytes.split_first_chunk::<LENGTH_PREFIX_LEN>().ok_or_else(truncated)?;
    // The version first: a frame from a newer peer may have a different
    // layout, and the answer to it must say "version", not "garbage".
    if let Some(&version) = rest.first()
        && !SUPPORTED_VERSIONS.contains(&version)
    {
        return Err(FrameError::UnsupportedVersion { version });
    }
    let frame_len = frame_len(*prefix)?;
    if bytes.len() < frame_len {
        return Err(FrameError::Truncated { needed: frame_len, got: bytes.len() });
    }
    if bytes.len() > frame_len {
        return Err(FrameError::TrailingBytes { extra: bytes.len() - frame_len });
    }
    let (&[_version, kind], rest) = rest.split_first_chunk::<2>().ok_or_else(truncated)?;
    let (request_id, rest) = rest.split_first_chunk::<8>().ok_or_else(truncated)?;
    let (deadline_ms, rest) = rest.split_first_chunk::<4>().ok_or_else(truncated)?;
    let (method, _body) = rest.split_first_chunk::<2>().ok_or_else(truncated)?;
    Ok(FrameHeader {
        kind: FrameKind::from_byte(kind)?,
        request_id: u64::from_be_bytes(*request_id),
        deadline_ms: u32::from_be_bytes(*deadline_ms),
        method: u16::from_be_bytes(*method),
    })
}

/// Decode a complete frame, reusing `bytes`' allocation for the body.
pub fn decode(mut bytes: Vec<u8>) -> Result<Frame, FrameError> {
    let header = decode_header(&bytes)?;
    // `decode_header` checked that `bytes` holds at least HEADER_LEN bytes.
    bytes.drain(..HEADER_LEN);
    Ok(Frame { header, body: bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &[u8]) -> Vec<u8> {
        let header =
            FrameHeader { kind: FrameKind::Request, request_id: 0x0102_0304_0506_0708, deadline_ms: 1500, method: 7 };
        encode(&header, body).expect("small body encodes")
    }

    #[test]
    fn round_trip() {
        let bytes = request(b"hello");
        assert_eq!(bytes.len(), HEADER_LEN + 5);
        assert_eq!(&bytes[..LENGTH_PREFIX_LEN], &21u32.to_be_bytes());
        let frame = decode(bytes).expect("decodes");
        assert_eq!(frame.header.kind, FrameKind::Request);
        assert_eq!(frame.header.request_id, 0x0102_0304_0506_0708);
        assert_eq!(frame.header.deadline_ms, 1500);
        assert_eq!(frame.header.method, 7);
        assert_eq!(frame.body, b"hello");
    }

    #[test]
    fn remote_error_round_trip_and_cut() {
        let error = RemoteError::new(ErrorCode::UNKNOWN_METHOD, "no such method");
        let frame = decode(encode_error(9, 3, &error)).expect("decodes");
        assert_eq!(frame.header.kind, FrameKind::Error);
        assert_eq!(RemoteError::decode(&frame.body), Ok(error));
        // A multi-byte character straddling the cut is dropped whole.
        let long = "é".repeat(ERROR_MESSAGE_LEN_MAX);
        let cut = RemoteError::new(ErrorCode::INTERNAL, long);
        assert_eq!(cut.message.len(), ERROR_MESSAGE_LEN_MAX);
        assert!(RemoteError::decode(&[0]).is_err());
        assert!(RemoteError::decode(&[0, 1, 0xff]).is_err());
    }

    #[test]
    fn refuses_oversized_bodies_and_lengths() {
        assert!(check_body_len(BODY_LEN_MAX).is_ok());
        assert_eq!(
            check_body_len(BODY_LEN_MAX + 1),
            Err(FrameError::TooLarge { frame_len: FRAME_LEN_MAX + 1, max: FRAME_LEN_MAX })
        );
        assert!(frame_len((FRAME_LEN_MAX as u32 - 4).to_be_bytes()).is_ok());
        assert!(frame_len((FRAME_LEN_MAX as u32 - 3).to_be_bytes()).is_err());
        assert_eq!(frame_len(15u32.to_be_bytes()), Err(FrameError::LengthTooSmall { length: 15 }));
        assert!(frame_len(u32::MAX.to_be_bytes()).is_err());
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = request(b"x");
        bytes[4] = 9;
        let error = decode(bytes).expect_err("version 9 is unknown");
        assert_eq!(error, FrameError::UnsupportedVersion { version: 9 });
        assert_eq!(error.to_string(), "protocol version 9 not supported; supported versions: 1");
    }

    /// Every prefix, every single-byte change and every appended byte of a
    /// valid frame decodes to a frame or an error, never a panic; and
    /// whatever decodes re-encodes to the same bytes.
    #[test]
    fn mutations_never_panic() {
        let original = request(b"mutation body");
        for len in 0..original.len() {
            assert!(decode(original[..len].to_vec()).is_err(), "prefix of {len} bytes decoded");
        }
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for position in 0..original.len() {
            for value in [0u8, 1, 2, 3, 0x7f, 0x80, 0xff] {
                let mut bytes = original.clone();
                bytes[position] = value;
                check_decode_consistent(bytes);
            }
        }
        // Random multi-byte mutations (xorshift; seed fixed so a failure replays).
        for _ in 0..20_000 {
            let mut bytes = original.clone();
            let mutations = 1 + (next(&mut seed) % 4) as usize;
            for _ in 0..mutations {
                let position = (next(&mut seed) as usize) % bytes.len();
                bytes[position] = next(&mut seed) as u8;
            }
            if next(&mut seed).is_multiple_of(8) {
                bytes.push(next(&mut seed) as u8);
            }
            check_decode_consistent(bytes);
        }
        // Pure garbage of every small length.
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|_| next(&mut seed) as u8).collect();
            check_decode_consistent(bytes);
        }
    }

    fn check_decode_consistent(bytes: Vec<u8>) {
        if let Ok(frame) = decode(bytes.clone()) {
            assert_eq!(encode(&frame.header, &frame.body).expect("re-encodes"), bytes);
        }
    }

    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }
}
