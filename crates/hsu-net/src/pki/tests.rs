//! Tests of the cluster PKI: certificates, identities, chains and revocation.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ConnectionCommon, ServerConnection};
use x509_parser::extensions::ParsedExtension;

use super::*;

const ALPN: &[&[u8]] = &[b"hsu/1"];

fn leaf_der(certified: &CertifiedKey) -> Vec<u8> {
    certs_from_pem(&certified.cert_pem).unwrap()[0].to_vec()
}

/// The SANs of a certificate, rendered as strings like "DNS:x" and "URI:y".
fn sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let Some(san) = cert.subject_alternative_name().unwrap() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::URI(u) => format!("URI:{u}"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// (serverAuth, clientAuth) of a certificate's extended key usage.
fn eku(der: &[u8]) -> (bool, bool) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    (eku.server_auth, eku.client_auth)
}

/// A self-signed certificate with the given URI SANs, for identity parsing tests.
fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["example.test".to_owned()]).unwrap();
    for uri in uris {
        params.subject_alt_names.push(SanType::URI((*uri).to_owned().try_into().unwrap()));
    }
    params.self_signed(&key).unwrap().der().to_vec()
}

fn revoked_set() -> (Arc<Mutex<HashSet<Identity>>>, RevocationCheck) {
    let set = Arc::new(Mutex::new(HashSet::new()));
    let check_set = Arc::clone(&set);
    let check: RevocationCheck = Arc::new(move |id: &Identity| check_set.lock().unwrap().contains(id));
    (set, check)
}

fn never_revoked() -> RevocationCheck {
    Arc::new(|_: &Identity| false)
}

// ---------------------------------------------------------------------------------------------
// Certificate authority and issuing

#[test]
fn ca_round_trips_through_pem() {
    let ca = ClusterCa::generate("prod").unwrap();
    let loaded = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.fingerprint(), ca.fingerprint());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.key_pem(), ca.key_pem());

    // The loaded CA can really sign: its leaves verify under the original CA certificate.
    let node = loaded.issue_node(3, 30).unwrap();
    let chain = certs_from_pem(&node.cert_pem).unwrap();
    assert_eq!(chain[1].as_ref(), ca.cert_der().as_slice());
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&chain[1]).unwrap();
    leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert_eq!(leaf.issuer(), ca_cert.subject());
}

#[test]
fn ca_certificate_is_a_constrained_ca() {
    let ca = ClusterCa::generate("prod").unwrap();
    let der = ca.cert_der();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign());
    let years = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / (365 * 24 * 3600);
    assert_eq!(years, 10);
    assert_eq!(ca.fingerprint(), sha256(&der));
    assert!(!format!("{ca:?}").contains("PRIVATE"));
}

#[test]
fn ca_from_pem_rejects_inconsistent_material() {
    let ca = ClusterCa::generate("a").unwrap();
    let other = ClusterCa::generate("b").unwrap();
    let err = ClusterCa::from_pem(ca.cert_pem(), &other.key_pem()).unwrap_err();
    assert!(matches!(&err, PkiError::InvalidCa(m) if m.contains("different key")), "{err}");

    // A leaf certificate is not a CA even with its own key.
    let node = ca.issue_node(1, 1).unwrap();
    let leaf_pem = pem_encode("CERTIFICATE", &leaf_der(&node));
    let err = ClusterCa::from_pem(&leaf_pem, &node.key_pem).unwrap_err();
    assert!(matches!(&err, PkiError::InvalidCa(m) if m.contains("not a ca")), "{err}");

    let err = ClusterCa::from_pem(&node.cert_pem, &node.key_pem).unwrap_err();
    assert!(matches!(err, PkiError::InvalidPem { .. }), "{err}");
    let err = ClusterCa::from_pem("garbage", &ca.key_pem()).unwrap_err();
    assert!(matches!(err, PkiError::InvalidPem { .. }), "{err}");
}

#[test]
fn ca_from_pem_drops_anything_but_the_certificate() {
    let ca = ClusterCa::generate("a").unwrap();
    // Someone concatenated the key into the certificate file; it must not travel into chains.
    let sloppy = format!("comment\n{}{}", ca.cert_pem(), ca.key_pem());
    let loaded = ClusterCa::from_pem(&sloppy, &ca.key_pem()).unwrap();
    assert!(!loaded.cert_pem().contains("PRIVATE KEY"));
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
}

#[test]
fn generate_rejects_bad_cluster_names() {
    assert!(matches!(ClusterCa::generate(""), Err(PkiError::InvalidClusterName(_))));
    assert!(matches!(ClusterCa::generate(&"x".repeat(65)), Err(PkiError::InvalidClusterName(_))));
    assert!(matches!(ClusterCa::generate("a\nb"), Err(PkiError::InvalidClusterName(_))));
}

#[test]
fn node_certificate_carries_node_identity() {
    let ca = ClusterCa::generate("prod").unwrap();
    let node = ca.issue_node(42, 30).unwrap();
    let der = leaf_der(&node);
    assert_eq!(identity_of(&der).unwrap(), Identity::Node(42));
    assert_eq!(sans(&der), ["DNS:node-42.hsu", "URI:hsu://node/42", "DNS:api.hsu"]);
    assert_eq!(eku(&der), (true, true));
    assert_eq!(certs_from_pem(&node.cert_pem).unwrap().len(), 2);
    key_from_pem(&node.key_pem).unwrap();
    assert!(!format!("{node:?}").contains(&node.key_pem));

    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / (24 * 3600);
    // 30 days plus the clock-skew allowance at the start.
    assert_eq!(days, 30);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
}

#[test]
fn serial_numbers_are_unique() {
    let ca = ClusterCa::generate("prod").unwrap();
    let a = leaf_der(&ca.issue_node(1, 1).unwrap());
    let b = leaf_der(&ca.issue_node(1, 1).unwrap());
    let (_, a) = x509_parser::parse_x509_certificate(&a).unwrap();
    let (_, b) = x509_parser::parse_x509_certificate(&b).unwrap();
    assert_ne!(a.raw_serial(), b.raw_serial());
    assert_eq!(a.raw_serial().len(), 16);
}

#[test]
fn validity_is_bounded() {
    let ca = ClusterCa::generate("prod").unwrap();
    assert!(matches!(ca.issue_node(1, 0), Err(PkiError::InvalidValidity { found: 0, .. })));
    assert!(matches!(ca.issue_admin("alice", 3651), Err(PkiError::InvalidValidity { found: 3651, .. })));
}

#[test]
fn admin_certificate_carries_admin_identity() {
    let ca = ClusterCa::generate("prod").unwrap();
    let admin = ca.issue_admin("alice-2", 7).unwrap();
    let der = leaf_der(&admin);
    assert_eq!(identity_of(&der).unwrap(), Identity::Admin("alice-2".to_owned()));
    assert_eq!(sans(&der), ["DNS:admin-alice-2.hsu", "URI:hsu://admin/alice-2"]);
    // Client only: an admin certificate must not be usable to serve as a node.
    assert_eq!(eku(&der), (false, true));
}

#[test]
fn admin_names_are_validated() {
    let ca = ClusterCa::generate("prod").unwrap();
    for bad in ["", "Alice", "a_b", "a.b", "a/b", "é", &"a".repeat(64)] {
        assert!(matches!(ca.issue_admin(bad, 1), Err(PkiError::InvalidAdminName(_))), "{bad:?} was accepted");
    }
    ca.issue_admin(&"a".repeat(63), 1).unwrap();
}

#[test]
fn identity_names() {
    assert_eq!(Identity::Node(7).dns_name(), "node-7.hsu");
    assert_eq!(Identity::Admin("bob".to_owned()).dns_name(), "admin-bob.hsu");
    assert_eq!(Identity::Node(7).uri(), "hsu://node/7");
    assert_eq!(Identity::Admin("bob".to_owned()).uri(), "hsu://admin/bob");
}

// ---------------------------------------------------------------------------------------------
// CSRs

#[test]
fn generated_csr_is_signed_for_the_chosen_node() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (csr_pem, key_pem) = generate_csr().unwrap();
    let cert_pem = ca.sign_node_csr(&csr_pem, &Identity::Node(9), 30).unwrap();
    let chain = certs_from_pem(&cert_pem).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(identity_of(&chain[0]).unwrap(), Identity::Node(9));
    assert_eq!(eku(&chain[0]), (true, true));

    // The certificate certifies the key that stayed with the node.
    let key = KeyPair::from_pem(&key_pem).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(leaf.public_key().raw, key.subject_public_key_info().as_slice());
}

#[test]
fn sign_node_csr_ignores_requested_identity() {
    let ca = ClusterCa::generate("prod").unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["node-999.hsu".to_owned()]).unwrap();
    params.subject_alt_names.extend([
        SanType::URI("hsu://node/999".to_owned().try_into().unwrap()),
        SanType::URI("hsu://admin/root".to_owned().try_into().unwrap()),
        SanType::DnsName("admin-root.hsu".to_owned().try_into().unwrap()),
    ]);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "admin-root.hsu");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();

    let cert_pem = ca.sign_node_csr(&csr_pem, &Identity::Node(5), 30).unwrap();
    let leaf = certs_from_pem(&cert_pem).unwrap()[0].to_vec();
    assert_eq!(identity_of(&leaf).unwrap(), Identity::Node(5));
    assert_eq!(sans(&leaf), ["DNS:node-5.hsu", "URI:hsu://node/5", "DNS:api.hsu"]);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let cn: Vec<_> = cert.subject().iter_common_name().map(|cn| cn.as_str().unwrap().to_owned()).collect();
    assert_eq!(cn, ["node-5.hsu"]);
    // The requested CA powers are not granted either.
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    for ext in cert.extensions() {
        if let ParsedExtension::KeyUsage(ku) = ext.parsed_extension() {
            assert!(!ku.key_cert_sign());
        }
    }
}

#[test]
fn tampered_csr_is_refused() {
    let ca = ClusterCa::generate("prod").unwrap();
    let (csr_pem, _) = generate_csr().unwrap();
    let mut der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).unwrap().as_ref().to_vec();
    // Alter one byte of the subject's common name: still a well-formed request, but the
    // signature no longer covers what is in it.
    let at = der.windows(4).position(|w| w == b"join").expect("the csr subject contains \"join\"");
    der[at] = b'J';
    let tampered = pem_encode("CERTIFICATE REQUEST", &der);
    let err = ca.sign_node_csr(&tampered, &Identity::Node(1), 30).unwrap_err();
    assert!(matches!(err, PkiError::CsrSignatureInvalid), "{err}");
    assert!(err.to_string().contains("signature"), "{err}");

    let err = ca.sign_node_csr("not a csr", &Identity::Node(1), 30).unwrap_err();
    assert!(matches!(err, PkiError::InvalidPem { .. }), "{err}");
    let garbage = pem_encode("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x01");
    let err = ca.sign_node_csr(&garbage, &Identity::Node(1), 30).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Identity parsing

#[test]
fn identity_of_without_hsu_uri_errors() {
    let ca = ClusterCa::generate("prod").unwrap();
    let err = identity_of(&ca.cert_der()).unwrap_err();
    assert!(matches!(&err, PkiError::MissingIdentity { found } if found == "no uri san"), "{err}");
    let err = identity_of(&cert_with_uris(&["https://example.test/x"])).unwrap_err();
    assert!(matches!(&err, PkiError::MissingIdentity { found } if found.contains("https://example.test/x")), "{err}");
    assert!(err.to_string().contains("hsu://node/<id>"), "{err}");
}

#[test]
fn identity_of_rejects_malformed_and_ambiguous_uris() {
    for uri in [
        "hsu://node/abc",
        "hsu://node/",
        "hsu://node/007",
        "hsu://node/+7",
        "hsu://node/18446744073709551616",
        "hsu://admin/Root",
        "hsu://admin/",
        "hsu://other/1",
    ] {
        let err = identity_of(&cert_with_uris(&[uri])).unwrap_err();
        assert!(matches!(&err, PkiError::MalformedIdentity { uri: u, .. } if u == uri), "{uri}: {err}");
    }
    let err = identity_of(&cert_with_uris(&["hsu://node/1", "hsu://node/2"])).unwrap_err();
    assert!(matches!(err, PkiError::AmbiguousIdentity(_)), "{err}");

    // Unrelated URIs next to the identity are fine.
    let der = cert_with_uris(&["spiffe://x/y", "hsu://node/0"]);
    assert_eq!(identity_of(&der).unwrap(), Identity::Node(0));
    let der = cert_with_uris(&["hsu://node/18446744073709551615"]);
    assert_eq!(identity_of(&der).unwrap(), Identity::Node(u64::MAX));

    let err = identity_of(b"\x30\x00").unwrap_err();
    assert!(matches!(err, PkiError::InvalidCertificate(_)), "{err}");
}

// ---------------------------------------------------------------------------------------------
// PEM helpers and files

#[test]
fn pem_encoding_matches_rcgen() {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["x.test".to_owned()]).unwrap().self_signed(&key).unwrap();
    assert_eq!(pem_encode("CERTIFICATE", cert.der()), cert.pem());
    // Every padding length round-trips.
    for der in [&b"a"[..], b"ab", b"abc", b""] {
        let pem = pem_encode("CERTIFICATE", der);
        let parsed: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed[0].as_ref(), der);
    }
}

#[test]
fn pem_parsers_report_what_they_expected() {
    let err = certs_from_pem("").unwrap_err();
    assert_eq!(err.to_string(), "invalid pem: expected at least one CERTIFICATE block, found none");
    let err = key_from_pem("").unwrap_err();
    assert!(err.to_string().starts_with("invalid pem: expected a PRIVATE KEY block"), "{err}");
}

#[test]
fn write_private_creates_0600_and_replaces_atomically() {
    let dir = std::env::temp_dir().join(format!("hsu-pki-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.key");

    write_private(&path, b"first").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"first");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");

    // Replacing keeps 0600 even if someone loosened the old file: the old inode is swapped out,
    // not rewritten, so a reader holding it open still sees the complete old contents.
    fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
    let mut old_reader = File::open(&path).unwrap();
    write_private(&path, b"second, longer").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"second, longer");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    let mut old = String::new();
    old_reader.read_to_string(&mut old).unwrap();
    assert_eq!(old, "first");

    // No temp files are left behind.
    let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["node.key"]);

    // A failure (target is a directory) leaves no temp file either.
    let sub = dir.join("sub");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("x"), b"x").unwrap();
    assert!(write_private(&sub, b"nope").is_err());
    let mut names: Vec<_> =
        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["node.key", "sub"]);

    // The temp file is private from the moment it exists, before write_private tightens it
    // further: no group or other bit survives creation under any umask.
    let fresh = dir.join("fresh");
    let file = create_private(&fresh).unwrap();
    let mode = file.metadata().unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    assert!(create_private(&fresh).is_err(), "an existing file must not be reused");

    fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// TLS handshakes, in memory

/// Moves TLS records between two in-memory connections until neither has anything to send,
/// returning the first error each side hit.
fn pump(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> (Option<rustls::Error>, Option<rustls::Error>) {
    let mut client_err = None;
    let mut server_err = None;
    for _ in 0..50 {
        let to_server = drain(client);
        if !to_server.is_empty() && server_err.is_none() {
            server_err = feed(server, &to_server).err();
        }
        let to_client = drain(server);
        if !to_client.is_empty() && client_err.is_none() {
            client_err = feed(client, &to_client).err();
        }
        if to_server.is_empty() && to_client.is_empty() {
            return (client_err, server_err);
        }
    }
    panic!("connections kept talking");
}

fn drain<D>(conn: &mut ConnectionCommon<D>) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn feed<D>(conn: &mut ConnectionCommon<D>, mut data: &[u8]) -> Result<(), rustls::Error> {
    while !data.is_empty() {
        conn.read_tls(&mut data).unwrap();
        conn.process_new_packets()?;
    }
    Ok(())
}

/// Everything the server has received as application data so far.
fn received(server: &mut ServerConnection) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = server.reader().read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

struct Handshake {
    client: ClientConnection,
    server: ServerConnection,
    client_err: Option<rustls::Error>,
    server_err: Option<rustls::Error>,
}

impl Handshake {
    /// Runs a handshake, then sends `ping` from client to server if it succeeded.
    fn run(
        client_config: impl Into<Arc<rustls::ClientConfig>>,
        server_config: &Arc<rustls::ServerConfig>,
        server_name: &str,
    ) -> Self {
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let mut client = ClientConnection::new(client_config.into(), name).unwrap();
        let mut server = ServerConnection::new(Arc::clone(server_config)).unwrap();
        let (client_err, server_err) = pump(&mut client, &mut server);
        let mut hs = Self { client, server, client_err, server_err };
        if hs.ok() {
            hs.client.writer().write_all(b"ping").unwrap();
            let (c, s) = pump(&mut hs.client, &mut hs.server);
            assert!(c.is_none() && s.is_none(), "{c:?} {s:?}");
        }
        hs
    }

    fn ok(&self) -> bool {
        self.client_err.is_none()
            && self.server_err.is_none()
            && !self.client.is_handshaking()
            && !self.server.is_handshaking()
    }

    fn peer_identity(&self) -> Option<Identity> {
        self.server.peer_certificates().map(|certs| identity_of(certs[0].as_ref()).unwrap())
    }
}

struct Cluster {
    ca: ClusterCa,
    server: CertifiedKey,
}

impl Cluster {
    fn new(name: &str) -> Self {
        let ca = ClusterCa::generate(name).unwrap();
        let server = ca.issue_node(1, 30).unwrap();
        Self { ca, server }
    }

    fn mutual_server(&self, is_revoked: RevocationCheck) -> Arc<rustls::ServerConfig> {
        let verifier = RevocationAwareVerifier::new(self.ca.cert_der(), is_revoked).unwrap();
        Arc::new(server_config(&self.server, verifier, ALPN).unwrap())
    }

    fn client(&self, cert: Option<&CertifiedKey>) -> rustls::ClientConfig {
        client_config(self.ca.cert_pem(), cert, ALPN).unwrap()
    }
}

#[test]
fn handshake_with_valid_node_certificate_identifies_the_peer() {
    let cluster = Cluster::new("test");
    let server = cluster.mutual_server(never_revoked());
    let node = cluster.ca.issue_node(2, 30).unwrap();
    let mut hs = Handshake::run(cluster.client(Some(&node)), &server, "node-1.hsu");
    assert!(hs.ok(), "{:?} {:?}", hs.client_err, hs.server_err);
    assert_eq!(hs.peer_identity(), Some(Identity::Node(2)));
    assert_eq!(hs.server.alpn_protocol(), Some(&b"hsu/1"[..]));
    assert_eq!(hs.server.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(received(&mut hs.server), b"ping");

    // An administrator's client certificate is accepted the same way.
    let admin = cluster.ca.issue_admin("alice", 1).unwrap();
    let hs = Handshake::run(cluster.client(Some(&admin)), &server, "node-1.hsu");
    assert!(hs.ok(), "{:?} {:?}", hs.client_err, hs.server_err);
    assert_eq!(hs.peer_identity(), Some(Identity::Admin("alice".to_owned())));
}

#[test]
fn handshake_with_csr_issued_certificate() {
    let cluster = Cluster::new("test");
    let server = cluster.mutual_server(never_revoked());
    let (csr_pem, key_pem) = generate_csr().unwrap();
    let cert_pem = cluster.ca.sign_node_csr(&csr_pem, &Identity::Node(77), 30).unwrap();
    let node = CertifiedKey { cert_pem, key_pem };
    let hs = Handshake::run(cluster.client(Some(&node)), &server, "node-1.hsu");
    assert!(hs.ok(), "{:?} {:?}", hs.client_err, hs.server_err);
    assert_eq!(hs.peer_identity(), Some(Identity::Node(77)));
}

/// A client that only speaks TLS 1.2, which our own `client_config` never restricts itself to.
fn tls12_client(cluster: &Cluster, node: &CertifiedKey) -> rustls::ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(cluster.ca.cert_der())).unwrap();
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs_from_pem(&node.cert_pem).unwrap(), key_from_pem(&node.key_pem).unwrap())
        .unwrap()
}

#[test]
fn tls12_clients_are_served_with_client_auth() {
    let cluster = Cluster::new("test");
    let server = cluster.mutual_server(never_revoked());
    let node = cluster.ca.issue_node(2, 30).unwrap();
    let tls12_client = tls12_client(&cluster, &node);
    let hs = Handshake::run(tls12_client, &server, "node-1.hsu");
    assert!(hs.ok(), "{:?} {:?}", hs.client_err, hs.server_err);
    assert_eq!(hs.server.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(hs.peer_identity(), Some(Identity::Node(2)));
}

#[test]
fn handshake_without_client_certificate_is_refused() {
    let cluster = Cluster::new("test");
    let server = cluster.mutual_server(never_revoked());
    let mut hs = Handshake::run(cluster.client(None), &server, "node-1.hsu");
    assert!(!hs.ok());
    assert_eq!(hs.server_err, Some(rustls::Error::NoCertificatesPresented));
    assert!(hs.client_err.is_some());
    assert!(received(&mut hs.server).is_empty());
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let cluster = Cluster::new("test");
    let server = cluster.mutual_server(never_revoked());
    let foreign_ca = ClusterCa::generate("elsewhere").unwrap();
    let foreign = foreign_ca.issue_node(2, 30).unwrap();
    let hs = Handshake::run(cluster.client(Some(&foreign)), &server, "node-1.hsu");
    assert!(!hs.ok());
    assert!(
        matches!(hs.server_err, Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))),
        "{:?}",
        hs.server_err
    );
}

#[test]
fn client_refuses_server_from_another_ca() {
    let cluster = Cluster::new("test");
    let foreign = Cluster::new("foreign");
    let server = foreign.mutual_server(never_revoked());
    let node = cluster.ca.issue_node(2, 30).unwrap();
    let hs = Handshake::run(cluster.client(Some(&node)), &server, "node-1.hsu");
    assert!(matches!(hs.client_err, Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))));
}

#[test]
fn client_checks_the_server_node_name() {
    let cluster = Cluster::new("test");
    let server = cluster.mutual_server(never_revoked());
    let node = cluster.ca.issue_node(2, 30).unwrap();
    let hs = Handshake::run(cluster.client(Some(&node)), &server, "node-2.hsu");
    assert!(
        matches!(
            hs.client_err,
            Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }))
        ),
        "{:?}",
        hs.client_err
    );
}

#[test]
fn revoked_identity_is_refused_immediately() {
    let cluster = Cluster::new("test");
    let (revoked, check) = revoked_set();
    let server = cluster.mutual_server(check);
    let good = cluster.ca.issue_node(2, 30).unwrap();
    let bad = cluster.ca.issue_node(3, 30).unwrap();

    // Before revocation both are accepted...
    let hs = Handshake::run(cluster.client(Some(&bad)), &server, "node-1.hsu");
    assert!(hs.ok(), "{:?} {:?}", hs.client_err, hs.server_err);

    // ...and after it, the very same server config refuses node 3 but still accepts node 2.
    revoked.lock().unwrap().insert(Identity::Node(3));
    let mut hs = Handshake::run(cluster.client(Some(&bad)), &server, "node-1.hsu");
    assert!(!hs.ok());
    assert_eq!(hs.server_err, Some(rustls::Error::InvalidCertificate(CertificateError::Revoked)));
    assert!(received(&mut hs.server).is_empty());

    let hs = Handshake::run(cluster.client(Some(&good)), &server, "node-1.hsu");
    assert!(hs.ok(), "{:?} {:?}", hs.client_err, hs.server_err);
    assert_eq!(hs.peer_identity(), Some(Identity::Node(2)));
}

#[test]
fn revocation_cannot_be_bypassed_by_session_resumption() {
    let cluster = Cluster::new("test");
    let (revoked, check) = revoked_set();
    let server = cluster.mutual_server(check);
    let node = cluster.ca.issue_node(3, 30).unwrap();
    // One client config per protocol version, so its session cache offers the first session for
    // resumption (TLS 1.3 tickets, TLS 1.2 session ids).
    let tls13 = Arc::new(cluster.client(Some(&node)));
    let tls12 = Arc::new(tls12_client(&cluster, &node));
    for client in [&tls13, &tls12] {
        let hs = Handshake::run(Arc::clone(client), &server, "node-1.hsu");
        assert!(hs.ok(), "{:?} {:?}", hs.client_err, hs.server_err);
    }

    revoked.lock().unwrap().insert(Identity::Node(3));
    for client in [&tls13, &tls12] {
        let hs = Handshake::run(Arc::clone(client), &server, "node-1.hsu");
        assert_ne!(hs.client.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert_eq!(hs.server_err, Some(rustls::Error::InvalidCertificate(CertificateError::Revoked)));
    }
}

#[test]
fn client_certificate_without_identity_is_refused() {
    let cluster = Cluster::new("test");
    let server = cluster.mutual_server(never_revoked());
    // A certificate from the right CA but without an hsu URI (as another tool might mint).
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["stray.hsu".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &cluster.ca.issuer).unwrap();
    let stray = CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
    let hs = Handshake::run(cluster.client(Some(&stray)), &server, "node-1.hsu");
    assert!(!hs.ok());
    let err = hs.server_err.expect("server refused");
    assert!(err.to_string().contains("no hsu identity"), "{err}");
    assert!(matches!(pki_error_of(&err), Some(PkiError::MissingIdentity { .. })), "{err:?}");
}

#[test]
fn pinned_client_accepts_the_right_ca_and_captures_it() {
    let cluster = Cluster::new("test");
    let server = cluster.mutual_server(never_revoked());
    // The joining node only checks the server's chain, so the server must not require a client
    // certificate from it; the optional-auth config is what a join endpoint uses.
    let join_server = Arc::new(
        server_config_optional_client_auth(&cluster.server, cluster.ca.cert_der(), never_revoked(), ALPN).unwrap(),
    );
    let (config, pinned) = pinned_client_config(cluster.ca.fingerprint(), ALPN).unwrap();
    // The server name is irrelevant to the pinned verifier: the joiner dials an address.
    let mut hs = Handshake::run(config, &join_server, "whatever.example");
    assert!(hs.ok(), "{:?} {:?}", hs.client_err, hs.server_err);
    assert_eq!(received(&mut hs.server), b"ping");
    assert_eq!(pinned.lock().unwrap().as_deref(), Some(cluster.ca.cert_der().as_slice()));

    // Against a mutual-auth server the pinned client (which has no certificate) is refused by
    // the server, not by its own verifier.
    let (config, _) = pinned_client_config(cluster.ca.fingerprint(), ALPN).unwrap();
    let hs = Handshake::run(config, &server, "node-1.hsu");
    assert_eq!(hs.server_err, Some(rustls::Error::NoCertificatesPresented));
}

#[test]
fn pinned_client_with_wrong_fingerprint_never_sends_data() {
    let cluster = Cluster::new("test");
    let join_server = Arc::new(
        server_config_optional_client_auth(&cluster.server, cluster.ca.cert_der(), never_revoked(), ALPN).unwrap(),
    );
    let other = ClusterCa::generate("other").unwrap();
    let (config, pinned) = pinned_client_config(other.fingerprint(), ALPN).unwrap();

    let name = ServerName::try_from("node-1.hsu").unwrap();
    let mut client = ClientConnection::new(Arc::new(config), name).unwrap();
    let mut server = ServerConnection::new(join_server).unwrap();
    // The secret is queued before the handshake even starts; rustls holds it back until the
    // server is authenticated, which must never happen here.
    client.writer().write_all(b"secret").unwrap();
    let (client_err, server_err) = pump(&mut client, &mut server);

    let client_err = client_err.expect("the client refused the server");
    assert!(matches!(pki_error_of(&client_err), Some(PkiError::FingerprintMismatch { .. })), "{client_err:?}");
    let message = client_err.to_string();
    assert!(message.contains("ca fingerprint mismatch"), "{message}");
    assert!(message.contains(&hex(&other.fingerprint())), "{message}");
    assert!(message.contains(&hex(&cluster.ca.fingerprint())), "{message}");
    assert!(matches!(server_err, Some(rustls::Error::AlertReceived(_))), "{server_err:?}");
    assert!(server.is_handshaking());
    assert!(received(&mut server).is_empty());
    assert_eq!(*pinned.lock().unwrap(), None);
}

#[test]
fn pinned_client_refuses_a_leaf_not_signed_by_the_pinned_ca() {
    // An impostor sends the real (public) CA certificate after a leaf from its own CA.
    let cluster = Cluster::new("test");
    // Same cluster name, so the impostor's leaf names the real CA's subject as its issuer.
    let impostor_ca = ClusterCa::generate("test").unwrap();
    let impostor_leaf = impostor_ca.issue_node(1, 30).unwrap();
    let forged = CertifiedKey {
        cert_pem: format!("{}{}", pem_encode("CERTIFICATE", &leaf_der(&impostor_leaf)), cluster.ca.cert_pem()),
        key_pem: impostor_leaf.key_pem,
    };
    let server =
        Arc::new(server_config_optional_client_auth(&forged, cluster.ca.cert_der(), never_revoked(), ALPN).unwrap());
    let (config, _) = pinned_client_config(cluster.ca.fingerprint(), ALPN).unwrap();
    let mut hs = Handshake::run(config, &server, "node-1.hsu");
    assert!(
        matches!(hs.client_err, Some(rustls::Error::InvalidCertificate(CertificateError::BadSignature))),
        "{:?}",
        hs.client_err
    );
    assert!(received(&mut hs.server).is_empty());
}

#[test]
fn optional_client_auth_accepts_anonymous_and_identifies_certified_clients() {
    let cluster = Cluster::new("test");
    let (revoked, check) = revoked_set();
    let server =
        Arc::new(server_config_optional_client_auth(&cluster.server, cluster.ca.cert_der(), check, ALPN).unwrap());

    let mut hs = Handshake::run(cluster.client(None), &server, "node-1.hsu");
    assert!(hs.ok(), "{:?} {:?}", hs.client_err, hs.server_err);
    assert_eq!(hs.peer_identity(), None);
    assert_eq!(received(&mut hs.server), b"ping");

    let admin = cluster.ca.issue_admin("ops", 1).unwrap();
    let hs = Handshake::run(cluster.client(Some(&admin)), &server, "node-1.hsu");
    assert!(hs.ok(), "{:?} {:?}", hs.client_err, hs.server_err);
    assert_eq!(hs.peer_identity(), Some(Identity::Admin("ops".to_owned())));

    // A presented certificate is still checked for revocation and for the right CA.
    revoked.lock().unwrap().insert(Identity::Admin("ops".to_owned()));
    let hs = Handshake::run(cluster.client(Some(&admin)), &server, "node-1.hsu");
    assert_eq!(hs.server_err, Some(rustls::Error::InvalidCertificate(CertificateError::Revoked)));
    let foreign = ClusterCa::generate("x").unwrap().issue_node(5, 1).unwrap();
    let hs = Handshake::run(cluster.client(Some(&foreign)), &server, "node-1.hsu");
    assert!(matches!(hs.server_err, Some(rustls::Error::InvalidCertificate(_))));
}

#[test]
fn server_config_requires_a_full_node_chain() {
    let cluster = Cluster::new("test");
    let verifier = RevocationAwareVerifier::new(cluster.ca.cert_der(), never_revoked()).unwrap();
    let leaf_only = CertifiedKey {
        cert_pem: pem_encode("CERTIFICATE", &leaf_der(&cluster.server)),
        key_pem: cluster.server.key_pem.clone(),
    };
    let err = server_config(&leaf_only, verifier.clone(), ALPN).unwrap_err();
    assert!(matches!(err, PkiError::IncompleteChain { found: 1 }), "{err}");

    let admin = cluster.ca.issue_admin("root", 1).unwrap();
    let err = server_config(&admin, verifier, ALPN).unwrap_err();
    assert!(matches!(err, PkiError::WrongIdentityKind { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// TLS over a real socket

#[test]
fn handshake_over_tcp() {
    let cluster = Cluster::new("test");
    let server_config = cluster.mutual_server(never_revoked());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();

    let server = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut conn = ServerConnection::new(server_config).unwrap();
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).unwrap();
        tls.write_all(b"pong").unwrap();
        tls.flush().unwrap();
        let peer = identity_of(conn.peer_certificates().unwrap()[0].as_ref()).unwrap();
        (buf, peer)
    });

    let node = cluster.ca.issue_node(8, 1).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("node-1.hsu").unwrap();
    let mut conn = ClientConnection::new(Arc::new(cluster.client(Some(&node))), name).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");

    let (got, peer) = server.join().unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(peer, Identity::Node(8));
}

// ---------------------------------------------------------------------------------------------
// Agent-only nodes

#[test]
fn agent_certificates_carry_their_role() {
    let cluster = Cluster::new("test");
    let (csr_pem, key_pem) = generate_csr().unwrap();
    let cert_pem = cluster.ca.sign_node_csr(&csr_pem, &Identity::Agent(12), 30).unwrap();
    let leaf = certs_from_pem(&cert_pem).unwrap()[0].to_vec();
    assert_eq!(identity_of(&leaf).unwrap(), Identity::Agent(12));
    // Dialled as any node is, but it does not serve the public API.
    assert_eq!(sans(&leaf), ["DNS:node-12.hsu", "URI:hsu://agent/12"]);
    assert_eq!(Identity::Agent(12).node_id(), Some(12));
    assert_eq!(Identity::Admin("a".into()).node_id(), None);

    // An agent serves its own node-to-node endpoint and is identified as an agent by a server.
    let agent = CertifiedKey { cert_pem, key_pem };
    let verifier = RevocationAwareVerifier::new(cluster.ca.cert_der(), never_revoked()).unwrap();
    server_config(&agent, verifier, ALPN).expect("an agent's certificate can serve");
    let server = cluster.mutual_server(never_revoked());
    let hs = Handshake::run(cluster.client(Some(&agent)), &server, "node-1.hsu");
    assert!(hs.ok(), "{:?} {:?}", hs.client_err, hs.server_err);
    assert_eq!(hs.peer_identity(), Some(Identity::Agent(12)));

    // A joining server pins the CA against the API; an agent's certificate is not an API server.
    let agent_api =
        Arc::new(server_config_optional_client_auth(&agent, cluster.ca.cert_der(), never_revoked(), ALPN).unwrap());
    let (config, pinned) = pinned_client_config(cluster.ca.fingerprint(), ALPN).unwrap();
    let hs = Handshake::run(config, &agent_api, "api.hsu");
    assert!(!hs.ok(), "a joining node accepted an agent-only node as its server");
    assert!(pinned.lock().unwrap().is_none());

    // Admin identities cannot be signed from a node CSR.
    let (csr_pem, _) = generate_csr().unwrap();
    let err = cluster.ca.sign_node_csr(&csr_pem, &Identity::Admin("root".into()), 30).unwrap_err();
    assert!(matches!(err, PkiError::WrongIdentityKind { .. }), "{err}");
}
