//! The binary on a single-threaded runtime (one worker thread, as on a
//! one-CPU container): it serves, verifies (cached and not), and drains on
//! SIGTERM with exit code 0.

use std::time::{Duration, Instant, SystemTime};

use clerk_introspect::pb::VerifyRequest;
use clerk_introspect::pb::token_introspection_client::TokenIntrospectionClient;
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::scratch::ServeProcess;

#[tokio::test]
async fn one_worker_thread_serves_and_drains() {
    let key = TestKey::es256("k1");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = ServeProcess::start_with_env(&["--issuer", issuer.issuer()], &[("TOKIO_WORKER_THREADS", "1")]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect_lazy();
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

    let code = tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
    assert_eq!(code, Some(0));
}
