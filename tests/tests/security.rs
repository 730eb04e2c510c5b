//! What an outsider can do to a real two-node cluster: for every TCP port `session.json` lists
//! (function master, proxy, agent, etcd), a plaintext call, a TLS call without a client
//! certificate, and a call with a certificate from another CA are each refused, while the same
//! call with the node's credentials succeeds. A worker without the join token, or with a wrong
//! one, cannot join and is told why.
//!
//! The data worker's transfer port and the REST ports are another part's tests; they are
//! listed (and marked so) in what this test prints, so the list stays complete.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use yr_proto::agent_client::AgentClient;
use yr_proto::master_client::MasterClient;
use yr_proto::proxy_client::ProxyClient;
use yr_proto::{Empty, InstanceRef};
use yr_tests::cluster::{run_yr, Cluster, NodeOptions, Session};

/// Which service a port serves, and so which harmless call probes it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Service {
    Master,
    Proxy,
    Agent,
    Etcd,
}

/// A listener of a node, as its session lists it.
#[derive(Debug)]
struct Port {
    node: String,
    component: String,
    /// host:port
    address: String,
    /// None: not probed here (another part's tests cover it).
    service: Option<Service>,
}

fn ports(s: &Session) -> Vec<Port> {
    let mut out = Vec::new();
    for c in &s.components {
        let address = c
            .address
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string();
        let service = match c.name.as_str() {
            "function-master" => Some(Service::Master),
            "function-proxy" => Some(Service::Proxy),
            "function-agent" => Some(Service::Agent),
            "etcd" => Some(Service::Etcd),
            // The transfer port, the REST services, the collector and the dashboard (behind
            // their tokens: the collector's and dashboard's tests): another part's tests.
            "data-worker" | "meta-service" | "collector" | "dashboard" => None,
            // A scheduler serves nothing.
            _ if address.is_empty() => continue,
            other => panic!("a listener this test does not know: {other} at {address}"),
        };
        out.push(Port {
            node: s.node_id.clone(),
            component: c.name.clone(),
            address,
            service,
        });
    }
    if let Some(f) = &s.frontend_url {
        out.push(Port {
            node: s.node_id.clone(),
            component: "frontend (REST, in the proxy)".into(),
            address: f.trim_start_matches("http://").to_string(),
            service: None,
        });
    }
    out
}

/// How a client presents itself.
enum As {
    /// Plaintext HTTP/2.
    Plain,
    /// TLS trusting the cluster CA, no client certificate.
    NoCert,
    /// TLS trusting the cluster CA, with a certificate from another CA.
    Stranger,
    /// The node's own credentials.
    Member,
}

struct Creds {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    stranger_cert: String,
    stranger_key: String,
}

impl Creds {
    fn of(s: &Session) -> Creds {
        let read = |p: &Option<std::path::PathBuf>| {
            let p = p.as_ref().expect("the session names its TLS files");
            std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
        };
        // A CA of the outsider's own, and a certificate from it for the same names.
        let ca_key = rcgen::KeyPair::generate().expect("a key");
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("the other CA");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("a certificate from the other CA");
        Creds {
            ca: read(&s.tls_ca),
            cert: read(&s.tls_cert),
            key: read(&s.tls_key),
            stranger_cert: format!("{}{}", cert.pem(), ca_cert.pem()),
            stranger_key: key.serialize_pem(),
        }
    }

    fn tls(&self, who: &As) -> Option<ClientTlsConfig> {
        let base = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        match who {
            As::Plain => None,
            As::NoCert => Some(base),
            As::Stranger => {
                Some(base.identity(Identity::from_pem(&self.stranger_cert, &self.stranger_key)))
            }
            As::Member => Some(base.identity(Identity::from_pem(&self.cert, &self.key))),
        }
    }
}

fn endpoint(address: &str, tls: Option<ClientTlsConfig>) -> Endpoint {
    let e = match tls {
        Some(t) => Endpoint::from_shared(format!("https://{address}"))
            .expect("endpoint")
            .tls_config(t)
            .expect("TLS config"),
        None => Endpoint::from_shared(format!("http://{address}")).expect("endpoint"),
    };
    e.connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(5))
}

/// One harmless call on a gRPC service: Ok when the service answered it.
async fn grpc_call(service: Service, ch: Channel) -> Result<(), String> {
    let answered = |r: Result<(), Status>| match r {
        Ok(()) => Ok(()),
        // The agent checks the instance ID: an answer about it is the service's own.
        Err(s) if service == Service::Agent && s.code() == Code::InvalidArgument => Ok(()),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    };
    match service {
        Service::Master => answered(MasterClient::new(ch).status(Empty {}).await.map(|_| ())),
        Service::Proxy => answered(ProxyClient::new(ch).load(Empty {}).await.map(|_| ())),
        Service::Agent => answered(
            AgentClient::new(ch)
                .stop_instance(InstanceRef {
                    instance_id: "no-such-instance".into(),
                    name: String::new(),
                })
                .await
                .map(|_| ()),
        ),
        Service::Etcd => unreachable!("etcd is probed with its own client"),
    }
}

async fn probe(port: &Port, service: Service, creds: &Creds, who: &As) -> Result<(), String> {
    match service {
        Service::Etcd => {
            let scheme = if matches!(who, As::Plain) {
                "http"
            } else {
                "https"
            };
            let mut opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(3))
                .with_timeout(Duration::from_secs(5));
            if let Some(t) = creds.tls(who) {
                opts = opts.with_tls(t);
            }
            let url = format!("{scheme}://{}", port.address);
            let mut c = etcd_client::Client::connect([url], Some(opts))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let r = tokio::time::timeout(
                Duration::from_secs(6),
                c.get("/yr/", Some(etcd_client::GetOptions::new().with_prefix())),
            )
            .await
            .map_err(|_| "no answer within 6 s".to_string())?;
            r.map(|_| ()).map_err(|e| format!("range read: {e}"))
        }
        s => {
            let ch = endpoint(&port.address, creds.tls(who))
                .connect()
                .await
                .map_err(|e| format!("connect: {e:?}"))?;
            grpc_call(s, ch).await
        }
    }
}

#[test]
fn outsiders_are_refused_on_every_port_and_members_get_in() {
    let mut cluster = Cluster::start(NodeOptions::default());
    cluster.add_worker(NodeOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut probed = 0;
    for i in 0..cluster.node_count() {
        let s = cluster.session(i).clone();
        let creds = Creds::of(&s);
        for port in ports(&s) {
            let Some(service) = port.service else {
                println!(
                    "{} {} {}: not probed here (the transfer port's and REST's own tests)",
                    port.node, port.component, port.address
                );
                continue;
            };
            let outsiders = [
                ("plaintext", As::Plain),
                ("TLS without a client certificate", As::NoCert),
                ("a certificate from another CA", As::Stranger),
            ];
            for (what, who) in outsiders {
                let r = rt.block_on(probe(&port, service, &creds, &who));
                println!(
                    "{} {} {} — {what}: {}",
                    port.node,
                    port.component,
                    port.address,
                    match &r {
                        Ok(()) => "ANSWERED".to_string(),
                        Err(e) => format!("refused ({e})"),
                    }
                );
                assert!(
                    r.is_err(),
                    "{} of node {} at {} answered a call with {what}",
                    port.component,
                    port.node,
                    port.address
                );
                // A gRPC service completes a handshake without a client certificate (for
                // `Join`) and then refuses the call itself.
                if matches!(who, As::NoCert) && service != Service::Etcd {
                    let e = r.err().unwrap_or_default();
                    assert!(e.starts_with("Unauthenticated"), "{}: {e}", port.component);
                }
            }
            let r = rt.block_on(probe(&port, service, &creds, &As::Member));
            println!(
                "{} {} {} — the node's credentials: {r:?}",
                port.node, port.component, port.address
            );
            if let Err(e) = r {
                panic!(
                    "{} of node {} at {} refused the node's own credentials: {e}",
                    port.component, port.node, port.address
                );
            }
            probed += 1;
        }
    }
    // Two nodes: a master, proxy, agent and etcd on the first, a proxy and agent on the second.
    assert_eq!(
        probed, 6,
        "every gRPC and etcd port of both nodes was probed"
    );
}

#[test]
fn a_worker_needs_the_right_join_token() {
    let cluster = Cluster::start(NodeOptions::default());
    let master = cluster.master().master_address.clone();
    let token = cluster.join_token();
    let dir = cluster.root().join("outsider");
    let dir_s = dir.display().to_string();
    let start = |extra: &[&str]| {
        let mut args = vec![
            "start",
            "--worker",
            "--master-address",
            &master,
            "--ports",
            "auto",
            "--session-dir",
            &dir_s,
        ];
        args.extend_from_slice(extra);
        run_yr(&args)
    };
    let no_cert =
        || !dir.join("tls").join("node.pem").exists() && !dir.join("session.json").exists();

    let out = start(&[]).expect_err("a worker without a join token");
    assert!(out.stderr.contains("needs --join-token"), "{out}");
    assert!(out.stderr.contains("yr token --join"), "{out}");
    assert!(no_cert(), "nothing was started or written");

    // The right CA, a wrong secret: the master refuses to sign.
    let (_, hash) = token.rsplit_once('.').expect("<secret>.<hash>");
    let wrong_secret = format!("{}.{hash}", "0".repeat(32));
    let out = start(&["--join-token", &wrong_secret]).expect_err("a wrong secret");
    assert!(out.stderr.contains("the join token is wrong"), "{out}");
    assert!(no_cert(), "no certificate for a wrong token");

    // The right secret for another CA: the worker does not trust this master with it.
    let (secret, _) = token.rsplit_once('.').expect("<secret>.<hash>");
    let other_ca = format!("{secret}.{}", "0".repeat(16));
    let out = start(&["--join-token", &other_ca]).expect_err("a token for another CA");
    assert!(
        out.stderr
            .contains("not the master this join token belongs to"),
        "{out}"
    );
    assert!(no_cert(), "no certificate when the CA does not match");

    let out = start(&["--join-token", "not-a-token"]).expect_err("a malformed token");
    assert!(out.stderr.contains("join-token"), "{out}");
}

#[test]
fn rest_serves_https_with_a_given_certificate_and_still_wants_the_token() {
    // The operator's certificate, from a CA of their own.
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_key = rcgen::KeyPair::generate().expect("a key");
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("a CA");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    // Not the CA's name: a certificate named as its issuer looks self-signed to curl.
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "the operator's REST server");
    let cert = params.signed_by(&key, &issuer).expect("a certificate");
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let (ca_file, cert_file, key_file) = (
        write("ca.pem", ca.pem()),
        write("rest.pem", cert.pem()),
        write("rest.key", key.serialize_pem()),
    );
    let cluster = Cluster::start(NodeOptions {
        extra: vec![
            "--rest-tls-cert".into(),
            cert_file,
            "--rest-tls-key".into(),
            key_file,
        ],
        ..Default::default()
    });
    let s = cluster.master();
    let token_file = s.token_file.clone().expect("the master has a token");
    let token = std::fs::read_to_string(&token_file).expect("token");
    for url in [s.frontend_url.clone(), s.meta_url.clone()] {
        let url = url.expect("the master serves REST");
        assert!(url.starts_with("https://"), "{url}");
        let curl = |extra: &[&str], path: &str| {
            let out = std::process::Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "5",
                ])
                .args(extra)
                .arg(format!("{url}{path}"))
                .output()
                .expect("run curl");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let auth = format!("Authorization: Bearer {}", token.trim());
        assert_eq!(curl(&["--cacert", &ca_file], "/healthz"), "200", "{url}");
        assert_eq!(
            curl(&["--cacert", &ca_file], "/openapi.json"),
            "401",
            "{url}: the token is still required"
        );
        assert_eq!(
            curl(&["--cacert", &ca_file, "-H", &auth], "/openapi.json"),
            "200",
            "{url}"
        );
        // Plain HTTP to the HTTPS port gets no answer.
        let plain = url.replacen("https://", "http://", 1);
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg(format!("{plain}/healthz"))
            .output()
            .expect("run curl");
        assert_ne!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "200",
            "{plain}"
        );
    }

    // The node's collector reads both services' /metrics over HTTPS, from a server presenting
    // exactly the operator's certificate.
    let collector = yr_tests::http::Svc {
        url: s.collector_url.clone().expect("a collector"),
        token: Some(
            cluster
                .yr(&["token", "--collector"])
                .expect_ok("yr token --collector")
                .stdout
                .trim()
                .to_string(),
        ),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = yr_tests::http::http(&collector, "GET", "/metrics", "");
        assert_eq!(r.status, 200, "{}", r.body);
        let up = |service: &str| {
            r.body.lines().any(|l| {
                l.starts_with("yr_rest_up{")
                    && l.contains(&format!("service=\"{service}\""))
                    && l.ends_with(" 1")
            })
        };
        if up("frontend") && up("meta-service") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the collector does not read the HTTPS services:\n{}",
            yr_tests::http::http(&collector, "GET", "/v1/snapshot", "").body
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
