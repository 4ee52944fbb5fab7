//! Bounds on the gRPC listener's client connections: the cap
//! (`--max-connections`), the open-files limit the binary raises and fits
//! the cap to, and the gauges that show both.

use std::time::Duration;

use clerk_introspect::config::Config;
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::scratch::ServeProcess;
use crate::support::{Server, h2_connect, hold_a_call, raw_health_check};

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<i64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The value of a labelled counter sample in a Prometheus text exposition.
fn labelled(text: &str, name_and_labels: &str) -> Option<i64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn a_full_table_makes_room_from_an_idle_connection_and_waits_only_when_all_are_busy() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut config = Config::new(vec![crate::support::issuer_config(&issuer)]);
    config.connections.max_connections = 2;
    config.connections.request_timeout = Duration::from_secs(25);
    let server = Server::start_with(config).await;
    server.wait_for(ServingStatus::Serving).await;
    let addr = server.addr;
    let metrics = server.app.telemetry.metrics().clone();
    let made_room = || {
        labelled(
            &metrics.encode_prometheus(),
            "clerk_introspect_connections_closed_by_server_total{listener=\"grpc\",reason=\"make_room\"}",
        )
        .unwrap_or(0)
    };
    assert_eq!(sample(&metrics.encode_prometheus(), "clerk_introspect_connections_max"), Some(2));

    // The harness's own channel (the health polls above) holds one slot,
    // idle now; A holds the other with a call in progress.
    let (mut a, a_connection) = h2_connect(addr).await;
    let (a_answer, a_request) = hold_a_call(&mut a, addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sample(&metrics.encode_prometheus(), "clerk_introspect_calls_in_flight") != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "A's call never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sample(&metrics.encode_prometheus(), "clerk_introspect_connections"), Some(2));

    // B is served at once: the idle harness channel is asked to go away.
    let (mut b, _b_connection) = h2_connect(addr).await;
    let status = tokio::time::timeout(Duration::from_secs(10), raw_health_check(&mut b, addr)).await;
    assert_eq!(status.expect("served without waiting for a slot"), 200);
    assert_eq!(made_room(), 1);
    let (_b_answer, _b_request) = hold_a_call(&mut b, addr).await;
    while sample(&metrics.encode_prometheus(), "clerk_introspect_calls_in_flight") != Some(2) {
        assert!(tokio::time::Instant::now() < deadline, "B's call never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Both busy: C waits in the backlog (nothing is idle to close).
    let c = tokio::spawn(async move {
        let (mut c, connection) = h2_connect(addr).await;
        (raw_health_check(&mut c, addr).await, c, connection)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!c.is_finished(), "a third connection was served while two busy ones held the cap");
    assert!(!a_connection.is_finished(), "a busy connection was closed");

    // A's call ends; A is idle, so C takes its place.
    drop(a_request);
    drop(a_answer);
    let (status, _c, _c_connection) =
        tokio::time::timeout(Duration::from_secs(10), c).await.expect("served once a connection is idle").unwrap();
    assert_eq!(status, 200);
    assert_eq!(made_room(), 2);
    a_connection.await.unwrap().expect("A was closed with GOAWAY, not an error");
    assert_eq!(sample(&metrics.encode_prometheus(), "clerk_introspect_connections"), Some(2));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_idle_past_the_limit_gets_goaway_and_its_client_reconnects() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut config = Config::new(vec![crate::support::issuer_config(&issuer)]);
    config.connections.max_idle = Some(Duration::from_millis(300));
    let server = Server::start_with(config).await;
    server.wait_for(ServingStatus::Serving).await;
    let addr = server.addr;
    let (mut client, connection) = h2_connect(addr).await;
    assert_eq!(raw_health_check(&mut client, addr).await, 200);
    // A call in progress keeps it open past the limit.
    let (_answer, request) = hold_a_call(&mut client, addr).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!connection.is_finished(), "closed while a call was in progress");
    drop(request);
    // Idle from now: GOAWAY, then closed cleanly.
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("closed once idle past the limit")
        .unwrap()
        .expect("closed with GOAWAY, not an error");
    // This one and the harness's own channel, idle too.
    let text = server.app.telemetry.metrics().encode_prometheus();
    let idle =
        labelled(&text, "clerk_introspect_connections_closed_by_server_total{listener=\"grpc\",reason=\"idle\"}");
    assert!(idle >= Some(1), "{text}");
    // The harness's channel reconnects by itself.
    assert_eq!(server.health("").await.unwrap(), ServingStatus::Serving);
    server.stop().await.unwrap();
}

/// `(soft, hard)` open-files limit of process `pid`.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut fields = line["Max open files".len()..].split_whitespace();
    (fields.next().unwrap().to_owned(), fields.next().unwrap().to_owned())
}

/// `/metrics` of a started binary, once it serves gRPC (its connection
/// table is set up then; the metrics endpoint starts before it).
async fn metrics_text(p: &mut ServeProcess) -> String {
    p.wait_for_line("serving gRPC");
    let line = p.log.iter().find(|l| l.contains("serving HTTP /metrics")).expect("the metrics endpoint is up").clone();
    let addr = line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn the_binary_raises_its_open_files_limit_and_fits_the_cap_to_it() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();

    // A soft limit under the hard one (as containers often start) is raised.
    let mut raised = ServeProcess::start_with_ulimit("-Sn 300", &["--issuer", issuer.issuer()]);
    assert_eq!(sample(&metrics_text(&mut raised).await, "clerk_introspect_connections_max"), Some(4096));
    let (soft, hard) = open_files_limit(raised.child.id());
    assert_eq!(soft, hard, "the soft limit was raised to the hard one");
    assert!(!raised.log.iter().any(|l| l.contains("lowered")), "{:?}", raised.log);
    raised.stop();

    // A hard limit of 300 holds 300 - 256 connections: the cap is lowered, and says so.
    let mut capped =
        ServeProcess::start_with_ulimit("-n 300", &["--issuer", issuer.issuer(), "--max-connections", "5000"]);
    assert_eq!(sample(&metrics_text(&mut capped).await, "clerk_introspect_connections_max"), Some(44));
    assert_eq!(open_files_limit(capped.child.id()), ("300".to_owned(), "300".to_owned()));
    let warning = capped.log.iter().find(|l| l.contains("--max-connections is more than the open-files limit allows"));
    assert!(warning.is_some_and(|w| w.contains("lowered_to=44")), "{:?}", capped.log);
    capped.stop();
}

#[tokio::test]
async fn a_call_whose_request_never_arrives_is_answered_at_the_call_timeout() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut config = Config::new(vec![crate::support::issuer_config(&issuer)]);
    config.connections.call_timeout = Duration::from_millis(300);
    let server = Server::start_with(config).await;
    server.wait_for(ServingStatus::Serving).await;
    let addr = server.addr;

    // Verify's headers, then nothing: no message, no end of stream.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/introspect.v1.TokenIntrospection/Verify"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, _body_never_sent) = client.send_request(request, false).unwrap();
    // A guard against a hang, not a timing assertion.
    let response =
        tokio::time::timeout(Duration::from_secs(10), response).await.expect("answered at the call timeout").unwrap();
    let status = response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(status.as_deref(), Some("1"), "CANCELLED: {:?}", response.headers());

    // Calls that complete are not affected.
    let token = key.mint(&issuer.session_claims(server.now()));
    assert!(server.verify(&token).await.valid);
    server.stop().await.unwrap();
}
