//! Health, reflection, drain, and the binary's command line: bad
//! configuration exits before binding; SIGTERM drains and exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use clerk_introspect::pb::{Reason, VerifyRequest};
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use serde_json::json;
use tonic::codegen::tokio_stream::{self, StreamExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::support::{SERVICE, Server, closed_by_server, raw_health_check, still_served_after_idle};

const BIN: &str = env!("CARGO_BIN_EXE_clerk-introspect");

#[tokio::test]
async fn health_follows_key_loading_for_every_service_name() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key]).await.unwrap();
    issuer.set_up(false);
    let server = Server::start(vec![crate::support::issuer_config(&issuer)]).await;
    assert_eq!(server.health("").await.unwrap(), ServingStatus::NotServing);
    assert_eq!(server.health(SERVICE).await.unwrap(), ServingStatus::NotServing);
    issuer.set_up(true);
    server.wait_for(ServingStatus::Serving).await;
    let unknown = server.health("no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn every_configured_issuer_must_load_before_serving() {
    let a = TestIssuer::start(vec![TestKey::rsa("a")]).await.unwrap();
    let b = TestIssuer::start(vec![TestKey::rsa("b")]).await.unwrap();
    b.set_up(false);
    let server = Server::start(vec![crate::support::issuer_config(&a), crate::support::issuer_config(&b)]).await;
    let a_keys = server.app.verifier.trust().get(a.issuer()).unwrap().keys.clone();
    let deadline = tokio::time::Instant::now() + crate::support::READY_TIMEOUT;
    while a_keys.current().is_none() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(crate::support::POLL).await;
    }
    assert_eq!(server.health("").await.unwrap(), ServingStatus::NotServing, "b has no keys yet");
    b.set_up(true);
    server.wait_for(ServingStatus::Serving).await;
}

#[tokio::test]
async fn reflection_lists_the_services() {
    let issuer = TestIssuer::start(vec![TestKey::rsa("k")]).await.unwrap();
    let server = Server::ready(&issuer).await;
    let mut client = ServerReflectionClient::new(server.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else { panic!("{answer:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [SERVICE, "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    // Describing the service works (the file and its imports are served).
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(SERVICE.into())),
    };
    let mut answers = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    assert!(matches!(answer.message_response, Some(MessageResponse::FileDescriptorResponse(_))), "{answer:?}");
}

#[tokio::test]
async fn drain_finishes_in_flight_calls_and_reports_not_serving() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    // An unknown kid holds the call in a slow refetch.
    issuer.set_jwks_delay(Duration::from_millis(500));
    let token = TestKey::rsa("x")
        .mint_with_header(&json!({"alg":"RS256","kid":"ins_rotated"}), &issuer.session_claims(server.now()));
    let mut client = server.client();
    let in_flight = tokio::spawn(async move { client.verify(VerifyRequest { token, expect: None }).await });
    while issuer.jwks_requests() < 2 {
        tokio::time::sleep(crate::support::POLL).await;
    }
    server.begin_stop();
    let readiness = server.app.readiness.clone();
    let task = server.into_task();
    let answer = in_flight.await.unwrap().expect("the in-flight call completes").into_inner();
    assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::UnknownKey);
    assert!(!readiness.is_ready(), "NOT_SERVING from the start of the drain");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn connections_past_their_max_age_are_sent_away_then_closed() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut config = clerk_introspect::config::Config::new(vec![crate::support::issuer_config(&issuer)]);
    config.connections = clerk_introspect::config::ConnectionSettings {
        max_age: Some(Duration::from_millis(300)),
        max_age_grace: Duration::from_millis(300),
        // Longer than the guards below: the max age is what closes them.
        handshake_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let server = Server::start_with(config).await;
    server.wait_for(ServingStatus::Serving).await;
    let addr = server.addr;

    // An HTTP/2 client that answers one call, then idles: it gets GOAWAY
    // and its connection ends, without error (a graceful close).
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    assert_eq!(raw_health_check(&mut client, addr).await, 200);
    // The client stays: only the server's GOAWAY can end the connection.
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "the connection ends gracefully: {ended:?}");
    drop(client);

    // A client that never even sends the HTTP/2 preface is closed too.
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_server(silent).await, "a silent connection outlives its max age");

    // New connections are served as before.
    assert_eq!(server.health(SERVICE).await.unwrap(), ServingStatus::Serving);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connections_that_send_no_http2_preface_in_time_are_closed() {
    use tokio::io::AsyncWriteExt as _;
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut config = clerk_introspect::config::Config::new(vec![crate::support::issuer_config(&issuer)]);
    config.connections.handshake_timeout = Duration::from_millis(500);
    assert_eq!(config.connections.max_age, None, "no max age to close them instead");
    let server = Server::start_with(config).await;
    server.wait_for(ServingStatus::Serving).await;

    let silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_by_server(silent).await, "a silent connection stays open");
    let mut halfway = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    halfway.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_by_server(halfway).await, "a connection that sent half the preface stays open");
    let mut no_settings = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    no_settings.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    assert!(closed_by_server(no_settings).await, "a preface without its SETTINGS frame stays open");

    // A client that sent its preface, then idles past the timeout, is
    // still served on the same connection.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    still_served_after_idle(tcp, server.addr, Duration::from_millis(1500)).await;
    server.stop().await.unwrap();
}

fn run_bin(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).env("RUST_LOG", "warn").output().expect("run the binary")
}

#[test]
fn bad_configuration_exits_before_binding() {
    // Hold a port: if the binary tried to bind it, it would fail differently.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--listen", &port], "--issuer"),
        (&["serve", "--listen", &port, "--issuer", "http://clerk.example.com"], "loopback"),
        (
            &["serve", "--listen", &port, "--issuer", "https://clerk.example.com", "--clock-skew", "9999"],
            "--clock-skew",
        ),
        (
            &[
                "serve",
                "--listen",
                &port,
                "--issuer",
                "https://clerk.example.com",
                "--authorized-party",
                "https://app.example.com/",
            ],
            "--authorized-party: \"https://app.example.com/\" is not an origin",
        ),
    ];
    for (args, needle) in cases {
        let out = run_bin(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // clap's own errors (an unknown algorithm, HS256) are usage errors too.
    let out = run_bin(&["serve", "--issuer", "https://clerk.example.com", "--algorithm", "HS256"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shared-secret"));
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--issuer", issuer.issuer()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("serving gRPC addr=").nth(1) {
                let _ = addr_tx.send(rest.trim().to_owned());
            }
            lines.push(line);
        }
        lines
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(20)).expect("the server logs its address");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
        if s.is_ok_and(|s| s.into_inner().status == ServingStatus::Serving as i32) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(crate::support::POLL).await;
    }
    let mut client = clerk_introspect::pb::token_introspection_client::TokenIntrospectionClient::new(channel);
    let good = key.mint(&issuer.session_claims(std::time::SystemTime::now()));
    assert!(client.verify(VerifyRequest { token: good, expect: None }).await.unwrap().into_inner().valid);

    issuer.set_jwks_delay(Duration::from_millis(700));
    let slow = TestKey::rsa("x").mint_with_header(
        &json!({"alg":"RS256","kid":"ins_rotated"}),
        &issuer.session_claims(std::time::SystemTime::now()),
    );
    let mut slow_client = client.clone();
    let in_flight = tokio::spawn(async move { slow_client.verify(VerifyRequest { token: slow, expect: None }).await });
    while issuer.jwks_requests() < 2 {
        tokio::time::sleep(crate::support::POLL).await;
    }
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let answer = in_flight.await.unwrap().expect("in-flight call finishes during the drain").into_inner();
    assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::UnknownKey);
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    let lines = log.join().unwrap();
    assert!(lines.iter().any(|l| l.contains("received SIGTERM")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("drained")), "{lines:#?}");
    assert!(std::net::TcpStream::connect(&addr).is_err(), "no longer accepting");
}
