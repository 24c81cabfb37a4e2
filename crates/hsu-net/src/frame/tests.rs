//! Tests of the frame codec: lengths, limits and truncated input.

use super::*;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::ReadBuf;

/// A reader that serves `data` and counts how many bytes were handed out, so tests can prove
/// that a body was not read.
struct CountingReader {
    data: Vec<u8>,
    pos: usize,
}

impl CountingReader {
    fn new(data: Vec<u8>) -> Self {
        Self { data, pos: 0 }
    }
}

impl AsyncRead for CountingReader {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Deterministic xorshift64* generator: reproducible "random" lengths without a dependency.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

async fn encode(payloads: &[&[u8]], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        write_frame(&mut out, p, max).await.expect("write frame");
    }
    out
}

#[tokio::test]
async fn round_trip() {
    let wire = encode(&[b"hello"], 64).await;
    assert_eq!(&wire[..4], &5u32.to_be_bytes());
    assert_eq!(&wire[4..], b"hello");
    let mut r = CountingReader::new(wire);
    assert_eq!(read_frame(&mut r, 64).await.unwrap().as_deref(), Some(&b"hello"[..]));
    assert!(read_frame(&mut r, 64).await.unwrap().is_none());
}

#[tokio::test]
async fn empty_frame_is_not_eof() {
    let wire = encode(&[b""], 64).await;
    let mut r = CountingReader::new(wire);
    assert_eq!(read_frame(&mut r, 64).await.unwrap(), Some(Vec::new()));
    assert!(read_frame(&mut r, 64).await.unwrap().is_none());
}

#[tokio::test]
async fn parts_are_concatenated() {
    let mut wire = Vec::new();
    write_frame_parts(&mut wire, &[b"ab", b"", b"cde"], 5).await.unwrap();
    let mut r = CountingReader::new(wire);
    assert_eq!(read_frame(&mut r, 5).await.unwrap().unwrap(), b"abcde");
    // One byte over the limit across parts is refused before anything is written.
    let mut out = Vec::new();
    let err = write_frame_parts(&mut out, &[b"abc", b"def"], 5).await.unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { declared: 6, max: 5 }));
    assert!(out.is_empty());
}

#[tokio::test]
async fn too_large_rejected_without_reading_body() {
    // Header declares 1000 bytes; the body is there, but must stay unread.
    let mut wire = 1000u32.to_be_bytes().to_vec();
    wire.extend(std::iter::repeat_n(7u8, 1000));
    let mut r = CountingReader::new(wire);
    let err = read_frame(&mut r, 999).await.unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { declared: 1000, max: 999 }), "{err}");
    assert_eq!(r.pos, 4, "only the header may be consumed");
}

#[tokio::test]
async fn huge_declared_length_does_not_allocate() {
    // u32::MAX declared with a generous max: the read must fail as truncated without trying
    // to reserve 4 GiB up front.
    let wire = u32::MAX.to_be_bytes().to_vec();
    let mut r = CountingReader::new(wire);
    let err = read_frame(&mut r, usize::MAX).await.unwrap_err();
    assert!(matches!(err, FrameError::Truncated { part: "body", got: 0, .. }), "{err}");
}

#[tokio::test]
async fn write_too_large_writes_nothing() {
    let mut out = Vec::new();
    let err = write_frame(&mut out, &[0u8; 10], 9).await.unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { declared: 10, max: 9 }));
    assert!(out.is_empty());
}

#[tokio::test]
async fn truncated_header() {
    for cut in 1..4 {
        let mut r = CountingReader::new(vec![0u8; cut]);
        let err = read_frame(&mut r, 64).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated { part: "header", expected: 4, got } if got == cut), "{err}");
    }
}

#[tokio::test]
async fn truncated_body() {
    let mut wire = encode(&[b"0123456789"], 64).await;
    wire.truncate(4 + 6);
    let mut r = CountingReader::new(wire);
    let err = read_frame(&mut r, 64).await.unwrap_err();
    assert!(matches!(err, FrameError::Truncated { part: "body", expected: 10, got: 6 }), "{err}");
}

#[tokio::test]
async fn eof_before_frame() {
    let mut r = CountingReader::new(Vec::new());
    assert!(read_frame(&mut r, 64).await.unwrap().is_none());
}

#[tokio::test]
async fn many_frames_back_to_back() {
    let payloads: Vec<Vec<u8>> = (0..500u32).map(|i| i.to_be_bytes().repeat(i as usize % 7)).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let wire = encode(&refs, 64).await;
    let mut r = CountingReader::new(wire);
    for expected in &payloads {
        assert_eq!(&read_frame(&mut r, 64).await.unwrap().unwrap(), expected);
    }
    assert!(read_frame(&mut r, 64).await.unwrap().is_none());
}

#[tokio::test]
async fn random_lengths_through_a_small_pipe() {
    // A duplex pipe with a tiny buffer forces both sides through many partial reads and writes.
    let mut rng = Prng(0x9e37_79b9_7f4a_7c15);
    let max = 70_000;
    let payloads: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            // Mostly small frames with an occasional large one, including the exact maximum.
            let len = match i % 50 {
                0 => max,
                1..=5 => rng.below(max + 1),
                _ => rng.below(300),
            };
            (0..len).map(|_| rng.next() as u8).collect()
        })
        .collect();

    let (mut a, mut b) = tokio::io::duplex(97);
    let sent = payloads.clone();
    let writer = tokio::spawn(async move {
        for p in &sent {
            write_frame(&mut a, p, max).await.unwrap();
        }
        // Dropping `a` closes the pipe: the reader then sees a clean EOF.
    });
    for (i, expected) in payloads.iter().enumerate() {
        let got = read_frame(&mut b, max).await.unwrap();
        assert_eq!(got.as_ref(), Some(expected), "frame {i}");
    }
    writer.await.unwrap();
    assert!(read_frame(&mut b, max).await.unwrap().is_none());
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any byte stream reads as frames, a clean end, or a clear error; a body is never
        /// allocated past `max`, whatever its header declares.
        #[test]
        fn any_stream_reads_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256), max in 1usize..128) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut r = &bytes[..];
                for _ in 0..bytes.len() + 1 {
                    match read_frame(&mut r, max).await {
                        Ok(Some(frame)) => assert!(frame.len() <= max),
                        Ok(None) => break,
                        Err(e) => {
                            assert!(!e.to_string().is_empty());
                            break;
                        }
                    }
                }
            });
        }
    }
}
