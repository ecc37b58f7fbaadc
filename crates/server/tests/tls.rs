//! TLS on both listeners of the real binary (`--tls-cert`, `--tls-key`):
//! HTTP and RESP through a rustls client that trusts only a test CA, curl
//! and redis-cli with `--cacert` when installed, plain text refused on both
//! ports, and a key that is not the certificate's refused at start.

mod common;

use common::*;
use keel_server::resp::frame::{encode_command, reply_len};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it,
/// written as PEM files: (ca.pem, server.pem, server.key).
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keel test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

struct TlsServer {
    _t: tempfile::TempDir,
    server: Server,
    resp_port: u16,
    ca: PathBuf,
}

fn start_tls() -> TlsServer {
    start_tls_with(&[])
}

fn start_tls_with(extra: &[&str]) -> TlsServer {
    let t = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(t.path());
    let cfg = config(t.path(), "");
    let resp_port = free_port();
    let server = Server::start_with(
        t.path(),
        &cfg,
        &[],
        &[
            "--resp-port",
            &resp_port.to_string(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<_>>(),
    );
    TlsServer {
        _t: t,
        server,
        resp_port,
        ca,
    }
}

/// A TLS client that trusts only `ca`.
fn connect_tls(port: u16, ca: &Path) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn https(port: u16, ca: &Path, request: &str) -> (u16, Vec<u8>) {
    let mut s = connect_tls(port, ca);
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    // The server may close without close_notify once the reply is sent.
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf).unwrap()
}

fn resp_ask<S: Read + Write>(s: &mut S, args: &[&[u8]]) -> Vec<u8> {
    s.write_all(&encode_command(args)).unwrap();
    let mut got = Vec::new();
    loop {
        if let Some(n) = reply_len(&got) {
            return got[..n].to_vec();
        }
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed while waiting for a reply");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn both_listeners_serve_tls_to_a_client_that_trusts_the_ca() {
    let s = start_tls();
    let (status, _) = https(
        s.server.port,
        &s.ca,
        "PUT /kv/greeting HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(status, 200);
    let (status, body) = https(
        s.server.port,
        &s.ca,
        "GET /kv/greeting HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));

    let mut r = connect_tls(s.resp_port, &s.ca);
    assert_eq!(resp_ask(&mut r, &[b"GET", b"greeting"]), b"$5\r\nhello\r\n");
    assert_eq!(resp_ask(&mut r, &[b"SET", b"k", b"v"]), b"+OK\r\n");
    // A pipeline larger than one TLS record (16 KiB) in each direction.
    let big = vec![b'x'; 100_000];
    let mut pipeline = Vec::new();
    for i in 0..20 {
        pipeline.extend(encode_command(&[
            &b"SET"[..],
            format!("big{i}").as_bytes(),
            &big,
        ]));
    }
    r.write_all(&pipeline).unwrap();
    let mut got = Vec::new();
    while got.len() < 20 * 5 {
        let mut buf = [0u8; 4096];
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"+OK\r\n".repeat(20));
    let reply = resp_ask(&mut r, &[b"GET", b"big7"]);
    assert_eq!(reply.len(), big.len() + "$100000\r\n\r\n".len());
    let (status, body) = https(
        s.server.port,
        &s.ca,
        "GET /kv/k HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((status, body.as_slice()), (200, &b"v"[..]));
    // SIGTERM with a TLS client still connected: a clean exit.
    let mut s = s;
    assert!(s.server.term().success());
}

#[test]
fn plain_text_on_a_tls_port_is_refused_and_changes_nothing() {
    let s = start_tls();
    let (status, body) = raw(
        s.server.port,
        "PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1",
    )
    .unwrap();
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("speaks TLS only"),
        "{body:?}"
    );
    let mut plain = TcpStream::connect(("127.0.0.1", s.resp_port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    plain
        .write_all(&encode_command(&[&b"SET"[..], b"b", b"2"]))
        .unwrap();
    let mut out = Vec::new();
    plain.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("-ERR this port speaks TLS only"), "{out}");
    let mut r = connect_tls(s.resp_port, &s.ca);
    assert_eq!(resp_ask(&mut r, &[b"DBSIZE"]), b":0\r\n");
}

#[test]
fn a_handshake_that_never_finishes_is_closed_after_the_idle_timeout() {
    let s = start_tls_with(&["--idle-timeout", "1s"]);
    for port in [s.server.port, s.resp_port] {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // The first bytes of a ClientHello, then nothing.
        c.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8]).unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(15),
            "port {port}: closed after {waited:?}"
        );
    }
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_at_start() {
    let t = tempfile::tempdir().unwrap();
    let (_, cert, _) = make_certs(t.path());
    let other = tempfile::tempdir().unwrap();
    let (_, _, wrong_key) = make_certs(other.path());
    let cfg = config(t.path(), "");
    let (mut child, _, log) = Server::spawn_with(
        t.path(),
        &cfg,
        &[],
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            wrong_key.to_str().unwrap(),
        ],
    );
    let status = child.wait().unwrap();
    assert!(!status.success());
    let err = std::fs::read_to_string(log).unwrap();
    assert!(
        err.contains("the certificate and key cannot be used together"),
        "{err}"
    );
    // And a certificate file that holds no certificate.
    let (mut child, _, log) = Server::spawn_with(
        t.path(),
        &cfg,
        &[],
        &[
            "--tls-cert",
            cfg.to_str().unwrap(),
            "--tls-key",
            wrong_key.to_str().unwrap(),
        ],
    );
    assert!(!child.wait().unwrap().success());
    let err = std::fs::read_to_string(log).unwrap();
    assert!(err.contains("cannot read a certificate chain"), "{err}");
}

#[test]
fn curl_and_redis_cli_work_with_cacert() {
    let s = start_tls();
    let has = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    if has("curl") {
        let url = format!("https://localhost:{}/kv/from-curl", s.server.port);
        let put = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&s.ca)
            .args(["-X", "PUT", "--data-binary", "curled", &url])
            .output()
            .unwrap();
        assert!(put.status.success(), "{put:?}");
        let get = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&s.ca)
            .arg(&url)
            .output()
            .unwrap();
        assert_eq!(get.stdout, b"curled", "{get:?}");
    } else {
        eprintln!("curl not installed: skipped its part");
    }
    if has("redis-cli") {
        let cli = |args: &[&str]| {
            Command::new("redis-cli")
                .args(["--tls", "--cacert"])
                .arg(&s.ca)
                .args(["-h", "localhost", "-p", &s.resp_port.to_string()])
                .args(args)
                .output()
                .unwrap()
        };
        let set = cli(&["SET", "from-cli", "tls"]);
        if String::from_utf8_lossy(&set.stderr).contains("not supported") {
            eprintln!("this redis-cli was built without TLS: skipped its part");
            return;
        }
        assert_eq!(set.stdout, b"OK\n", "{set:?}");
        let get = cli(&["GET", "from-curl"]);
        let want: &[u8] = if has("curl") { b"curled\n" } else { b"\n" };
        assert_eq!(get.stdout, want, "{get:?}");
    } else {
        eprintln!("redis-cli not installed: skipped its part");
    }
}
