//! Tests of the versioned record encoding.

use super::*;

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Sample {
    name: String,
    values: Vec<u64>,
}

fn sample() -> Sample {
    Sample { name: "web".into(), values: vec![1, 2, 300_000] }
}

#[test]
fn round_trip() {
    let bytes = encode_record(&sample()).unwrap();
    assert_eq!(bytes[0], RECORD_VERSION);
    assert_eq!(decode_record::<Sample>(&bytes).unwrap(), sample());
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = encode_record(&sample()).unwrap();
    for len in 0..bytes.len() {
        let err = decode_record::<Sample>(&bytes[..len]).unwrap_err();
        if len < HEADER_LEN {
            assert_eq!(err, CodecError::Truncated { found: len });
        } else {
            assert!(matches!(err, CodecError::Checksum { .. }), "len {len}: {err}");
        }
    }
}

#[test]
fn every_bit_flip_is_an_error() {
    let bytes = encode_record(&sample()).unwrap();
    for i in 0..bytes.len() * 8 {
        let mut bad = bytes.clone();
        bad[i / 8] ^= 1 << (i % 8);
        assert!(decode_record::<Sample>(&bad).is_err(), "flip of bit {i} went unnoticed");
    }
}

#[test]
fn newer_version_is_refused_by_name() {
    let mut bytes = encode_record(&sample()).unwrap();
    bytes[0] = RECORD_VERSION + 1;
    let err = decode_record::<Sample>(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("record has format version {}, this build reads version {RECORD_VERSION}", RECORD_VERSION + 1)
    );
}

#[test]
fn trailing_bytes_are_refused() {
    // A payload that decodes to a shorter value than it holds means the record is not what its
    // writer meant; encode a u8 and claim it is a record with more bytes behind it.
    let mut bytes = vec![RECORD_VERSION, 0, 0, 0, 0, 7, 8];
    let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
    bytes[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(decode_record::<u8>(&bytes).unwrap_err(), CodecError::TrailingBytes(1));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn budget() -> ProptestConfig {
        ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// The record types of the node's protocol carry strings, vectors and maps; these stand in.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Message {
        A(String, Vec<u8>),
        B { map: std::collections::BTreeMap<String, Vec<u64>>, flag: bool },
        C(Option<Box<Message>>),
    }

    proptest! {
        #![proptest_config(budget())]

        /// Any bytes: a value or a clear error, never a panic.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            match decode_record::<Message>(&bytes) {
                Ok(_) => {}
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        /// Any payload behind a valid header (so the checksum does not stop it first).
        #[test]
        fn any_payload_decodes_or_fails_cleanly(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = vec![RECORD_VERSION, 0, 0, 0, 0];
            bytes.extend_from_slice(&payload);
            let crc = crc32fast::hash(&payload);
            bytes[1..5].copy_from_slice(&crc.to_le_bytes());
            let _ = decode_record::<Message>(&bytes);
            let _ = decode_record::<Vec<String>>(&bytes);
        }

        /// Every value comes back as it went in; one flipped bit is always noticed.
        #[test]
        fn round_trip_and_bit_flips(s in ".{0,40}", v in proptest::collection::vec(any::<u8>(), 0..64), bit in 0usize..2048) {
            let m = Message::A(s, v);
            let bytes = encode_record(&m).unwrap();
            prop_assert_eq!(decode_record::<Message>(&bytes).unwrap(), m);
            let mut flipped = bytes.clone();
            let bit = bit % (flipped.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_record::<Message>(&flipped).is_err());
        }
    }

    /// A length prefix that claims far more than the record holds fails without allocating it.
    #[test]
    fn a_huge_length_prefix_is_refused() {
        // bincode's varint: 0xfd then a u64; claims 2^60 bytes of string.
        let mut payload = vec![0xfd];
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let mut bytes = vec![RECORD_VERSION, 0, 0, 0, 0];
        bytes.extend_from_slice(&payload);
        let crc = crc32fast::hash(&payload);
        bytes[1..5].copy_from_slice(&crc.to_le_bytes());
        let err = decode_record::<String>(&bytes).unwrap_err();
        assert!(matches!(err, CodecError::Payload(_)), "{err}");
    }
}
