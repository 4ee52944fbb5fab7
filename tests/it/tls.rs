//! TLS and mTLS on the gRPC listener, with certificates made by the tests:
//! handshakes, refusal of callers without a client certificate, reload of
//! the certificate without dropping connections, and a silent client that
//! must not hold up anyone else's handshake.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clerk_introspect::config::{Config, IssuerConfig};
use clerk_introspect::keys::KeySource;
use clerk_introspect::keys::jwk::key_from_jwk_json;
use clerk_introspect::pb::VerifyRequest;
use clerk_introspect::pb::token_introspection_client::TokenIntrospectionClient;
use clerk_introspect::test_issuer::{TestKey, session_claims};
use clerk_introspect::tls::TlsFiles;
use tokio::io::AsyncReadExt;
use tokio_rustls::rustls;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::scratch::{Pki, Scratch, ServeProcess, run_bin, stderr, stdout};
use crate::support::{POLL, READY_TIMEOUT, Server, closed_by_server, still_served_after_idle};

const ISSUER: &str = "https://clerk.tls.example.com";

fn static_issuer(key: &TestKey) -> IssuerConfig {
    let mut c = IssuerConfig::new(ISSUER);
    c.source = KeySource::Static(vec![Arc::new(key_from_jwk_json(key.jwk()).unwrap())]);
    c
}

/// A server with TLS from `dir` (files `server.crt`, `server.key`, and
/// `ca.pem` as the client CA when `mtls`).
async fn tls_server(dir: &Scratch, key: &TestKey, mtls: bool) -> Server {
    Server::start_with(tls_config(dir, key, mtls)).await
}

/// The configuration [`tls_server`] starts with.
fn tls_config(dir: &Scratch, key: &TestKey, mtls: bool) -> Config {
    let mut config = Config::new(vec![static_issuer(key)]);
    config.tls = Some(TlsFiles {
        cert: dir.path("server.crt"),
        key: dir.path("server.key"),
        client_ca: mtls.then(|| dir.path("ca.pem")),
    });
    config
}

async fn channel(
    server: &Server,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://{}", server.addr)).unwrap().tls_config(tls)?;
    let connect = endpoint.connect();
    // A guard against a hang, not a timing assertion.
    tokio::time::timeout(Duration::from_secs(20), connect).await.expect("a handshake, not a hang")
}

async fn verify(channel: &Channel, token: &str) -> Result<bool, tonic::Status> {
    let mut client = TokenIntrospectionClient::new(channel.clone());
    let call = client.verify(VerifyRequest { token: token.to_owned(), expect: None });
    // A guard against a hang, not a timing assertion.
    let answer = tokio::time::timeout(Duration::from_secs(20), call).await.expect("an answer, not a hang")?;
    Ok(answer.into_inner().valid)
}

async fn wait_serving(channel: &Channel) {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let status = HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await;
        if status.is_ok_and(|s| s.into_inner().status == ServingStatus::Serving as i32) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never SERVING over TLS");
        tokio::time::sleep(POLL).await;
    }
}

fn token(key: &TestKey) -> String {
    key.mint(&session_claims(ISSUER, SystemTime::now()))
}

#[tokio::test]
async fn tls_serves_grpc_and_refuses_plaintext() {
    let dir = Scratch::new();
    let pki = Pki::new("tls");
    pki.write(&dir, "");
    let key = TestKey::rsa("ins_tls");
    let server = tls_server(&dir, &key, false).await;
    let tls = channel(&server, &pki.ca, None).await.expect("TLS handshake");
    wait_serving(&tls).await;
    assert!(verify(&tls, &token(&key)).await.unwrap());
    // A plaintext client gets nowhere.
    assert!(verify(&server.channel, &token(&key)).await.is_err(), "plaintext is refused");
    // A client that does not trust the server's CA refuses it.
    let stranger = Pki::new("stranger");
    assert!(channel(&server, &stranger.ca, None).await.is_err());
}

/// A raw rustls client's connection: the handshake itself, without gRPC.
async fn tls_connect(
    server: &Server,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    Ok(stream)
}

/// [`tls_connect`], then the server's first answer.
async fn raw_handshake(server: &Server, ca: &str, identity: Option<(&str, &str)>) -> Result<(), String> {
    let mut stream = tls_connect(server, ca, identity).await?;
    // With TLS 1.3 the server judges the client certificate after the
    // client's Finished: a refusal arrives as an alert on the first read.
    // A server that accepted us sends its HTTP/2 SETTINGS.
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await.expect("no hang") {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("closed".into()),
        Err(e) => Err(format!("read: {e}")),
    }
}

#[tokio::test]
async fn mtls_refuses_a_caller_without_a_client_certificate_at_the_handshake() {
    let dir = Scratch::new();
    let pki = Pki::new("mtls");
    pki.write(&dir, "");
    let key = TestKey::rsa("ins_mtls");
    let server = tls_server(&dir, &key, true).await;
    let me = Some((pki.client_cert.as_str(), pki.client_key.as_str()));

    // With a client certificate from the CA: served.
    let with_cert = channel(&server, &pki.ca, me).await.expect("mTLS handshake");
    wait_serving(&with_cert).await;
    assert!(verify(&with_cert, &token(&key)).await.unwrap());
    raw_handshake(&server, &pki.ca, me).await.expect("accepted with a client certificate");

    // Without one: refused at the handshake.
    let refused = raw_handshake(&server, &pki.ca, None).await.unwrap_err();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    let no_cert = match channel(&server, &pki.ca, None).await {
        Ok(c) => verify(&c, &token(&key)).await.map(|_| ()).unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(!no_cert.is_empty());

    // With a certificate from another CA: refused too.
    let stranger = Pki::new("stranger");
    let theirs = Some((stranger.client_cert.as_str(), stranger.client_key.as_str()));
    let refused = raw_handshake(&server, &pki.ca, theirs).await.unwrap_err();
    assert!(refused.to_lowercase().contains("certificate") || refused.contains("UnknownCA"), "{refused}");
}

#[tokio::test]
async fn certificates_are_reloaded_without_dropping_connections() {
    let dir = Scratch::new();
    let first = Pki::new("first");
    first.write(&dir, "");
    let key = TestKey::rsa("ins_rotate");
    let server = tls_server(&dir, &key, false).await;
    let old = channel(&server, &first.ca, None).await.unwrap();
    wait_serving(&old).await;
    assert!(verify(&old, &token(&key)).await.unwrap());

    let tls = server.app.tls.clone().unwrap();
    assert!(!tls.reload().unwrap(), "nothing changed yet");

    // A half-done rotation (new certificate, old key) is refused; the
    // running certificate stays.
    let second = Pki::new("second");
    dir.write("server.crt", &second.server_cert);
    assert!(tls.reload().is_err());
    assert!(channel(&server, &first.ca, None).await.is_ok(), "still the first certificate");

    dir.write("server.key", &second.server_key);
    assert!(tls.reload().unwrap(), "the new pair loads");
    let new = channel(&server, &second.ca, None).await.expect("new connections get the new certificate");
    assert!(verify(&new, &token(&key)).await.unwrap());
    assert!(channel(&server, &first.ca, None).await.is_err(), "the old certificate is gone for new connections");
    assert!(verify(&old, &token(&key)).await.unwrap(), "the open connection was not dropped");
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_other_handshakes() {
    let dir = Scratch::new();
    let pki = Pki::new("slow");
    pki.write(&dir, "");
    let key = TestKey::rsa("ins_slow");
    let server = tls_server(&dir, &key, false).await;
    // Connections that never say a word.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let tls = channel(&server, &pki.ca, None).await.expect("a handshake despite the silent clients");
    wait_serving(&tls).await;
    assert!(verify(&tls, &token(&key)).await.unwrap());
    drop(silent);
}

#[tokio::test]
async fn a_connection_that_sends_no_http2_preface_after_its_handshake_is_closed() {
    let dir = Scratch::new();
    let pki = Pki::new("preface");
    pki.write(&dir, "");
    let key = TestKey::rsa("ins_preface");
    let mut config = tls_config(&dir, &key, false);
    config.connections.handshake_timeout = Duration::from_millis(500);
    let server = Server::start_with(config).await;

    // A completed TLS handshake, then silence: the server's SETTINGS come,
    // then the close.
    let after_tls = tls_connect(&server, &pki.ca, None).await.unwrap();
    assert!(closed_by_server(after_tls).await, "a TLS connection without a preface stays open");
    // No handshake at all.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_by_server(tcp).await, "a silent TCP connection stays open");

    // A client that sent its preface, then idles past the timeout, is
    // still served on the same connection.
    let stream = tls_connect(&server, &pki.ca, None).await.unwrap();
    still_served_after_idle(stream, server.addr, Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_verify_commands_over_mtls_with_certificate_rotation() {
    let dir = Scratch::new();
    let first = Pki::new("first");
    first.write(&dir, "");
    let key = TestKey::rsa("ins_cmd");
    dir.write("keys.json", &serde_json::json!({"keys": [key.jwk()]}).to_string());
    dir.write(
        "config.toml",
        &format!(
            "watch_interval = \"100ms\"\n[tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n[[issuers]]\nissuer = \"{ISSUER}\"\njwks_file = \"keys.json\"\n"
        ),
    );
    let config = dir.s("config.toml");
    let serve = tokio::task::spawn_blocking(move || {
        let mut p = ServeProcess::start(&["--config", &config]);
        p.wait_for_line("readiness changed ready=true");
        p
    })
    .await
    .unwrap();
    let addr = serve.addr.clone();
    let t = token(&key);
    let (ca, cert, client_key) = (dir.s("ca.pem"), dir.s("client.crt"), dir.s("client.key"));
    let mtls = |ca: String| {
        let (addr, cert, client_key, t) = (addr.clone(), cert.clone(), client_key.clone(), t.clone());
        async move {
            run_bin(
                &[
                    "verify",
                    "--addr",
                    &addr,
                    "--tls-ca",
                    &ca,
                    "--tls-cert",
                    &cert,
                    "--tls-key",
                    &client_key,
                    "--tls-server-name",
                    "localhost",
                    &t,
                ],
                None,
            )
            .await
        }
    };
    let out = mtls(ca.clone()).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("REASON_VALID"));

    // No client certificate: could not ask (exit 2).
    let out = run_bin(&["verify", "--addr", &addr, "--tls-ca", &ca, "--tls-server-name", "localhost", &t], None).await;
    assert_eq!(out.status.code(), Some(2), "{}{}", stdout(&out), stderr(&out));

    // Rotate everything (CA, server and client certificates); the watcher
    // picks the new files up.
    let second = Pki::new("second");
    dir.write("client.crt", &second.client_cert);
    dir.write("client.key", &second.client_key);
    dir.write("ca.pem", &second.ca);
    dir.write("server.key", &second.server_key);
    dir.write("server.crt", &second.server_cert);
    let second_ca = dir.s("ca.pem");
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let out = mtls(second_ca.clone()).await;
        if out.status.code() == Some(0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new certificates were never served: {}", stderr(&out));
        tokio::time::sleep(POLL).await;
    }
    let mut serve = serve;
    let line = tokio::task::spawn_blocking(move || {
        let line = serve.wait_for_line("TLS certificates loaded");
        (line, serve.stop())
    })
    .await
    .unwrap();
    assert_eq!(line.1, Some(0));
}

#[tokio::test]
async fn a_config_reload_can_point_tls_at_other_files() {
    let dir = Scratch::new();
    let first = Pki::new("first");
    first.write(&dir, "");
    let second = Pki::new("second");
    second.write(&dir, "next/");
    let key = TestKey::rsa("ins_paths");
    let server = tls_server(&dir, &key, false).await;
    wait_serving(&channel(&server, &first.ca, None).await.unwrap()).await;

    let mut config = Config::new(vec![static_issuer(&key)]);
    config.tls =
        Some(TlsFiles { cert: dir.path("next/server.crt"), key: dir.path("next/server.key"), client_ca: None });
    let summary = server.app.reload(&config).unwrap();
    assert!(summary.tls_files_changed);
    assert!(verify(&channel(&server, &second.ca, None).await.unwrap(), &token(&key)).await.unwrap());

    // Files that do not load refuse the whole reload: nothing changes.
    config.tls = Some(TlsFiles { cert: dir.path("missing.crt"), key: dir.path("next/server.key"), client_ca: None });
    config.issuers[0].policy.roles = vec!["editor".into()];
    assert!(server.app.reload(&config).is_err());
    assert!(verify(&channel(&server, &second.ca, None).await.unwrap(), &token(&key)).await.unwrap(), "old policy");

    // Turning TLS off needs a restart: reported, and the rest applies.
    config.tls = None;
    let summary = server.app.reload(&config).unwrap();
    assert_eq!(summary.needs_restart, vec!["tls (turning TLS off)"]);
    assert!(!verify(&channel(&server, &second.ca, None).await.unwrap(), &token(&key)).await.unwrap(), "new policy");
}
