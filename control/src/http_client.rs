//! A small HTTP/1.1 client for the cluster's own endpoints (the dashboard reading collectors, a
//! collector reading its node's REST services' `/metrics`): one GET per connection over a
//! tokio `TcpStream` (or TLS over it), through hyper's connection API, with a deadline on the
//! whole exchange and a cap on the body it reads.
//!
//! Invariants: every call ends within its deadline (connect, handshake, request and body
//! included); a body is never read past `max_body` bytes (the reply says it was cut); an
//! `https` URL is reached only with a [`Pinned`] certificate, and only a server presenting
//! exactly that certificate is talked to (the caller reads it from the same file the server
//! serves, so no CA is involved); without one it is refused with an error that says so.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http;
use http_body_util::BodyExt;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

/// A reply: status, the headers the dashboard reads, and the body (possibly cut).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// The body had more than the cap.
    pub cut: bool,
}

/// A URL's scheme and `host:port`.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
}

/// `http://host:port` or `https://host:port` (and an optional path, ignored).
pub fn target(url: &str) -> Result<Target, String> {
    let url = url.trim();
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("{url}: not an http:// or https:// URL"));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || !host.contains(':') {
        return Err(format!("{url}: no host:port"));
    }
    Ok(Target {
        https,
        host: host.to_string(),
    })
}

/// The certificate an `https` server must present, and the TLS settings that insist on it.
#[derive(Clone, Debug)]
pub struct Pinned {
    config: Arc<rustls::ClientConfig>,
}

impl Pinned {
    /// Pins the first certificate of a PEM chain (the server's own, as `--rest-tls-cert`
    /// holds it).
    pub fn from_pem(pem: &[u8]) -> Result<Pinned, String> {
        use rustls::pki_types::pem::PemObject;
        let leaf = CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or("holds no PEM certificate")?
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedLeaf {
            leaf,
            signatures: crate::pki::Signatures(Arc::clone(&provider)),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Pinned {
            config: Arc::new(config),
        })
    }

    /// [`Pinned::from_pem`] of a file.
    pub fn from_file(path: &std::path::Path) -> Result<Pinned, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Pinned::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Trusts exactly one certificate; the handshake's signatures are checked as usual.
#[derive(Debug)]
struct PinnedLeaf {
    leaf: CertificateDer<'static>,
    signatures: crate::pki::Signatures,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's certificate is not the one pinned".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Percent-encodes `s` for a URL path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET base_url + path_and_query` with `Authorization: Bearer token`, within `deadline`
/// (plain HTTP only).
pub async fn get(
    base_url: &str,
    path_and_query: &str,
    token: Option<&str>,
    deadline: Duration,
    max_body: usize,
) -> Result<Reply, String> {
    get_with(base_url, path_and_query, token, deadline, max_body, None).await
}

/// [`get`], reaching an `https` URL through `tls`.
pub async fn get_with(
    base_url: &str,
    path_and_query: &str,
    token: Option<&str>,
    deadline: Duration,
    max_body: usize,
    tls: Option<&Pinned>,
) -> Result<Reply, String> {
    let t = target(base_url)?;
    let host = t.host.as_str();
    let tls = match (t.https, tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls),
        (true, None) => {
            return Err(format!(
                "{base_url}: an https URL needs the certificate its server presents"
            ))
        }
    };
    let call = async {
        let tcp = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| format!("cannot connect to {host}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            return exchange(tcp, host, path_and_query, token, max_body).await;
        };
        let name = host
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(host);
        let name =
            ServerName::try_from(name.to_string()).map_err(|e| format!("{base_url}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        exchange(stream, host, path_and_query, token, max_body).await
    };
    match tokio::time::timeout(deadline, call).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{base_url} did not answer within {} ms",
            deadline.as_millis()
        )),
    }
}

async fn exchange<S>(
    io: S,
    host: &str,
    path_and_query: &str,
    token: Option<&str>,
    max_body: usize,
) -> Result<Reply, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake with {host}: {e}"))?;
    // The connection is driven by its own task; it ends when the exchange is dropped.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder()
        .method(http::Method::GET)
        .uri(path_and_query)
        .header(http::header::HOST, host)
        .header(http::header::CONNECTION, "close");
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| format!("request {path_and_query}: {e}"))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {host}{path_and_query}: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        let mut cut = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading from {host}: {e}"))?;
            if let Ok(data) = frame.into_data() {
                let room = max_body.saturating_sub(out.len());
                if data.len() > room {
                    out.extend_from_slice(&data[..room]);
                    cut = true;
                    break;
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Reply {
            status,
            headers,
            body: out,
            cut,
        })
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_scheme_and_authority() {
        let t = |u: &str| target(u).map(|t| (t.https, t.host));
        assert_eq!(
            t("http://127.0.0.1:9082"),
            Ok((false, "127.0.0.1:9082".into()))
        );
        assert_eq!(t("http://h:1/x"), Ok((false, "h:1".into())));
        assert_eq!(t("https://h:1"), Ok((true, "h:1".into())));
        assert!(target("ftp://h:1").is_err());
        assert!(target("http://").is_err());
        assert!(target("http://h").is_err(), "no port");
    }

    /// A self-signed certificate for 127.0.0.1: (certificate PEM, key PEM).
    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("a certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// An HTTPS server on 127.0.0.1 with `cert`/`key` answering every request with `body`.
    async fn https_server(cert: &str, key: &str, body: &'static str) -> String {
        let config = crate::rest::https::server_config(cert.as_bytes(), key.as_bytes())
            .expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((tcp, _)) = l.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        format!("https://{addr}")
    }

    #[tokio::test]
    async fn https_reaches_only_the_pinned_certificate() {
        let (cert, key) = self_signed();
        let url = https_server(&cert, &key, "hello over tls").await;
        let wait = Duration::from_secs(5);
        let pinned = Pinned::from_pem(cert.as_bytes()).expect("pin");
        let r = get_with(&url, "/metrics", Some("t"), wait, 1024, Some(&pinned))
            .await
            .expect("the pinned server answers");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello over tls"[..]));

        // Another certificate (even one for the same address) is refused.
        let (other, _) = self_signed();
        let wrong = Pinned::from_pem(other.as_bytes()).expect("pin");
        let e = get_with(&url, "/metrics", Some("t"), wait, 1024, Some(&wrong))
            .await
            .expect_err("not the pinned certificate");
        assert!(e.contains("TLS with"), "{e}");
        // Without a pin, https is refused before connecting anywhere.
        let e = get(&url, "/metrics", Some("t"), wait, 1024)
            .await
            .expect_err("no pin");
        assert!(e.contains("needs the certificate"), "{e}");
        assert!(Pinned::from_pem(b"not a certificate").is_err());
    }

    #[test]
    fn encoding_keeps_ids_readable() {
        assert_eq!(encode("abc-1.2_x~"), "abc-1.2_x~");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }

    #[tokio::test]
    async fn a_silent_server_ends_in_the_deadline() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            // Accept and say nothing.
            let c = l.accept().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(c);
        });
        let r = get(
            &format!("http://{addr}"),
            "/v1/snapshot",
            Some("t"),
            Duration::from_millis(200),
            1024,
        )
        .await;
        held.abort();
        let e = r.err().unwrap_or_default();
        assert!(e.contains("did not answer"), "{e}");
    }

    #[tokio::test]
    async fn bodies_are_capped() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = "x".repeat(100);
                let _ = c
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nx-log-end: 100\r\nContent-Length: 100\r\n\r\n{body}"
                        )
                        .as_bytes(),
                    )
                    .await;
                return req;
            }
            String::new()
        });
        let r = get(
            &format!("http://{addr}"),
            "/p?q=1",
            Some("tok"),
            Duration::from_secs(5),
            10,
        )
        .await
        .expect("a reply");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 10);
        assert!(r.cut);
        assert_eq!(
            r.headers.get("x-log-end").and_then(|v| v.to_str().ok()),
            Some("100")
        );
        let req = server.await.unwrap_or_default();
        assert!(req.starts_with("GET /p?q=1 HTTP/1.1"), "{req}");
        assert!(req.contains("authorization: Bearer tok"), "{req}");
    }
}
