//! The request protocol's bytes: the kind and status codes, the close and stream error codes,
//! and the parsing of request and reply frames (see the wire protocol in the parent module).

use super::*;

pub(super) const KIND_UNARY: u8 = 0;
pub(super) const KIND_STREAM: u8 = 1;
pub(super) const REQUEST_HEAD_LEN: usize = 3;

pub(super) const STATUS_OK: u8 = 0;
pub(super) const STATUS_REMOTE: u8 = 1;
pub(super) const STATUS_TOO_LARGE: u8 = 2;
pub(super) const STATUS_PROTOCOL: u8 = 3;
pub(super) const STATUS_REPLY_TOO_LARGE: u8 = 4;

/// Application close codes for connections.
pub(super) const CLOSE_SHUTDOWN: u32 = 0;
pub(super) const CLOSE_NO_PEER_CERT: u32 = 1;
/// The server no longer admits the peer's certificate (revoked after the connection opened).
pub(super) const CLOSE_REVOKED: u32 = 2;

/// Application error codes for streams (`STOP_SENDING` / `RESET_STREAM`).
pub(super) const STREAM_CANCELLED: u32 = 1;
pub(super) const STREAM_TOO_LARGE: u32 = 2;
pub(super) const STREAM_TIMEOUT: u32 = 3;

pub(super) fn parse_request(mut frame: Vec<u8>) -> Result<(u8, u16, Vec<u8>), String> {
    if frame.len() < REQUEST_HEAD_LEN {
        return Err(format!(
            "request frame of {} bytes is shorter than its {REQUEST_HEAD_LEN}-byte header",
            frame.len()
        ));
    }
    let kind = frame[0];
    if kind != KIND_UNARY && kind != KIND_STREAM {
        return Err(format!("unknown request kind {kind}: expected {KIND_UNARY} (unary) or {KIND_STREAM} (stream)"));
    }
    let method = u16::from_be_bytes([frame[1], frame[2]]);
    frame.drain(..REQUEST_HEAD_LEN);
    Ok((kind, method, frame))
}

pub(super) fn too_large_status(declared: usize, max: usize) -> [u8; 17] {
    let mut out = [0u8; 17];
    out[0] = STATUS_TOO_LARGE;
    out[1..9].copy_from_slice(&(declared as u64).to_be_bytes());
    out[9..].copy_from_slice(&(max as u64).to_be_bytes());
    out
}

pub(super) fn decode_reply(mut frame: Vec<u8>) -> Result<Vec<u8>, NetError> {
    let Some(&status) = frame.first() else {
        return Err(NetError::Protocol("empty reply frame: expected a status byte".into()));
    };
    let payload = &frame[1..];
    match status {
        STATUS_OK => {
            frame.remove(0);
            Ok(frame)
        }
        STATUS_REMOTE => Err(NetError::Remote(String::from_utf8_lossy(payload).into_owned())),
        STATUS_TOO_LARGE | STATUS_REPLY_TOO_LARGE => match (payload.get(..8), payload.get(8..)) {
            (Some(declared), Some(max)) if max.len() == 8 => {
                let as_usize = |b: &[u8]| {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(b);
                    usize::try_from(u64::from_be_bytes(word)).unwrap_or(usize::MAX)
                };
                let (declared, max) = (as_usize(declared), as_usize(max));
                Err(if status == STATUS_TOO_LARGE {
                    NetError::FrameTooLarge { declared, max }
                } else {
                    NetError::ReplyTooLarge { declared, max }
                })
            }
            _ => Err(NetError::Protocol(format!(
                "too-large reply with a {}-byte payload: expected 16 bytes",
                payload.len()
            ))),
        },
        STATUS_PROTOCOL => {
            Err(NetError::Protocol(format!("peer rejected the request: {}", String::from_utf8_lossy(payload))))
        }
        other => Err(NetError::Protocol(format!(
            "unknown reply status {other}: expected {STATUS_OK} to {STATUS_REPLY_TOO_LARGE}"
        ))),
    }
}

pub(super) fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
