//! Property tests of the peer messages' codec.

use proptest::prelude::*;

use super::*;

/// A record header (version, checksum) in front of `payload`, so that decoding gets past the
/// checksum and reaches the payload.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![hsu_model::codec::RECORD_VERSION, 0, 0, 0, 0];
    bytes.extend_from_slice(payload);
    let crc = crc32fast_hash(payload);
    bytes[1..5].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// The codec's CRC-32 (IEEE), computed here so the test needs no extra dependency.
fn crc32fast_hash(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn decode_all(bytes: &[u8]) {
    let _ = decode_record::<PeerRequest>(bytes);
    let _ = decode_record::<Result<PeerReply, PeerError>>(bytes);
    let _ = decode_record::<crate::agent_node::InstancesUpdate>(bytes);
    let _ = decode_record::<crate::peer::LogAsk>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    /// What another node sends (a request, a reply, a stream item): decoded or refused, never
    /// a panic, whatever the bytes.
    #[test]
    fn any_peer_message_decodes_or_fails_cleanly(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_all(&payload);
        decode_all(&framed(&payload));
    }

    /// A real request with bytes changed in its payload.
    #[test]
    fn edited_requests_fail_cleanly(at in 0usize..512, byte in any::<u8>()) {
        let req = PeerRequest::Report(Box::new(hsu_model::state::NodeReport { node: 3, name: "edge".into(), ..Default::default() }));
        let bytes = encode_record(&req).unwrap();
        let mut payload = bytes[5..].to_vec();
        let at = at % payload.len();
        payload[at] = byte;
        decode_all(&framed(&payload));
    }
}

#[test]
fn the_test_frames_records_as_the_codec_does() {
    let bytes = encode_record(&PeerRequest::Health).unwrap();
    assert_eq!(framed(&bytes[5..]), bytes);
}
