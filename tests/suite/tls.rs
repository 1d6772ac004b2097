//! TLS both ways, against real TLS peers: redis-cli `--tls` and a rustls client on respite's
//! TLS listener (mutual TLS, a tenant named by its certificate, certificates read again on
//! reload), and respite in front of a redis-server that only speaks TLS, with a CA the
//! test makes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use crate::admin::http;
use crate::harness::*;

/// A CA of the test's own: it signs certificates into files in `dir`.
struct Ca {
    issuer: rcgen::Issuer<'static, KeyPair>,
    /// The CA certificate's file (PEM).
    pem: PathBuf,
    dir: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca {
            issuer: rcgen::Issuer::new(params, key),
            pem,
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate with common name `cn` and `names` as its subjectAltNames (IP addresses
    /// become IP names), written as `<file>.pem` and `<file>.key`: their paths.
    fn sign(&self, file: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A certificate for a server on loopback.
    fn server(&self, file: &str) -> (PathBuf, PathBuf) {
        self.sign(file, "localhost", &["localhost", "127.0.0.1"])
    }
}

/// A redis-server that speaks only TLS (`--port 0`), killed on drop.
struct TlsRedis {
    port: u16,
    ca: PathBuf,
    child: Child,
    _dir: TempDir,
}

impl TlsRedis {
    fn start(ca: &Ca) -> TlsRedis {
        let (cert, key) = ca.server("redis");
        for _ in 0..5 {
            let port = free_port();
            let dir = TempDir::new();
            let child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--tls-cert-file")
                .arg(&cert)
                .arg("--tls-key-file")
                .arg(&key)
                .arg("--tls-ca-cert-file")
                .arg(&ca.pem)
                .args(["--tls-auth-clients", "no", "--dir"])
                .arg(&dir.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be on PATH");
            let mut r = TlsRedis {
                port,
                ca: ca.pem.clone(),
                child,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(r.child.try_wait(), Ok(None)) {
                if r.cli(&["PING"]) == "PONG\n" {
                    return r;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = r.child.kill();
        }
        panic!("a TLS redis-server did not start");
    }

    /// redis-cli over TLS, straight to Redis: what it really holds.
    fn cli(&self, args: &[&str]) -> String {
        tls_cli(self.port, &self.ca, &[], args)
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-cli --tls` on loopback `port`, trusting `ca`, with `more` options (a client
/// certificate, a login): its output, stdout then stderr.
fn tls_cli(port: u16, ca: &Path, more: &[&str], args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args([
            "--tls",
            "-h",
            "localhost",
            "-p",
            &port.to_string(),
            "--cacert",
        ])
        .arg(ca)
        .args(more)
        .args(args)
        .output()
        .expect("redis-cli must be on PATH");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The same, off the runtime's threads (respite runs on them).
async fn tls_cli_async(port: u16, ca: &Path, more: &[&str], args: &[&str]) -> String {
    let (ca, more, args) = (
        ca.to_path_buf(),
        more.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let more: Vec<&str> = more.iter().map(String::as_str).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tls_cli(port, &ca, &more, &args)
    })
    .await
    .unwrap()
}

/// A rustls client connection to `addr`, trusting `ca`, presenting `cert` if given.
async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    cert: Option<(&Path, &Path)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some((c, k)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(c).unwrap()],
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Waits (up to 10 s) until respite's TLS listener on `port` is bound: `Proxy` returns
/// before `run` binds it.
async fn listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the TLS listener is bound within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `requests` (RESP) at once and reads `count` replies: their text.
async fn exchange<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    stream: &mut S,
    requests: &[u8],
    count: usize,
) -> Vec<String> {
    exchange_slowly(stream, requests, count, Duration::ZERO).await
}

/// [`exchange`], reading nothing for `pause` first, then a little at a time: the replies
/// fill the sockets, and respite's TLS is left holding ciphertext they do not take.
async fn exchange_slowly<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    stream: &mut S,
    requests: &[u8],
    count: usize,
    pause: Duration,
) -> Vec<String> {
    let (mut read, mut write) = tokio::io::split(stream);
    let send = async {
        write.write_all(requests).await.unwrap();
        write.flush().await.unwrap();
    };
    let receive = async {
        tokio::time::sleep(pause).await;
        let mut buf = BytesMut::new();
        let mut replies = Vec::new();
        while replies.len() < count {
            match respite::wire::next_frame(&mut buf, 2).unwrap() {
                Some(f) => replies.push(String::from_utf8_lossy(&f.raw).into_owned()),
                // A slow reader takes a little at a time.
                None if !pause.is_zero() => {
                    let mut piece = [0u8; 16 * 1024];
                    let n = read.read(&mut piece).await.unwrap();
                    assert!(n > 0, "closed");
                    buf.extend_from_slice(&piece[..n]);
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                None => assert!(read.read_buf(&mut buf).await.unwrap() > 0, "closed"),
            }
        }
        replies
    };
    let ((), replies) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(send, receive)
    })
    .await
    .expect("every reply within 20 s");
    replies
}

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = BytesMut::new();
    respite::wire::encode_request(&mut out, args.iter().copied());
    out.to_vec()
}

const TENANTS: &str = "[[tenants]]\nid = \"acme\"\npassword = \"pa\"\n\
     [[tenants]]\nid = \"globex\"\npassword = \"pg\"\n";

/// respite in front of a TLS-only Redis (trusting `ca`), with a TLS listener presenting
/// `cert` beside the plain one; `tls` adds lines to `[server.tls]`.
fn tls_config(redis: &TlsRedis, tls_port: u16, cert: &(PathBuf, PathBuf), tls: &str) -> String {
    format!(
        "[server]\ntls_listen = \"127.0.0.1:{tls_port}\"\n\
         [server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{tls}\n\
         [upstream]\nurl = \"{}\"\nca_file = \"{}\"\ncommand_timeout_ms = 2000\n\
         connect_timeout_ms = 1000\n{TENANTS}",
        cert.0.display(),
        cert.1.display(),
        redis.url(),
        redis.ca.display(),
    )
}

/// redis-cli `--tls` through respite's TLS listener, to a redis-server that speaks only
/// TLS: the tenant's key lands behind its prefix, the plain listener serves beside it, and
/// a deep pipeline of large values crosses both TLS legs whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_over_tls_through_respite_to_a_tls_only_redis() {
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let redis = TlsRedis::start(&ca);
    let tls_port = free_port();
    let cert = ca.server("respite");
    let mut proxy = Proxy::start_config(&tls_config(&redis, tls_port, &cert, "")).await;
    listening(tls_port).await;
    let login = ["--user", "acme", "--pass", "pa", "--no-auth-warning"];
    let ok = tls_cli_async(tls_port, &ca.pem, &login, &["SET", "k", "over tls"]).await;
    assert_eq!(ok, "OK\n");
    let got = tls_cli_async(tls_port, &ca.pem, &login, &["GET", "k"]).await;
    assert_eq!(got, "over tls\n");
    assert_eq!(redis.cli(&["GET", "tenant:acme:k"]), "over tls\n");
    assert_eq!(redis.cli(&["EXISTS", "k"]), "0\n");
    // Without a login the TLS listener is as closed as the plain one.
    let refused = tls_cli_async(tls_port, &ca.pem, &[], &["GET", "k"]).await;
    assert_eq!(refused, "NOAUTH Authentication required.\n\n");
    // The plain listener, beside it.
    let mut plain = proxy.raw_as("globex", "pg").await;
    assert_eq!(plain.cmd(&["GET", "k"]).await, "$-1\r\n");

    // 200 requests in one write, half of them 64 KiB values: more than a TLS record and
    // more than the sockets take at once, both ways.
    let mut tls = tls_connect(
        format!("127.0.0.1:{tls_port}").parse().unwrap(),
        &ca.pem,
        None,
    )
    .await
    .unwrap();
    let big = |i: usize| vec![b'a' + (i % 26) as u8; 64 * 1024];
    let mut requests = resp(&[b"AUTH", b"acme", b"pa"]);
    for i in 0..100 {
        let key = format!("big{i}");
        requests.extend(resp(&[b"SET", key.as_bytes(), &big(i)]));
        requests.extend(resp(&[b"GET", key.as_bytes()]));
    }
    let replies = exchange_slowly(&mut tls, &requests, 201, Duration::from_millis(500)).await;
    assert_eq!(replies[0], "+OK\r\n");
    for i in 0..100 {
        assert_eq!(replies[1 + 2 * i], "+OK\r\n");
        let value = String::from_utf8(big(i)).unwrap();
        assert_eq!(
            replies[2 + 2 * i],
            format!("$65536\r\n{value}\r\n"),
            "GET big{i}"
        );
    }
    assert_eq!(redis.cli(&["STRLEN", "tenant:acme:big99"]), "65536\n");
    // QUIT's +OK arrives before the close (TLS holds nothing back).
    let replies = exchange(&mut tls, &resp(&[b"QUIT"]), 1).await;
    assert_eq!(replies, ["+OK\r\n"]);
    proxy.stop().await;
}

/// What a mutual-TLS test starts from: a TLS-only Redis and respite's certificate from
/// one CA, client certificates from another (`clients`), and the `[server.tls]` lines that
/// ask for them and let them name tenants (`tls`, for [`tls_config`]).
struct MutualTls {
    dir: TempDir,
    ca: Ca,
    clients: Ca,
    redis: TlsRedis,
    tls_port: u16,
    cert: (PathBuf, PathBuf),
    tls: String,
}

impl MutualTls {
    fn new() -> MutualTls {
        let dir = TempDir::new();
        let ca = Ca::new(&dir.0, "ca");
        let clients = Ca::new(&dir.0, "clients");
        let redis = TlsRedis::start(&ca);
        let cert = ca.server("respite");
        let tls = format!(
            "client_ca_file = \"{}\"\ntenant_from_cert = true\n",
            clients.pem.display()
        );
        MutualTls {
            dir,
            ca,
            clients,
            redis,
            tls_port: free_port(),
            cert,
            tls,
        }
    }
}

/// Mutual TLS with `tenant_from_cert`: a certificate the client CA signed logs the
/// connection in as the tenant it names, and RESET keeps it there; one naming no tenant
/// is refused with WRONGPASS; one from another CA, or none, fails the handshake, while
/// everyone else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_tenants_and_strangers_are_refused() {
    let MutualTls {
        dir,
        ca,
        clients,
        redis,
        tls_port,
        cert,
        tls,
    } = MutualTls::new();
    let stranger = Ca::new(&dir.0, "stranger");
    let trail = dir.0.join("audit.jsonl");
    let config = tls_config(&redis, tls_port, &cert, &tls)
        + &format!("[audit]\npath = \"{}\"\n", trail.display());
    let mut proxy = Proxy::start_config(&config).await;
    listening(tls_port).await;
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();

    // CN names the tenant.
    let (c, k) = clients.sign("acme", "acme", &[]);
    let mut acme = tls_connect(addr, &ca.pem, Some((&c, &k))).await.unwrap();
    let set = resp(&[b"SET", b"k", b"from a certificate"]);
    let replies = exchange(
        &mut acme,
        &[set, resp(&[b"RESET"]), resp(&[b"GET", b"k"])].concat(),
        3,
    )
    .await;
    assert_eq!(
        replies,
        ["+OK\r\n", "+RESET\r\n", "$18\r\nfrom a certificate\r\n"]
    );
    assert_eq!(redis.cli(&["GET", "tenant:acme:k"]), "from a certificate\n");
    // A DNS name names it when the common name does not.
    let (c, k) = clients.sign("globex", "a person", &["globex"]);
    let with_cert = ["--cert", c.to_str().unwrap(), "--key", k.to_str().unwrap()];
    let got = tls_cli_async(tls_port, &ca.pem, &with_cert, &["SET", "k", "g"]).await;
    assert_eq!(got, "OK\n");
    assert_eq!(redis.cli(&["GET", "tenant:globex:k"]), "g\n");

    // Signed by the client CA but naming no tenant: refused, and closed.
    let (c, k) = clients.sign("nobody", "nobody", &["nobody.example"]);
    let mut nobody = tls_connect(addr, &ca.pem, Some((&c, &k))).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), nobody.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "closed within 5 s");
    assert_eq!(
        String::from_utf8_lossy(&buf),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );

    // Another CA's certificate, and none at all: the handshake fails.
    let (c, k) = stranger.sign("acme-forged", "acme", &["acme"]);
    let forged = tls_connect(addr, &ca.pem, Some((&c, &k))).await;
    let mut forged_ok = false;
    if let Ok(mut s) = forged {
        // TLS 1.3 reports the refusal of a client certificate at the first read.
        let mut b = [0u8; 16];
        let _ = s.write_all(&resp(&[b"PING"])).await;
        forged_ok = matches!(s.read(&mut b).await, Ok(n) if n > 0);
    }
    assert!(!forged_ok, "a certificate from another CA is refused");
    let out = tls_cli_async(tls_port, &ca.pem, &[], &["PING"]).await;
    assert!(!out.contains("PONG"), "no certificate, no service: {out}");
    let with_forged = ["--cert", c.to_str().unwrap(), "--key", k.to_str().unwrap()];
    let out = tls_cli_async(tls_port, &ca.pem, &with_forged, &["GET", "k"]).await;
    assert!(!out.contains("from a certificate"), "{out}");
    // The plain listener knows nothing of certificates: a password, as ever.
    let mut plain = proxy.raw_as("acme", "pa").await;
    assert_eq!(
        plain.cmd(&["GET", "k"]).await,
        "$18\r\nfrom a certificate\r\n"
    );
    proxy.stop().await;

    // Each refusal is a refused login in the audit trail: who (the peer) and why.
    let lines = crate::audit::settled(&trail, 4).await;
    let why: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            let detail = l["detail"].as_str().unwrap_or("");
            let kind = match detail {
                d if d.contains("UnknownIssuer") => "UnknownIssuer",
                d if d.contains("no certificates") => "none",
                _ => "",
            };
            (
                l["via"].as_str().unwrap(),
                l["reason"].as_str().unwrap(),
                kind,
            )
        })
        .collect();
    assert_eq!(
        why,
        [
            ("TLS", "certificate_names_no_tenant", ""),
            ("TLS", "bad_certificate", "UnknownIssuer"),
            ("TLS", "bad_certificate", "none"),
            ("TLS", "bad_certificate", "UnknownIssuer"),
        ],
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .all(|l| l["event"] == "auth_failed" && l["peer"].is_string()));
}

/// The binary logs why a handshake failed: an operator sees the bad certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_client_certificate_is_logged() {
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let stranger = Ca::new(&dir.0, "stranger");
    let redis = TlsRedis::start(&ca);
    let tls_port = free_port();
    let cert = ca.server("respite");
    let tls = format!("client_ca_file = \"{}\"\n", ca.pem.display());
    let file = dir.0.join("respite.toml");
    std::fs::write(&file, tls_config(&redis, tls_port, &cert, &tls)).unwrap();
    let mut respite = Command::new(env!("CARGO_BIN_EXE_respite"))
        .arg("--config")
        .arg(&file)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A connection that closes before any handshake (this probe, a load balancer's) is
    // not worth a warning; the forged certificate below is.
    listening(tls_port).await;
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let (c, k) = stranger.sign("forged", "acme", &[]);
    if let Ok(mut s) = tls_connect(addr, &ca.pem, Some((&c, &k))).await {
        let _ = s.write_all(&resp(&[b"PING"])).await;
        let mut b = [0u8; 16];
        let _ = s.read(&mut b).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = respite.kill();
    let out = respite.wait_with_output().unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS handshake failed"))
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "one line, for the forged certificate:\n{log}"
    );
    let line = failed[0];
    assert!(line.contains("UnknownIssuer"), "{line}");
    assert!(line.contains("127.0.0.1"), "the peer is named: {line}");
}

/// A reload reads the certificate files again: a certificate renewed under the same file
/// names (here by another CA) is what connections accepted after the reload see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_a_renewed_certificate() {
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let renewed = Ca::new(&dir.0, "renewed");
    let redis = TlsRedis::start(&ca);
    let tls_port = free_port();
    let cert = ca.server("respite");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let file = dir.0.join("respite.toml");
    let text = tls_config(&redis, tls_port, &cert, "")
        + &format!("[admin]\nlisten = \"{admin}\"\ntoken = \"admin-token\"\n");
    std::fs::write(&file, &text).unwrap();
    let mut proxy = Proxy::start_file(&file).await;
    listening(tls_port).await;
    let login = ["--user", "acme", "--pass", "pa", "--no-auth-warning"];
    assert_eq!(
        tls_cli_async(tls_port, &ca.pem, &login, &["PING"]).await,
        "PONG\n"
    );
    let untrusted = tls_cli_async(tls_port, &renewed.pem, &login, &["PING"]).await;
    assert!(!untrusted.contains("PONG"), "{untrusted}");

    let new = renewed.server("new");
    std::fs::copy(&new.0, &cert.0).unwrap();
    std::fs::copy(&new.1, &cert.1).unwrap();
    let (status, body) = http(admin, "POST", "/reload", Some("admin-token")).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["needs_restart"], json!([]));
    assert_eq!(
        tls_cli_async(tls_port, &renewed.pem, &login, &["PING"]).await,
        "PONG\n"
    );
    let old = tls_cli_async(tls_port, &ca.pem, &login, &["PING"]).await;
    assert!(!old.contains("PONG"), "{old}");

    // A key that is not the certificate's: the reload is refused, the renewed one stays.
    std::fs::copy(cert.1.with_file_name("redis.key"), &cert.1).unwrap();
    let (status, body) = http(admin, "POST", "/reload", Some("admin-token")).await;
    assert_ne!(status, 200, "{body}");
    assert_eq!(
        tls_cli_async(tls_port, &renewed.pem, &login, &["PING"]).await,
        "PONG\n"
    );
    proxy.stop().await;
}

/// A Redis whose certificate does not chain to the CA respite trusts is not used: the
/// client gets Redis-unavailable, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_redis_certificate_is_refused() {
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let other = Ca::new(&dir.0, "other");
    let redis = TlsRedis::start(&ca);
    let text = format!(
        "[upstream]\nurl = \"{}\"\nca_file = \"{}\"\ncommand_timeout_ms = 2000\n\
         connect_timeout_ms = 1000\n{TENANTS}",
        redis.url(),
        other.pem.display()
    );
    let mut proxy = Proxy::start_config(&text).await;
    let mut c = proxy.raw_as("acme", "pa").await;
    let reply = c.cmd(&["GET", "k"]).await;
    assert!(reply.starts_with("-ERR"), "{reply}");
    assert!(
        reply.contains("TLS handshake failed") && reply.contains("UnknownIssuer"),
        "{reply}"
    );
    proxy.stop().await;
}

/// check-config names each TLS mistake.
#[test]
fn tls_mistakes_are_config_errors() {
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let (cert, key) = ca.server("server");
    let (_, other_key) = ca.server("other");
    let errors = |text: &str| match respite::config::Config::parse(text) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    let tls = |lines: &str| {
        format!(
            "[server]\ntls_listen = \"127.0.0.1:6390\"\n[server.tls]\ncert_file = \"{}\"\n{lines}",
            cert.display()
        )
    };
    let key_line = format!("key_file = \"{}\"\n", key.display());
    assert_eq!(errors(&tls(&key_line)), "");
    assert!(errors("[server]\ntls_listen = \"127.0.0.1:6390\"\n")
        .contains("server.tls_listen needs [server.tls]"));
    let e = errors(&tls(&format!("key_file = \"{}\"\n", other_key.display())));
    assert!(e.contains("[server.tls]"), "{e}");
    let e = errors(&tls("key_file = \"/nonexistent/key.pem\"\n"));
    assert!(e.contains("/nonexistent/key.pem"), "{e}");
    let e = errors(&tls(&format!("{key_line}tenant_from_cert = true\n")));
    assert!(e.contains("tenant_from_cert needs client_ca_file"), "{e}");
    let e = errors(&format!(
        "[upstream]\nurl = \"redis://127.0.0.1:6379\"\nca_file = \"{}\"\n",
        ca.pem.display()
    ));
    assert!(e.contains("upstream.ca_file is for TLS"), "{e}");
    let e = errors(&format!(
        "[upstream]\nurl = \"rediss://127.0.0.1:6379\"\nca_file = \"{}\"\n",
        key.display()
    ));
    assert!(e.contains("upstream.ca_file"), "{e}");
    let e = errors(
        "[upstream]\nmode = \"cluster\"\nurl = \"rediss://127.0.0.1:7000\"\n\
         seeds = [\"redis://127.0.0.1:7001\"]\n",
    );
    assert!(e.contains("every seed must use the scheme"), "{e}");
    let e = errors("[server]\nlisten = \"\"\n");
    assert!(e.contains("set server.tls_listen"), "{e}");
}

/// A Redis Cluster whose nodes speak TLS: respite reads the slot map over TLS, reaches
/// every master on its TLS port with the private CA, and its own pool (quota bookkeeping)
/// does too: keys spread over the masters behind the tenant's prefix, multi-key reads
/// split by slot, and the quota refuses past its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respite_reaches_every_node_of_a_tls_cluster() {
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let (cert, key) = ca.server("node");
    let (cert, key, ca_pem) = (
        cert.display().to_string(),
        key.display().to_string(),
        ca.pem.display().to_string(),
    );
    let cluster = Cluster::start_tls(&[
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_pem,
        "--tls-auth-clients",
        "no",
    ]);
    let p = Proxy::start_config(&format!(
        "[upstream]\nmode = \"cluster\"\nurl = \"rediss://127.0.0.1:{}\"\n\
         seeds = [\"rediss://127.0.0.1:{}\"]\nca_file = \"{ca_pem}\"\ncommand_timeout_ms = 3000\n\
         [quota]\nflush_interval_ms = 20\nmeasure_delay_ms = 0\n\
         [[tenants]]\nid = \"a\"\npassword = \"pa\"\nquota_bytes = 20000\n",
        cluster.tls_ports[0], cluster.tls_ports[1]
    ))
    .await;
    let mut a = p.raw_as("a", "pa").await;
    for i in 0..10 {
        assert_eq!(
            a.cmd(&["SET", &format!("k{i}"), &format!("v{i}")]).await,
            "+OK\r\n"
        );
    }
    let mget = a.cmd(&["MGET", "k0", "k5", "k9", "missing"]).await;
    assert_eq!(mget, "*4\r\n$2\r\nv0\r\n$2\r\nv5\r\n$2\r\nv9\r\n$-1\r\n");
    assert_eq!(a.cmd(&["DBSIZE"]).await, ":10\r\n");
    // On the masters, over their plain ports: every key behind the prefix (beside the
    // quota's own, written over respite's TLS pool), on all three.
    let mut held = 0;
    for m in cluster.masters() {
        let keys = cluster.nodes[m].keys().await;
        let (tenant, other): (Vec<_>, Vec<_>) = keys.iter().partition(|k| k.starts_with("tenant:"));
        assert!(
            tenant.iter().all(|k| k.starts_with("tenant:a:k")),
            "{keys:?}"
        );
        assert!(
            other.iter().all(|k| k.starts_with("respite:quota:")),
            "{keys:?}"
        );
        assert!(
            !tenant.is_empty(),
            "a master holds none of the keys: {keys:?}"
        );
        held += tenant.len();
    }
    assert_eq!(held, 10);
    // The quota's bookkeeping runs over respite's own TLS connections.
    let value = "x".repeat(1000);
    let (_, reply) = a.set_until_refused(&value).await;
    assert!(
        reply.starts_with("-OOM command not allowed: tenant 'a'"),
        "{reply}"
    );
}

/// Sockets that open a connection to the TLS listener and never finish a handshake are
/// among the connections not logged in yet, as idle plain sockets are: past
/// `max_unauthenticated` the oldest is closed, so they cannot take every place of
/// `max_clients` and lock out the clients that come after them, on either listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_handshakes_cannot_take_every_place() {
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let redis = TlsRedis::start(&ca);
    let tls_port = free_port();
    let cert = ca.server("respite");
    let text = tls_config(&redis, tls_port, &cert, "").replace(
        "[server]\n",
        "[server]\nmax_clients = 6\nmax_unauthenticated = 2\nauth_timeout_ms = 10000\n",
    );
    let proxy = Proxy::start_config(&text).await;
    listening(tls_port).await;
    // `listening`'s probe has gone away; its place is free again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut silent = Vec::new();
    for _ in 0..6 {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .unwrap();
        silent.push(s);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The oldest are closed to make room, long before auth_timeout_ms.
    let mut b = [0u8; 16];
    let oldest = tokio::time::timeout(Duration::from_secs(2), silent[0].read(&mut b)).await;
    assert!(
        matches!(oldest, Ok(Ok(0)) | Ok(Err(_))),
        "the oldest silent socket is closed: {oldest:?}"
    );
    // Real clients are served, on both listeners.
    let mut plain = Raw::connect(proxy.addr).await;
    assert_eq!(plain.cmd(&["AUTH", "acme", "pa"]).await, "+OK\r\n");
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let mut tls = tls_connect(addr, &ca.pem, None).await.unwrap();
    let replies = exchange(&mut tls, &resp(&[b"AUTH", b"globex", b"pg"]), 1).await;
    assert_eq!(replies, ["+OK\r\n"]);
}

/// A socket on the TLS listener that never finishes its handshake does not hold up a
/// shutdown: it is closed at once, as an idle plain socket is, not after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_unfinished_handshakes() {
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let redis = TlsRedis::start(&ca);
    let tls_port = free_port();
    let cert = ca.server("respite");
    let text = tls_config(&redis, tls_port, &cert, "")
        .replace("[server]\n", "[server]\nshutdown_grace_ms = 5000\n");
    let mut proxy = Proxy::start_config(&text).await;
    listening(tls_port).await;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .unwrap();
    let mut plain = Raw::connect(proxy.addr).await;
    assert_eq!(
        plain.cmd(&["PING"]).await,
        "-NOAUTH Authentication required.\r\n"
    );
    let started = Instant::now();
    proxy.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    let mut b = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(1), silent.read(&mut b)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

/// RESET takes a connection back to the tenant its certificate names, and to no other: once
/// a reload has removed that tenant, a connection that had switched to another one with
/// AUTH is logged out by RESET, as a new connection with the certificate is refused. It
/// never lands in the default tenant, which the certificate never gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_never_falls_back_to_the_default_tenant_once_the_certificates_tenant_is_gone() {
    let MutualTls {
        dir,
        ca,
        clients,
        redis,
        tls_port,
        cert,
        tls,
    } = MutualTls::new();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let file = dir.0.join("respite.toml");
    let text = tls_config(&redis, tls_port, &cert, &tls)
        .replace("[server]\n", "[server]\ndefault_tenant = \"sidecar\"\n")
        + "[[tenants]]\nid = \"sidecar\"\npassword = \"ps\"\n"
        + &format!("[admin]\nlisten = \"{admin}\"\ntoken = \"admin-token\"\n");
    std::fs::write(&file, &text).unwrap();
    let mut proxy = Proxy::start_file(&file).await;
    listening(tls_port).await;
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();

    let (c, k) = clients.sign("acme", "acme", &[]);
    let mut acme = tls_connect(addr, &ca.pem, Some((&c, &k))).await.unwrap();
    let replies = exchange(&mut acme, &resp(&[b"AUTH", b"globex", b"pg"]), 1).await;
    assert_eq!(replies, ["+OK\r\n"]);
    let removed = text.replace("[[tenants]]\nid = \"acme\"\npassword = \"pa\"\n", "");
    std::fs::write(&file, removed).unwrap();
    let (status, body) = http(admin, "POST", "/reload", Some("admin-token")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""removed":["acme"]"#), "{body}");
    let requests = [resp(&[b"RESET"]), resp(&[b"SET", b"k", b"after reset"])].concat();
    let replies = exchange(&mut acme, &requests, 2).await;
    assert_eq!(
        replies,
        ["+RESET\r\n", "-NOAUTH Authentication required.\r\n"]
    );
    assert_eq!(redis.cli(&["EXISTS", "tenant:sidecar:k"]), "0\n");
    // The plain listener still serves the default tenant.
    let mut plain = proxy.raw().await;
    assert_eq!(plain.cmd(&["SET", "k", "sidecar"]).await, "+OK\r\n");
    assert_eq!(redis.cli(&["GET", "tenant:sidecar:k"]), "sidecar\n");
    proxy.stop().await;
}

/// The order in which a certificate's names are tried: the common name first, even with a
/// DNS name naming another tenant; without a tenant for it, the first DNS name that is one,
/// wherever it stands among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_common_name_comes_before_the_dns_names() {
    let MutualTls {
        dir: _dir,
        ca,
        clients,
        redis,
        tls_port,
        cert,
        tls,
    } = MutualTls::new();
    let mut proxy = Proxy::start_config(&tls_config(&redis, tls_port, &cert, &tls)).await;
    listening(tls_port).await;
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let whoami = async |file: &str, cn: &str, names: &[&str]| {
        let (c, k) = clients.sign(file, cn, names);
        let mut s = tls_connect(addr, &ca.pem, Some((&c, &k))).await.unwrap();
        let set = resp(&[b"SET", file.as_bytes(), b"1"]);
        assert_eq!(exchange(&mut s, &set, 1).await, ["+OK\r\n"]);
        ["acme", "globex"]
            .into_iter()
            .find(|t| redis.cli(&["EXISTS", &format!("tenant:{t}:{file}")]) == "1\n")
    };
    assert_eq!(whoami("cn", "acme", &["globex"]).await, Some("acme"));
    let later = whoami("later", "a person", &["x.example", "globex", "acme"]).await;
    assert_eq!(later, Some("globex"));
    proxy.stop().await;
}

/// Many sessions pipelining small and 200 KiB ECHOs over the shared connections to a
/// TLS-only Redis (partial TLS writes, ciphertext held back), paused
/// past `command_timeout` midway: every reply is its own request's, or the error, and
/// none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_over_a_tls_upstream_paused_midway_get_their_own_replies() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let redis = TlsRedis::start(&ca);
    let proxy = Proxy::start_config(&format!(
        "[server]\nthreads = 2\n[upstream]\nurl = \"{}\"\nca_file = \"{}\"\n\
         command_timeout_ms = 300\nconnect_timeout_ms = 1000\nconnections = 2\n\
         {}",
        redis.url(),
        redis.ca.display(),
        crate::harness::TENANTS,
    ))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers = crate::stress::hammer(proxy.addr, 24, &stop, &ok, &failed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = ok.load(Relaxed);
    assert!(before > 0, "nothing went through");
    let r = tokio::task::spawn_blocking({
        let (port, ca) = (redis.port, redis.ca.clone());
        move || tls_cli(port, &ca, &[], &["CLIENT", "PAUSE", "700", "ALL"])
    })
    .await
    .unwrap();
    assert_eq!(r, "OK\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    crate::stress::finish(workers, &stop).await;
    eprintln!("ok={} failed={}", ok.load(Relaxed), failed.load(Relaxed));
    assert!(failed.load(Relaxed) > 0, "the pause timed nothing out");
    assert!(
        ok.load(Relaxed) > before,
        "nothing went through after the pause"
    );
}
