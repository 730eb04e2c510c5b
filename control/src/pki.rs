//! The cluster's public-key infrastructure: its CA, node certificates, the join token, and the
//! joining side of `Join`.
//!
//! Trust model: a certificate signed by the cluster CA makes its holder a cluster member (every
//! internal gRPC service and etcd accept it). The CA's key stays on the master node (mode 0600);
//! the master signs a node's certificate only for a caller that shows the join token's secret.
//! The join token also carries a hash of the CA's certificate (like `kubeadm join`'s
//! `--discovery-token-ca-cert-hash`), so a joining node trusts a master only if it presents that
//! CA: the secret is never sent to an impostor.
//!
//! Invariants: a signed node certificate takes only the subject alternative names from the
//! request, never its CA flag or key usages; the token's secret is compared in constant time.

use std::sync::{Arc, Mutex};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::{Error, Result};

/// How many hex digits of the CA certificate's SHA-256 a join token carries.
pub const CA_HASH_HEX: usize = 16;

/// A PEM certificate (chain) and its private key.
pub struct Issued {
    /// The certificate, then the CA's certificate.
    pub chain_pem: String,
    pub key_pem: String,
}

/// A new cluster CA: its certificate and key (PEM).
pub fn new_ca() -> Result<Issued> {
    let key = KeyPair::generate().map_err(pki_err("a CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "yr cluster CA");
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(pki_err("the CA"))?;
    Ok(Issued {
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The parameters every node certificate gets: its names, and use as server and client.
fn node_params(sans: Vec<SanType>, cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

/// Subject alternative names from host names and addresses; names rcgen cannot encode are left
/// out (a host name with characters DNS does not allow).
pub fn sans(names: &[String]) -> Vec<SanType> {
    let mut out: Vec<SanType> = Vec::new();
    for n in names {
        let san = match n.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => match n.clone().try_into() {
                Ok(dns) => SanType::DnsName(dns),
                Err(_) => continue,
            },
        };
        if !out.contains(&san) {
            out.push(san);
        }
    }
    out
}

/// A node certificate for `names`, signed by the CA (`ca_pem`, `ca_key_pem`), with a new key.
pub fn issue_node(ca_pem: &str, ca_key_pem: &str, names: &[String]) -> Result<Issued> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(pki_err("the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(pki_err("the CA"))?;
    let key = KeyPair::generate().map_err(pki_err("a node key"))?;
    let cert = node_params(sans(names), "yr node")
        .signed_by(&key, &issuer)
        .map_err(pki_err("a node certificate"))?;
    Ok(Issued {
        chain_pem: format!("{}{}", cert.pem(), ca_pem),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate request for a new key and `names`: (request PEM, key PEM).
pub fn node_request(names: &[String]) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(pki_err("a node key"))?;
    // Only the names: the master decides everything else about the certificate.
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans(names);
    let csr = params
        .serialize_request(&key)
        .map_err(pki_err("a certificate request"))?;
    let pem = csr.pem().map_err(pki_err("a certificate request"))?;
    Ok((pem, key.serialize_pem()))
}

/// Signs a node's certificate request with the CA: the node's names from the request, nothing
/// else. Returns the certificate, then the CA's.
pub fn sign_request(ca_pem: &str, ca_key_pem: &str, csr_pem: &str) -> Result<String> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| Error::invalid("csr_pem", format!("not a certificate request: {e}")))?;
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(pki_err("the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(pki_err("the CA"))?;
    let cert = node_params(csr.params.subject_alt_names.clone(), "yr node")
        .signed_by(&csr.public_key, &issuer)
        .map_err(pki_err("a node certificate"))?;
    Ok(format!("{}{}", cert.pem(), ca_pem))
}

/// The first [`CA_HASH_HEX`] hex digits of the SHA-256 of a certificate's DER.
pub fn cert_hash(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..CA_HASH_HEX]
        .to_string()
}

/// The hash of the first certificate in `pem`.
pub fn pem_hash(pem: &str) -> Result<String> {
    let der = first_der(pem)?;
    Ok(cert_hash(&der))
}

fn first_der(pem: &str) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
        .map(|c| c.to_vec())
        .ok_or_else(|| Error::invalid("certificate", "no PEM certificate"))
}

/// A join token: `<secret>.<CA hash>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: String,
    pub ca_hash: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken(<secret>.{})", self.ca_hash)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.secret, self.ca_hash)
    }
}

impl JoinToken {
    /// Parses `<secret>.<CA hash>`.
    pub fn parse(s: &str) -> Result<JoinToken> {
        let bad = || {
            Error::invalid(
                "join-token",
                "expected <secret>.<16 hex digits> as `yr start --master` printed it (or \
                 `yr token --join` on the master shows it)",
            )
        };
        let (secret, hash) = s.trim().rsplit_once('.').ok_or_else(bad)?;
        let hex = |x: &str| x.bytes().all(|b| b.is_ascii_hexdigit());
        if secret.len() < 16 || !hex(secret) || hash.len() != CA_HASH_HEX || !hex(hash) {
            return Err(bad());
        }
        Ok(JoinToken {
            secret: secret.to_ascii_lowercase(),
            ca_hash: hash.to_ascii_lowercase(),
        })
    }

    /// Whether `given` is this token's secret, compared in constant time.
    pub fn secret_matches(&self, given: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// A new random token secret (32 hex digits).
pub fn new_secret() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| Error::Internal("no randomness for the join token".into()))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Connects to the master at `address` (host:port) and returns its CA certificate (PEM) if the
/// master presents a chain whose CA has `ca_hash` and whose certificate that CA signed for
/// `address`'s host; else an error that says the master is not the token's.
pub async fn fetch_pinned_ca(address: &str, ca_hash: &str) -> Result<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa {
        hash: ca_hash.to_string(),
        provider: Arc::clone(&provider),
        found: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(address);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| Error::invalid("master-address", format!("{address:?}: {e}")))?;
    let unreachable =
        |e: std::io::Error| Error::io(format!("cannot reach the master at {address}"), e);
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .map_err(|_| {
        unreachable(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within 5 s",
        ))
    })?
    .map_err(unreachable)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = connector.connect(name, tcp).await;
    let found = verifier.found.lock().map(|mut f| f.take()).ok().flatten();
    match (handshake, found) {
        (Ok(_), Some(der)) => {
            let c = CertificateDer::from(der);
            Ok(pem_of(&c))
        }
        (Err(e), _) => Err(Error::invalid(
            "join-token",
            format!(
                "the server at {address} is not the master this join token belongs to \
                 (its certificate is not from the CA {ca_hash}): {e}"
            ),
        )),
        (Ok(_), None) => Err(Error::Internal("the CA was not recorded".into())),
    }
}

fn pem_of(c: &CertificateDer<'_>) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in c.as_ref().chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A verifier that trusts a server whose chain includes a CA certificate with the pinned hash
/// and whose own certificate that CA signed for the name connected to.
#[derive(Debug)]
struct PinnedCa {
    hash: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    found: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| cert_hash(c.as_ref()) == self.hash)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "no certificate in its chain has hash {}",
                    self.hash
                ))
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA: {e}")))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("the pinned CA: {e}")))?;
        let ok = inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        if let Ok(mut f) = self.found.lock() {
            *f = Some(ca.as_ref().to_vec());
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Signatures(Arc::clone(&self.provider)).tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Signatures(Arc::clone(&self.provider)).tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Signatures(Arc::clone(&self.provider)).schemes()
    }
}

/// The handshake-signature half of a certificate verifier, as rustls does it with `provider`'s
/// algorithms: the custom verifiers here decide only which certificate to trust.
#[derive(Debug, Clone)]
pub(crate) struct Signatures(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl Signatures {
    pub(crate) fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub(crate) fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub(crate) fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn pki_err(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |e| Error::Internal(format!("cannot make {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_refuses_malformed_text() {
        let t = JoinToken {
            secret: "0123456789abcdef0123456789abcdef".into(),
            ca_hash: "00112233aabbccdd".into(),
        };
        assert_eq!(JoinToken::parse(&t.to_string()).expect("parses"), t);
        for bad in [
            "",
            "abc",
            "0123456789abcdef0123",
            "zz23456789abcdef.00112233aabbccdd",
            "0123456789abcdef.0011",
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
        assert!(t.secret_matches("0123456789abcdef0123456789abcdef"));
        assert!(!t.secret_matches("0123456789abcdef0123456789abcdee"));
        assert!(!t.secret_matches("0123456789abcdef"));
    }

    #[test]
    fn a_signed_request_keeps_only_the_names() {
        let ca = new_ca().expect("ca");
        let (csr, _key) = node_request(&["127.0.0.1".into(), "localhost".into()]).expect("csr");
        let chain = sign_request(&ca.chain_pem, &ca.key_pem, &csr).expect("signed");
        assert!(chain.ends_with(&ca.chain_pem));
        assert_eq!(pem_hash(&ca.chain_pem).expect("hash").len(), CA_HASH_HEX);
        // Our own PEM writer agrees with rcgen's.
        let der = first_der(&ca.chain_pem).expect("der");
        assert_eq!(pem_of(&CertificateDer::from(der)), ca.chain_pem);
        assert!(sign_request(&ca.chain_pem, &ca.key_pem, "not a csr").is_err());
    }
}
