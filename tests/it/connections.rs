//! Bounds on the gRPC listener's client connections: the cap
//! (`--max-connections`), the open-files limit the binary raises and fits
//! the cap to, and the gauges that show both.

use std::time::Duration;

use clerk_introspect::config::Config;
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::scratch::ServeProcess;
use crate::support::{Server, raw_health_check};

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<i64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut config = Config::new(vec![crate::support::issuer_config(&issuer)]);
    config.connections.max_connections = 2;
    let server = Server::start_with(config).await;
    server.wait_for(ServingStatus::Serving).await;
    let addr = server.addr;
    let metrics = server.app.telemetry.metrics().clone();
    assert_eq!(sample(&metrics.encode_prometheus(), "clerk_introspect_connections_max"), Some(2));

    // The harness's own channel (the health polls above) holds one slot;
    // an HTTP/2 connection, answered once, holds the other.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    assert_eq!(raw_health_check(&mut client, addr).await, 200);
    assert_eq!(sample(&metrics.encode_prometheus(), "clerk_introspect_connections"), Some(2));

    // A third: the kernel's backlog takes it, the server does not.
    let third = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        let status = raw_health_check(&mut client, addr).await;
        (status, client, connection)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third connection was served while two held the cap");

    // One closes: the third is served.
    drop(client);
    connection.await.unwrap().unwrap();
    let (status, _client, _connection) =
        tokio::time::timeout(Duration::from_secs(10), third).await.expect("served once a slot frees").unwrap();
    assert_eq!(status, 200);
    assert_eq!(sample(&metrics.encode_prometheus(), "clerk_introspect_connections"), Some(2));
    server.stop().await.unwrap();
}

/// `(soft, hard)` open-files limit of process `pid`.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut fields = line["Max open files".len()..].split_whitespace();
    (fields.next().unwrap().to_owned(), fields.next().unwrap().to_owned())
}

async fn metrics_text(p: &mut ServeProcess) -> String {
    let line = p.wait_for_line("serving HTTP /metrics");
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
    let (soft, hard) = open_files_limit(raised.child.id());
    assert_eq!(soft, hard, "the soft limit was raised to the hard one");
    assert_eq!(sample(&metrics_text(&mut raised).await, "clerk_introspect_connections_max"), Some(4096));
    assert!(!raised.log.iter().any(|l| l.contains("lowered")), "{:?}", raised.log);
    raised.stop();

    // A hard limit of 300 holds 300 - 256 connections: the cap is lowered, and says so.
    let mut capped =
        ServeProcess::start_with_ulimit("-n 300", &["--issuer", issuer.issuer(), "--max-connections", "5000"]);
    assert_eq!(open_files_limit(capped.child.id()), ("300".to_owned(), "300".to_owned()));
    let warning = capped.wait_for_line("--max-connections is more than the open-files limit allows");
    assert!(warning.contains("lowered_to=44"), "{warning}");
    assert_eq!(sample(&metrics_text(&mut capped).await, "clerk_introspect_connections_max"), Some(44));
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
