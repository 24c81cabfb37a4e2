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
