//! The `liveness` health-check name: `SERVING` for as long as the process
//! serves, even when readiness is `NOT_SERVING` because an issuer is down or
//! its keys went stale, so a Kubernetes liveness probe never restarts a
//! replica (and drops its last good keys) during a Clerk outage.

use std::time::Duration;

use clerk_introspect::health::LIVENESS_SERVICE;
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{SERVICE, Server, issuer_config};

#[tokio::test]
async fn liveness_serves_while_the_issuer_is_down_at_start() {
    let issuer = TestIssuer::start(vec![TestKey::rsa("ins_test")]).await.unwrap();
    issuer.set_up(false);
    let server = Server::start(vec![issuer_config(&issuer)]).await;
    // Wait until the first load has failed at least once.
    let deadline = tokio::time::Instant::now() + crate::support::READY_TIMEOUT;
    while issuer.discovery_requests() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the first load was never retried");
        tokio::time::sleep(crate::support::POLL).await;
    }
    assert_eq!(server.health("").await.unwrap(), ServingStatus::NotServing);
    assert_eq!(server.health(SERVICE).await.unwrap(), ServingStatus::NotServing);
    assert_eq!(server.health(LIVENESS_SERVICE).await.unwrap(), ServingStatus::Serving);
}

#[tokio::test]
async fn liveness_serves_while_keys_are_stale() {
    let issuer = TestIssuer::start(vec![TestKey::rsa("ins_test")]).await.unwrap();
    let server = Server::ready(&issuer).await;
    assert_eq!(server.health(LIVENESS_SERVICE).await.unwrap(), ServingStatus::Serving);
    issuer.set_up(false);
    server.clock.advance(Duration::from_secs(24 * 3600 + 1));
    server.wait_for(ServingStatus::NotServing).await;
    assert_eq!(server.health(LIVENESS_SERVICE).await.unwrap(), ServingStatus::Serving);
}
