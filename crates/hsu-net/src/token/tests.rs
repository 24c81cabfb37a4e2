//! Tests of tokens: format, parse errors that never echo the secret, expiry, uses and revocation.

use super::*;

const HASH: [u8; 32] = [0xab; 32];
const HASH_HEX: &str = "abababababababababababababababababababababababababababababababab";

fn token() -> JoinToken {
    JoinToken { id: "abc123".to_owned(), secret: "0123456789abcdef".to_owned(), ca_hash: HASH }
}

fn malformed(s: &str) -> String {
    match JoinToken::parse(s) {
        Err(TokenError::Malformed(msg)) => msg,
        other => panic!("expected a malformed-token error for {s:?}, got {other:?}"),
    }
}

#[test]
fn generate_and_parse_round_trip() {
    let t = JoinToken::generate(HASH).unwrap();
    assert_eq!(t.id.len(), 6);
    assert_eq!(t.secret.len(), 16);
    for c in t.id.chars().chain(t.secret.chars()) {
        assert!(c.is_ascii_lowercase() || c.is_ascii_digit(), "bad char {c:?}");
    }
    let s = t.to_string();
    assert!(s.starts_with("hsu1."), "{s}");
    assert!(s.ends_with(HASH_HEX), "{s}");
    assert_eq!(JoinToken::parse(&s).unwrap(), t);
    // A trailing newline from a file or a paste is tolerated.
    assert_eq!(JoinToken::parse(&format!("{s}\n")).unwrap(), t);
}

#[test]
fn generated_tokens_differ() {
    let a = JoinToken::generate(HASH).unwrap();
    let b = JoinToken::generate(HASH).unwrap();
    assert_ne!(a.secret, b.secret);
    assert_ne!(a.id, b.id);
}

#[test]
fn display_is_the_exact_format() {
    assert_eq!(token().to_string(), format!("hsu1.abc123.0123456789abcdef.{HASH_HEX}"));
}

#[test]
fn parse_accepts_uppercase_hash() {
    let s = format!("hsu1.abc123.0123456789abcdef.{}", HASH_HEX.to_uppercase());
    assert_eq!(JoinToken::parse(&s).unwrap(), token());
}

#[test]
fn wrong_prefix_is_reported() {
    assert_eq!(
        malformed(&format!("hsu2.abc123.0123456789abcdef.{HASH_HEX}")),
        "expected the token to start with \"hsu1.\", found another prefix"
    );
    assert_eq!(malformed(""), "expected the token to start with \"hsu1.\", found another prefix");
}

#[test]
fn wrong_number_of_parts_is_reported() {
    assert_eq!(malformed("hsu1.abc123.0123456789abcdef"), "expected 4 dot-separated parts, found 3");
    assert_eq!(
        malformed(&format!("hsu1.abc123.0123456789abcdef.{HASH_HEX}.x")),
        "expected 4 dot-separated parts, found 5"
    );
}

#[test]
fn bad_id_is_reported() {
    assert_eq!(
        malformed(&format!("hsu1.abc12.0123456789abcdef.{HASH_HEX}")),
        "expected a 6-character id, found 5 characters"
    );
    assert_eq!(
        malformed(&format!("hsu1.abC123.0123456789abcdef.{HASH_HEX}")),
        "expected the id to use only [a-z0-9], found another character at position 2"
    );
}

#[test]
fn bad_secret_is_reported_without_echoing_it() {
    let short = "0123456789abcde";
    let msg = malformed(&format!("hsu1.abc123.{short}.{HASH_HEX}"));
    assert_eq!(msg, "expected a 16-character secret, found 15 characters");
    assert!(!msg.contains(short));

    let upper = "0123456789ABCDEF";
    let msg = malformed(&format!("hsu1.abc123.{upper}.{HASH_HEX}"));
    assert_eq!(msg, "expected the secret to use only [a-z0-9], found another character at position 10");
    assert!(!msg.contains(upper));
}

#[test]
fn bad_hash_is_reported() {
    assert_eq!(
        malformed(&format!("hsu1.abc123.0123456789abcdef.{}", &HASH_HEX[..62])),
        "expected a 64-character hex ca hash, found 62 characters"
    );
    let mut not_hex = HASH_HEX.to_owned();
    not_hex.replace_range(10..11, "g");
    assert_eq!(
        malformed(&format!("hsu1.abc123.0123456789abcdef.{not_hex}")),
        "expected the ca hash to be hex, found a non-hex character at position 10"
    );
    // 64 characters but not 64 bytes must not trip up the decoder.
    let mut multibyte = HASH_HEX.to_owned();
    multibyte.replace_range(0..1, "é");
    assert_eq!(
        malformed(&format!("hsu1.abc123.0123456789abcdef.{multibyte}")),
        "expected the ca hash to be hex, found a non-hex character at position 0"
    );
}

#[test]
fn debug_does_not_contain_the_secret() {
    let t = JoinToken::generate(HASH).unwrap();
    let debug = format!("{t:?}");
    assert!(!debug.contains(&t.secret), "{debug}");
    assert!(debug.contains(&t.id), "{debug}");
    assert!(debug.contains(HASH_HEX), "{debug}");
    let pretty = format!("{t:#?}");
    assert!(!pretty.contains(&t.secret), "{pretty}");
}

#[test]
fn record_does_not_store_the_secret() {
    let t = token();
    let record = t.record(1_000, Some(500), Some(1), "ci runner".to_owned());
    assert_eq!(record.secret_hash, crate::pki::sha256(t.secret.as_bytes()));
    assert!(!format!("{record:?}").contains(&t.secret));
    assert_eq!(record.expires_ms, Some(1_500));
    assert_eq!(record.uses_left, Some(1));
    assert!(!record.revoked);
}

#[test]
fn check_accepts_a_valid_token() {
    let t = token();
    let record = t.record(1_000, Some(500), Some(3), String::new());
    assert_eq!(t.check_against(&record, 1_499), Ok(()));
}

#[test]
fn check_rejects_wrong_secret_first() {
    let t = token();
    // The record is revoked, expired and used up, yet a caller without the secret must learn
    // only that the secret is wrong.
    let mut record = t.record(1_000, Some(10), Some(0), String::new());
    record.revoked = true;
    let mut guess = t.clone();
    guess.secret = "ffffffffffffffff".to_owned();
    assert_eq!(guess.check_against(&record, 5_000), Err(TokenError::WrongSecret));
}

#[test]
fn check_rejects_other_id() {
    let t = token();
    let record = t.record(0, None, None, String::new());
    let mut other = t.clone();
    other.id = "zzzzzz".to_owned();
    assert_eq!(other.check_against(&record, 0), Err(TokenError::UnknownToken("zzzzzz".to_owned())));
}

#[test]
fn check_rejects_expired() {
    let t = token();
    let record = t.record(1_000, Some(500), None, String::new());
    assert_eq!(t.check_against(&record, 1_499), Ok(()));
    assert_eq!(t.check_against(&record, 1_500), Err(TokenError::Expired { expired_ms: 1_500 }));
}

#[test]
fn check_rejects_used_up() {
    let t = token();
    let record = t.record(0, None, Some(1), String::new());
    assert_eq!(t.check_against(&record, 0), Ok(()));
    let after = record.used();
    assert_eq!(after.uses_left, Some(0));
    assert_eq!(t.check_against(&after, 0), Err(TokenError::UsedUp));
    // Using a used-up record again does not wrap around.
    assert_eq!(after.used().uses_left, Some(0));
}

#[test]
fn unlimited_uses_stay_unlimited() {
    let t = token();
    let record = t.record(0, None, None, String::new());
    assert_eq!(record.used().used().uses_left, None);
    assert_eq!(t.check_against(&record.used(), 0), Ok(()));
}

#[test]
fn check_rejects_revoked() {
    let t = token();
    let mut record = t.record(0, None, None, String::new());
    record.revoked = true;
    assert_eq!(t.check_against(&record, 0), Err(TokenError::Revoked));
}

#[test]
fn ttl_none_never_expires() {
    let t = token();
    let record = t.record(1_000, None, None, String::new());
    assert_eq!(record.expires_ms, None);
    assert_eq!(t.check_against(&record, u64::MAX), Ok(()));
}

#[test]
fn huge_ttl_saturates_instead_of_wrapping() {
    let t = token();
    let record = t.record(1_000, Some(u64::MAX), None, String::new());
    assert_eq!(record.expires_ms, Some(u64::MAX));
    assert_eq!(t.check_against(&record, 2_000), Ok(()));
}

#[test]
fn hashes_equal_compares_every_byte() {
    let a = [7u8; 32];
    let mut b = a;
    assert!(hashes_equal(&a, &b));
    b[31] ^= 1;
    assert!(!hashes_equal(&a, &b));
    b = a;
    b[0] ^= 0x80;
    assert!(!hashes_equal(&a, &b));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

        /// Anything presented as a join or API token parses or is refused with a reason.
        #[test]
        fn any_text_parses_or_fails_cleanly(text in ".{0,160}") {
            if let Err(e) = JoinToken::parse(&text) {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        /// A real token with one character changed is refused or parsed, never a panic, and a
        /// parsed one prints as a token that parses to the same.
        #[test]
        fn edited_tokens_fail_cleanly(at in 0usize..200, c in any::<char>()) {
            let text = token().to_string();
            let mut chars: Vec<char> = text.chars().collect();
            let at = at % chars.len();
            chars[at] = c;
            let edited: String = chars.into_iter().collect();
            if let Ok(t) = JoinToken::parse(&edited) {
                let again = JoinToken::parse(&t.to_string()).unwrap();
                prop_assert_eq!((again.id, again.secret, again.ca_hash), (t.id, t.secret, t.ca_hash));
            }
        }
    }
}
