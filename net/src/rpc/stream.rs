//! Reading and writing one frame on a QUIC stream, shared by server and client.

use std::io;

use compio::io::AsyncWriteExt;
use compio::quic::{ReadError, RecvStream, SendStream, WriteError};

use super::frame::{self, FrameError, LENGTH_PREFIX_LEN};

/// Largest chunk requested from quinn per read: large enough that a 16 MiB
/// frame takes few reads, small enough that a reader does not ask quinn for
/// more than one frame's worth.
const READ_CHUNK_MAX: usize = 1024 * 1024;

/// Initial buffer capacity once a frame's length is known. The buffer grows
/// with the bytes that actually arrive rather than with what the length
/// prefix claims, so four bytes saying "16 MiB" cost nothing.
const READ_BUFFER_INITIAL: usize = 64 * 1024;

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadFrameError {
    /// The stream ended before any byte arrived.
    #[error("stream finished without a frame")]
    Empty,
    /// The bytes are not a frame (bad length, truncated, too large).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream or connection failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The reader's `admit` refused a frame of this size.
    #[error("frame of {frame_len} bytes not admitted")]
    NotAdmitted {
        /// The frame's size, length prefix included.
        frame_len: usize,
    },
}

/// Read exactly one frame. The length prefix is checked as soon as it has
/// arrived, so an oversized frame is refused after four bytes, and `admit`
/// is asked (once, with the frame's size) before its bytes are buffered: the
/// server charges them to a memory budget there. Bytes after the frame are
/// not read: one frame per stream and direction.
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    mut admit: impl FnMut(usize) -> bool,
) -> Result<Vec<u8>, ReadFrameError> {
    let mut buf = Vec::with_capacity(frame::HEADER_LEN);
    let mut frame_len = None;
    loop {
        let wanted = match frame_len {
            None => LENGTH_PREFIX_LEN - buf.len(),
            Some(frame_len) => frame_len - buf.len(),
        };
        if wanted == 0 {
            return Ok(buf);
        }
        let chunk = recv.read_chunk(wanted.min(READ_CHUNK_MAX), true).await?;
        let Some(chunk) = chunk else {
            if buf.is_empty() {
                return Err(ReadFrameError::Empty);
            }
            let needed = frame_len.unwrap_or(frame::HEADER_LEN);
            return Err(FrameError::Truncated { needed, got: buf.len() }.into());
        };
        // `read_chunk` honours `max_length`, so the frame never overshoots.
        debug_assert!(chunk.bytes.len() <= wanted);
        buf.extend_from_slice(&chunk.bytes);
        if frame_len.is_none()
            && let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_LEN>()
        {
            // Only the length is checked here; the version and the rest are
            // `frame::decode`'s business once the whole frame is in.
            let len = frame::frame_len(*prefix)?;
            if !admit(len) {
                return Err(ReadFrameError::NotAdmitted { frame_len: len });
            }
            buf.reserve(len.min(READ_BUFFER_INITIAL));
            frame_len = Some(len);
        }
    }
}

/// Write `frame` and finish the stream. Errors are compio's `io::Error`
/// wrapping quinn's [`WriteError`]; see [`is_stopped`].
pub(crate) async fn write_frame(send: &mut SendStream, frame: Vec<u8>) -> io::Result<()> {
    let compio::BufResult(result, _) = send.write_all(frame).await;
    result?;
    // Finishing fails only if the stream was already stopped or reset, which
    // the peer knows already; there is nothing more to tell it.
    let _ = send.finish();
    Ok(())
}

/// Whether a write failed because the peer stopped reading this stream (it
/// refused the frame and will answer with an error frame), as opposed to the
/// connection failing.
pub(crate) fn is_stopped(error: &io::Error) -> bool {
    matches!(error.get_ref().and_then(|inner| inner.downcast_ref::<WriteError>()), Some(WriteError::Stopped(_)))
}
