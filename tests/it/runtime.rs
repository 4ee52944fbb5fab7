//! The binary on a single-threaded runtime (one worker thread, as on a
//! one-CPU container): it serves, verifies (cached and not), and drains on
//! SIGTERM with exit code 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use clerk_introspect::pb::VerifyRequest;
use clerk_introspect::pb::token_introspection_client::TokenIntrospectionClient;
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_clerk-introspect");

#[tokio::test]
async fn one_worker_thread_serves_and_drains() {
    let key = TestKey::es256("k1");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--issuer", issuer.issuer()])
        .env("RUST_LOG", "info")
        .env("TOKIO_WORKER_THREADS", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("serving gRPC addr=").nth(1) {
                let _ = addr_tx.send(rest.trim().to_owned());
            }
        }
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(20)).expect("the server logs its address");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut health = HealthClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = health.check(HealthCheckRequest { service: String::new() }).await;
        if s.is_ok_and(|s| s.into_inner().status == ServingStatus::Serving as i32) {
            break;
        }
        assert!(Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(crate::support::POLL).await;
    }
    let mut client = TokenIntrospectionClient::new(channel);
    let token = key.mint(&issuer.session_claims(SystemTime::now()));
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (mut client, token) = (client.clone(), token.clone());
            tokio::spawn(async move { client.verify(VerifyRequest { token, expect: None }).await })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().unwrap().into_inner().valid);
    }
    let other = TestKey::es256("k1").mint(&issuer.session_claims(SystemTime::now()));
    assert!(!client.verify(VerifyRequest { token: other, expect: None }).await.unwrap().into_inner().valid);

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    log.join().unwrap();
}
