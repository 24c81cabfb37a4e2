//! PEM in and out (certificates, keys, RFC 7468 encoding) and private files written 0600 from
//! the start.

use super::*;

/// Parses every CERTIFICATE block of a PEM document into rustls types, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::InvalidPem { expected: "CERTIFICATE blocks", found: e.to_string() })?;
    if certs.is_empty() {
        return Err(PkiError::InvalidPem { expected: "at least one CERTIFICATE block", found: "none".to_owned() });
    }
    Ok(certs)
}

/// Parses the first private key block of a PEM document into a rustls type.
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::InvalidPem { expected: "a PRIVATE KEY block", found: e.to_string() })
}

/// Writes a private file atomically (temp file in the same dir, fsync, rename) with mode 0600
/// from creation (never world-readable even briefly).
///
/// Readers see either the old or the new contents, never a torn write, and a crash leaves at worst
/// a stray `.<name>.tmp-*` file next to the target. Unix only, like the rest of HSU.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("expected a path to a file, found {}", path.display()))
    })?;
    // The temp file must be in the target's directory: rename is only atomic within one file
    // system.
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let result = (|| {
        let mut file = create_private(&tmp)?;
        // The umask can only remove bits from 0600; setting it again makes the mode exact even
        // under an unusual umask.
        file.set_permissions(Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // Syncing the directory makes the rename itself durable across a power loss.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: after a failed rename the temp file would otherwise linger. If the rename
        // succeeded the temp path no longer exists and this does nothing.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new file that is private to its owner from the first instant.
///
/// The mode is given to open(2) itself, so the file never exists with wider permissions even
/// briefly; `create_new` refuses to follow a pre-planted file or symlink at the path.
pub(super) fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// Lowercase hex, used in messages about fingerprints.
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Encodes DER as a PEM block with 64-character lines (RFC 7468).
/// A DER certificate as PEM text (what tonic, grpc libraries and files want).
pub fn cert_der_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // A chunk of k input bytes yields k + 1 significant characters; the rest is padding.
        for i in 0..4 {
            if i <= chunk.len() {
                let index = (n >> (18 - 6 * i)) & 0x3f;
                b64.push(char::from(ALPHABET[index as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    // Base64 output is ASCII, so splitting its bytes into lines never splits a character.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
