//! Length-prefixed framing for byte streams.
//!
//! A frame is a `u32` big-endian length followed by exactly that many bytes. This module owns
//! only the framing: it knows nothing about QUIC, TLS or what the bytes mean. Every read and
//! write takes an explicit maximum so that a peer can never make us allocate (or send) more
//! than the caller agreed to.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default upper bound for one frame's payload: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Size of the length prefix.
const HEADER_LEN: usize = 4;

/// First allocation for a frame body. The body buffer then grows only as bytes actually
/// arrive, so a peer that declares a large frame and sends nothing costs us almost nothing.
const INITIAL_BODY_CAPACITY: usize = 64 << 10;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame is larger than the agreed maximum (or than a `u32` length can express).
    #[error("frame of {declared} bytes exceeds the maximum of {max} bytes")]
    TooLarge { declared: usize, max: usize },
    /// The stream ended inside a frame.
    #[error("truncated frame {part}: expected {expected} bytes, got {got}")]
    Truncated {
        /// `"header"` or `"body"`.
        part: &'static str,
        expected: usize,
        got: usize,
    },
    /// The underlying reader or writer failed.
    #[error("frame i/o failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The largest payload a frame can carry given the caller's `max`: the length prefix is a `u32`.
fn effective_max(max: usize) -> usize {
    max.min(u32::MAX as usize)
}

/// Writes one frame holding `payload`.
///
/// Fails with [`FrameError::TooLarge`] before writing anything if `payload.len() > max`.
/// Does not flush: callers that wrap the writer in a buffer flush when they want the bytes out.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8], max: usize) -> Result<(), FrameError> {
    write_frame_parts(w, &[payload], max).await
}

/// Writes one frame whose payload is the concatenation of `parts`.
///
/// Lets callers put a small header in front of a large body without copying the body into a
/// new buffer first. Same limits and flushing behaviour as [`write_frame`].
pub async fn write_frame_parts<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[&[u8]],
    max: usize,
) -> Result<(), FrameError> {
    let max = effective_max(max);
    let declared = parts.iter().try_fold(0usize, |acc, p| acc.checked_add(p.len())).unwrap_or(usize::MAX);
    if declared > max {
        return Err(FrameError::TooLarge { declared, max });
    }
    // `declared <= max <= u32::MAX`, so the conversion cannot fail.
    let len = u32::try_from(declared).map_err(|_| FrameError::TooLarge { declared, max })?;
    w.write_all(&len.to_be_bytes()).await?;
    for part in parts {
        w.write_all(part).await?;
    }
    Ok(())
}

/// Reads one frame.
///
/// Returns `Ok(None)` on a clean end of stream before a frame starts. A declared length above
/// `max` is rejected with [`FrameError::TooLarge`] right after the header, before any body byte
/// is read or any body buffer allocated, so the caller can refuse it without draining it. A
/// stream that ends inside the header or the body yields [`FrameError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let max = effective_max(max);
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated { part: "header", expected: HEADER_LEN, got });
        }
        got += n;
    }
    let declared = u32::from_be_bytes(header) as usize;
    if declared > max {
        return Err(FrameError::TooLarge { declared, max });
    }
    let mut body = Vec::with_capacity(declared.min(INITIAL_BODY_CAPACITY));
    // `take` stops exactly at the frame boundary, so the next frame stays unread in `r`.
    let got = (&mut *r).take(declared as u64).read_to_end(&mut body).await?;
    if got < declared {
        return Err(FrameError::Truncated { part: "body", expected: declared, got });
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests;
