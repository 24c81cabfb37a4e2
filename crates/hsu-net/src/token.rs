//! Join tokens: the one-time credential that lets a new machine become a cluster node.
//!
//! This module owns the token format (`hsu1.<id>.<secret>.<ca hash>`), its parsing, and the
//! record the cluster keeps about each token. A token does two jobs at once, which is why the
//! pieces sit together:
//!
//! * The `ca_hash` (sha256 of the cluster CA certificate's DER) lets the joining node
//!   authenticate the cluster on first contact, before it trusts anything: see
//!   [`crate::pki::pinned_client_config`].
//! * The `id` and `secret` let the cluster authenticate the joining node. The id is public and
//!   used to look the record up; the secret is known only to whoever holds the token.
//!
//! The cluster never stores the secret, only its sha256 (`TokenRecord::secret_hash`), so a copy
//! of the cluster state does not hand out working tokens. Secrets are also kept out of `Debug`
//! output and error messages, because both end up in logs.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};

use crate::pki::sha256;

/// Version prefix of the token format, so a future format can be told apart.
const PREFIX: &str = "hsu1";
/// Number of characters in a token id.
const ID_LEN: usize = 6;
/// Number of characters in a token secret; 16 characters of a 36-letter alphabet are about 82
/// bits, far beyond guessing within any token's lifetime.
const SECRET_LEN: usize = 16;
/// Characters ids and secrets are drawn from: lowercase letters and digits, so tokens survive
/// copying through shells, URLs and case-insensitive channels unchanged.
const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Errors of token parsing and checking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
/// Join and API tokens share the format, so messages say "token"; callers say which kind.
pub enum TokenError {
    /// The token string does not have the expected shape. The message says which part is wrong
    /// and never repeats the secret.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The presented secret does not match the stored hash.
    #[error("token rejected: wrong secret")]
    WrongSecret,
    /// The token's lifetime is over.
    #[error("token expired at {expired_ms} ms since the unix epoch")]
    Expired {
        /// When the token expired, in milliseconds since the unix epoch.
        expired_ms: u64,
    },
    /// The token has no uses left.
    #[error("token used up: expected uses left, found none")]
    UsedUp,
    /// The token was revoked by an administrator.
    #[error("token revoked")]
    Revoked,
    /// No token with this id is known (or the record checked belongs to another id).
    #[error("unknown token id {0:?}")]
    UnknownToken(String),
    /// The operating system's random number generator failed while generating a token.
    #[error("could not generate a token: system random number generator failed")]
    Random,
}

/// A join token: `hsu1.<id>.<secret>.<hex sha256 of CA cert DER>`; id = 6 chars [a-z0-9],
/// secret = 16 chars [a-z0-9] from the system random number generator.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Public identifier, used to find the token's record.
    pub id: String,
    /// The secret part; never log it.
    pub secret: String,
    /// sha256 of the cluster CA certificate's DER, pinned by the joining node.
    pub ca_hash: [u8; 32],
}

impl JoinToken {
    /// Generates a fresh token for the CA with fingerprint `ca_hash`.
    ///
    /// This returns a `Result` because the system random number generator can, in principle,
    /// fail; a token must never fall back to weaker randomness.
    pub fn generate(ca_hash: [u8; 32]) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        Ok(Self { id: random_string(&rng, ID_LEN)?, secret: random_string(&rng, SECRET_LEN)?, ca_hash })
    }

    /// Parses a token string. Surrounding whitespace (e.g. a trailing newline from a file or a
    /// paste) is ignored; everything else must match the format exactly.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        if parts[0] != PREFIX {
            return Err(TokenError::Malformed(format!(
                "expected the token to start with \"{PREFIX}.\", found another prefix"
            )));
        }
        let [_, id, secret, hash] = parts.as_slice() else {
            return Err(TokenError::Malformed(format!("expected 4 dot-separated parts, found {}", parts.len())));
        };
        check_charset("id", id, ID_LEN)?;
        check_charset("secret", secret, SECRET_LEN)?;
        Ok(Self { id: (*id).to_owned(), secret: (*secret).to_owned(), ca_hash: parse_hash(hash)? })
    }

    /// sha256 of the secret: the only form in which the cluster keeps it.
    pub fn secret_hash(&self) -> [u8; 32] {
        sha256(self.secret.as_bytes())
    }
}

impl fmt::Display for JoinToken {
    /// The full token string, secret included: use it only to hand the token to its user.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}.{}.{}.", self.id, self.secret)?;
        for b in self.ca_hash {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for JoinToken {
    /// Prints the id and CA hash only; the secret never appears in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hash: String = self.ca_hash.iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ca_hash", &hash)
            .finish()
    }
}

/// Draws `len` characters uniformly from [`ALPHABET`].
fn random_string(rng: &SystemRandom, len: usize) -> Result<String, TokenError> {
    // 252 is the largest multiple of 36 that fits in a byte; bytes at or above it are discarded
    // so that every character is equally likely (plain `% 36` would favour the first few).
    const LIMIT: u8 = 252;
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 32];
    while out.len() < len {
        rng.fill(&mut buf).map_err(|_| TokenError::Random)?;
        for &b in buf.iter().filter(|&&b| b < LIMIT) {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(b % 36)]));
        }
    }
    Ok(out)
}

/// Checks that a token part has exactly `len` characters of [`ALPHABET`]. The message names the
/// part and the problem but never echoes the value, which for the secret would leak it.
fn check_charset(part: &str, value: &str, len: usize) -> Result<(), TokenError> {
    let count = value.chars().count();
    if count != len {
        return Err(TokenError::Malformed(format!("expected a {len}-character {part}, found {count} characters")));
    }
    if let Some(pos) = value.chars().position(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit())) {
        return Err(TokenError::Malformed(format!(
            "expected the {part} to use only [a-z0-9], found another character at position {pos}"
        )));
    }
    Ok(())
}

fn parse_hash(hex: &str) -> Result<[u8; 32], TokenError> {
    let count = hex.chars().count();
    if count != 64 {
        return Err(TokenError::Malformed(format!("expected a 64-character hex ca hash, found {count} characters")));
    }
    if let Some(pos) = hex.chars().position(|c| !c.is_ascii_hexdigit()) {
        return Err(TokenError::Malformed(format!(
            "expected the ca hash to be hex, found a non-hex character at position {pos}"
        )));
    }
    // From here on the hash is known to be 64 ASCII hex digits, i.e. exactly 32 byte pairs.
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
    }
    Ok(out)
}

/// The value of one ASCII hex digit. Callers check the digits first; the final arm only keeps
/// the function total without a panic path.
fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Compares two hashes in time independent of where they differ, so that response timing does
/// not tell an attacker how much of a guess was right.
fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold back into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

pub use hsu_model::cluster::TokenRecord;

impl JoinToken {
    /// The record for this freshly generated token, created at `now_ms`, expiring `ttl_ms`
    /// later (`None`: never) and usable `uses` times (`None`: unlimited).
    pub fn record(&self, now_ms: u64, ttl_ms: Option<u64>, uses: Option<u32>, description: String) -> TokenRecord {
        TokenRecord {
            id: self.id.clone(),
            secret_hash: self.secret_hash(),
            created_ms: now_ms,
            // Saturating, so an absurdly long ttl means "practically never" instead of wrapping
            // around to a time in the past.
            expires_ms: ttl_ms.map(|ttl| now_ms.saturating_add(ttl)),
            uses_left: uses,
            revoked: false,
            description,
        }
    }

    /// Checks this presented token against `record` at `now_ms`.
    ///
    /// The secret is checked before anything else: someone without the secret learns only
    /// "wrong secret", never whether the token exists but is revoked, expired or used up.
    pub fn check_against(&self, record: &TokenRecord, now_ms: u64) -> Result<(), TokenError> {
        if self.id != record.id {
            return Err(TokenError::UnknownToken(self.id.clone()));
        }
        if !hashes_equal(&self.secret_hash(), &record.secret_hash) {
            return Err(TokenError::WrongSecret);
        }
        if record.revoked {
            return Err(TokenError::Revoked);
        }
        if let Some(expires_ms) = record.expires_ms {
            if now_ms >= expires_ms {
                return Err(TokenError::Expired { expired_ms: expires_ms });
            }
        }
        if record.uses_left == Some(0) {
            return Err(TokenError::UsedUp);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
