//! The server's budgets shared by all calls (`--max-calls-in-flight`,
//! `--max-request-bytes`, `--request-timeout`): what a refused call is
//! answered, that health checks keep their own reserve, and that the
//! budget comes back once the calls holding it end.

use std::time::Duration;

use clerk_introspect::config::Config;
use clerk_introspect::pb::VerifyRequest;
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{Server, h2_connect, hold_a_call};

fn refused(server: &Server, limit: &str) -> i64 {
    let text = server.app.telemetry.metrics().encode_prometheus();
    let name = format!("clerk_introspect_calls_refused_total{{limit=\"{limit}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&name)?.trim().parse().ok()).unwrap_or(0)
}

fn gauge(server: &Server, name: &str) -> i64 {
    let text = server.app.telemetry.metrics().encode_prometheus();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap()
}

async fn server(configure: impl FnOnce(&mut Config)) -> (Server, TestKey, TestIssuer) {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut config = Config::new(vec![crate::support::issuer_config(&issuer)]);
    config.connections.request_timeout = Duration::from_secs(25);
    configure(&mut config);
    let server = Server::start_with(config).await;
    server.wait_for(ServingStatus::Serving).await;
    (server, key, issuer)
}

#[tokio::test]
async fn calls_past_the_cap_are_refused_resource_exhausted_and_health_checks_still_pass() {
    let (server, key, issuer) = server(|c| c.connections.max_calls = 4).await;
    let token = key.mint(&issuer.session_claims(server.now()));
    let (mut raw, _connection) = h2_connect(server.addr).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(hold_a_call(&mut raw, server.addr).await);
    }
    // Wait until the server has taken all four.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&server, "clerk_introspect_calls_in_flight") < 4 {
        assert!(tokio::time::Instant::now() < deadline, "the held calls never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gauge(&server, "clerk_introspect_calls_in_flight_max"), 4);

    let status = server.client().verify(VerifyRequest { token: token.clone(), expect: None }).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "clerk-introspect is answering its limit of 4 calls at once (--max-calls-in-flight); retry with backoff"
    );
    assert!(!status.message().contains(&token));
    assert_eq!(refused(&server, "calls_in_flight"), 1);
    // Probes have their own reserve.
    assert_eq!(server.health("").await.unwrap(), ServingStatus::Serving);

    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&server, "clerk_introspect_calls_in_flight") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the held calls were never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.verify(&token).await.valid, "served again once the calls ended");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn request_bytes_past_the_budget_are_refused_and_come_back() {
    // The smallest budget: one request of the largest size.
    let (server, key, issuer) = server(|c| c.connections.max_request_bytes = 64 * 1024 + 5).await;
    let (mut raw, _connection) = h2_connect(server.addr).await;
    // 60,000 bytes of a message that declares 65,000, then nothing.
    let (answer, mut request) = hold_a_call(&mut raw, server.addr).await;
    let mut partial = vec![0u8, 0, 0, 0xfd, 0xe8];
    partial.resize(5 + 60_000, b'a');
    request.send_data(bytes::Bytes::from(partial), false).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&server, "clerk_introspect_request_bytes_buffered") < 60_005 {
        assert!(tokio::time::Instant::now() < deadline, "the partial message never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A 10 KB request does not fit in what is left.
    let big = format!("{}.e30.c2ln", "a".repeat(10_000));
    let status = server.client().verify(VerifyRequest { token: big.clone(), expect: None }).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "clerk-introspect is holding its limit of 65541 bytes of requests being received (--max-request-bytes); retry with backoff"
    );
    assert_eq!(refused(&server, "request_bytes"), 1);

    // The partial call ends (the client cancels it): its bytes come back,
    // and the same request is answered.
    drop((answer, request));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&server, "clerk_introspect_request_bytes_buffered") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the bytes were never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = server.client().verify(VerifyRequest { token: big, expect: None }).await.unwrap().into_inner();
    assert!(!answer.valid);
    let token = key.mint(&issuer.session_claims(server.now()));
    assert!(server.verify(&token).await.valid);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_that_does_not_arrive_in_time_is_answered_deadline_exceeded() {
    let (server, _key, _issuer) = server(|c| c.connections.request_timeout = Duration::from_millis(300)).await;
    let (mut raw, _connection) = h2_connect(server.addr).await;
    let (answer, _request) = hold_a_call(&mut raw, server.addr).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), answer).await.expect("answered").unwrap();
    let headers = answer.headers();
    assert_eq!(headers["grpc-status"], "4", "{headers:?}");
    let message = headers["grpc-message"].to_str().unwrap();
    assert!(message.contains("--request-timeout"), "{message}");
    assert_eq!(refused(&server, "request_timeout"), 1);
    server.stop().await.unwrap();
}
