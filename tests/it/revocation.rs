//! Revocation end to end: real servers (replicas) against the loopback
//! issuer, a real `redis-server` per test on a free loopback port, events
//! recorded through a replica's `Record` implementation (what the webhook
//! endpoint calls) or the `revoke` command, answers read through real gRPC
//! clients (Verify, GetClaims, ext_authz Check).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clerk_introspect::config::{Config, StoreUrl};
use clerk_introspect::health::HealthSource as _;
use clerk_introspect::pb::Reason;
use clerk_introspect::revocation::{Cause, Record, RecordError, Recorded, Revocation, RevocationEvent};
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde_json::{Value, json};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{Server, issuer_config};

/// Longest wait for a replica to apply another replica's event (a guard
/// against a hang; the measured time is far below, see docs/revocation.md).
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait for `redis-server` to answer PING.
const REDIS_START_LIMIT: Duration = Duration::from_secs(10);

// === a throwaway redis-server ===

/// `redis-server` on a free loopback port, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    persistent: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl Redis {
    /// Keeps nothing on disk.
    fn start() -> Redis {
        Self::start_with(false)
    }

    /// With an append-only file fsynced on every write, so that a restart
    /// keeps the stream.
    fn start_persistent() -> Redis {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Redis {
        let dir = std::env::temp_dir().join(format!("clerk-introspect-redis-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis { child: None, port: free_port(), dir, persistent };
        redis.run();
        redis
    }

    fn run(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""]);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.arg("--dir").arg(&self.dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}); these tests need Redis (Debian: apt-get install redis-server)")
        });
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_START_LIMIT;
        while !self.pong() {
            assert!(Instant::now() < deadline, "redis-server on port {} did not answer PING", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pong(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Started again on the same port (and directory).
    fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// === replicas, tokens, events ===

fn config(issuer: &TestIssuer, redis: Option<&Redis>) -> Config {
    let mut c = Config::new(vec![issuer_config(issuer)]);
    if let Some(r) = redis {
        c.revocation.store = Some(StoreUrl { url: r.url(), address: format!("127.0.0.1:{}", r.port) });
    }
    c
}

async fn replica(issuer: &TestIssuer, redis: Option<&Redis>) -> Server {
    let server = Server::start_with(config(issuer, redis)).await;
    server.wait_for(ServingStatus::Serving).await;
    server
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A session token of `sub` in session `sid`, issued at `iat` (Unix s),
/// with an active organization in v2 form (`o.id`) when given.
fn token(key: &TestKey, issuer: &TestIssuer, sid: &str, sub: &str, iat: u64, org: Option<&str>) -> String {
    let mut claims = issuer.session_claims(UNIX_EPOCH + Duration::from_secs(iat));
    claims["sid"] = json!(sid);
    claims["sub"] = json!(sub);
    if let Some(org) = org {
        claims["o"] = json!({"id": org, "rol": "admin", "slg": "acme"});
    }
    key.mint(&claims)
}

/// The same with the v1 organization claims (`org_id`).
fn token_v1_org(key: &TestKey, issuer: &TestIssuer, sub: &str, iat: u64, org: &str) -> String {
    let mut claims: Value = issuer.session_claims(UNIX_EPOCH + Duration::from_secs(iat));
    claims["sub"] = json!(sub);
    claims["sid"] = json!("sess_v1");
    claims["org_id"] = json!(org);
    claims["org_role"] = json!("org:admin");
    key.mint(&claims)
}

fn event(id: &str, revocation: Revocation, cause: Cause, at_ms: u64) -> RevocationEvent {
    RevocationEvent { id: id.to_owned(), revocation, cause, at_ms }
}

fn session(sid: &str) -> Revocation {
    Revocation::Session { sid: sid.to_owned() }
}

fn user(sub: &str) -> Revocation {
    Revocation::User { sub: sub.to_owned() }
}

async fn record(server: &Server, e: RevocationEvent) -> Result<Recorded, RecordError> {
    server.app.revocation.record(e).await
}

/// Polls Verify until the token is refused as revoked (bounded).
async fn until_revoked(server: &Server, token: &str) {
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    while server.reason(token).await != Reason::SessionRevoked {
        assert!(Instant::now() < deadline, "the revocation never reached {}", server.addr);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn unix_now() -> u64 {
    now_ms() / 1000
}

// === what each kind refuses ===

#[tokio::test]
async fn each_kind_refuses_the_right_tokens_and_only_those() {
    let key = TestKey::rsa("ins_rev");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = replica(&issuer, None).await;
    let now = unix_now();
    let t = |sid: &str, sub: &str, iat: u64, org: Option<&str>| token(&key, &issuer, sid, sub, iat, org);

    // A session: its tokens, whenever issued; not the user's other sessions.
    let ended = t("sess_ended", "user_a", now - 5, None);
    let other_session = t("sess_other", "user_a", now - 5, None);
    assert_eq!(server.reason(&ended).await, Reason::Valid);
    let at = now_ms();
    assert_eq!(
        record(&server, event("msg_1", session("sess_ended"), Cause::SessionEnded, at)).await.unwrap(),
        Recorded::Applied
    );
    let answer = server.verify(&ended).await;
    assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::SessionRevoked);
    assert!(!answer.valid && answer.identity.is_none());
    assert!(
        answer.message.starts_with("The token's session was ended (Clerk session.ended) at 20"),
        "{}",
        answer.message
    );
    assert!(
        answer.message.contains(&humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at)).to_string())
    );
    assert_eq!(server.reason(&t("sess_ended", "user_a", now + 3, None)).await, Reason::SessionRevoked, "any iat");
    assert_eq!(server.reason(&other_session).await, Reason::Valid, "another session of the same user");

    // A ban: the user's tokens issued at or before it; later ones pass
    // (issued after the ban was lifted); other users untouched.
    let ban_at = (now - 2) * 1000 + 500;
    record(&server, event("msg_2", user("user_b"), Cause::UserBanned, ban_at)).await.unwrap();
    let before = t("sess_b1", "user_b", now - 10, None);
    let after = t("sess_b2", "user_b", now - 1, None);
    let answer = server.verify(&before).await;
    assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::SessionRevoked);
    assert!(answer.message.contains("banned"), "{}", answer.message);
    assert_eq!(server.reason(&after).await, Reason::Valid, "issued after the ban (unbanned since)");
    assert_eq!(server.reason(&t("sess_c", "user_c", now - 10, None)).await, Reason::Valid, "another user");

    // A membership: that user's tokens naming that org (v2 and v1 claims).
    record(
        &server,
        event(
            "msg_3",
            Revocation::Membership { sub: "user_d".into(), org_id: "org_x".into() },
            Cause::MembershipRemoved,
            now_ms(),
        ),
    )
    .await
    .unwrap();
    let answer = server.verify(&t("sess_d", "user_d", now - 5, Some("org_x"))).await;
    assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::SessionRevoked);
    assert!(answer.message.contains("removed from the organization"), "{}", answer.message);
    assert_eq!(server.reason(&token_v1_org(&key, &issuer, "user_d", now - 5, "org_x")).await, Reason::SessionRevoked);
    assert_eq!(server.reason(&t("sess_d", "user_d", now - 5, Some("org_y"))).await, Reason::Valid, "another org");
    assert_eq!(server.reason(&t("sess_d", "user_d", now - 5, None)).await, Reason::Valid, "no active org");
    assert_eq!(server.reason(&t("sess_e", "user_e", now - 5, Some("org_x"))).await, Reason::Valid, "another member");

    // An organization: every token naming it.
    record(
        &server,
        event("msg_4", Revocation::Organization { org_id: "org_gone".into() }, Cause::OrganizationDeleted, now_ms()),
    )
    .await
    .unwrap();
    let answer = server.verify(&t("sess_f", "user_f", now - 5, Some("org_gone"))).await;
    assert_eq!(Reason::try_from(answer.reason).unwrap(), Reason::SessionRevoked);
    assert!(answer.message.contains("organization the token names was deleted"), "{}", answer.message);
    assert_eq!(server.reason(&t("sess_f", "user_f", now - 5, Some("org_kept"))).await, Reason::Valid);

    // By an operator.
    record(&server, event("operator:1", user("user_g"), Cause::Operator, now_ms())).await.unwrap();
    let answer = server.verify(&t("sess_g", "user_g", now - 5, None)).await;
    assert!(answer.message.contains("revoked by an operator"), "{}", answer.message);

    // GetClaims refuses with UNAUTHENTICATED and the reason.
    let status = server.get_claims(&ended).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().starts_with("REASON_SESSION_REVOKED: "), "{}", status.message());
}

#[tokio::test]
async fn the_cache_never_serves_a_revoked_token() {
    let key = TestKey::rsa("ins_cache");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = replica(&issuer, None).await;
    assert!(server.app.verifier.token_cache().is_some(), "the cache is on by default");
    let now = unix_now();
    let tok = token(&key, &issuer, "sess_cached", "user_cached", now - 5, Some("org_1"));
    for _ in 0..3 {
        assert_eq!(server.reason(&tok).await, Reason::Valid);
    }
    assert!(server.app.verifier.token_cache().unwrap().tokens_len() >= 1, "remembered whole");
    for (i, r) in [
        session("sess_cached"),
        user("user_cached"),
        Revocation::Membership { sub: "user_cached".into(), org_id: "org_1".into() },
        Revocation::Organization { org_id: "org_1".into() },
    ]
    .into_iter()
    .enumerate()
    {
        // Each kind alone, on a fresh replica whose cache holds the token.
        let fresh = replica(&issuer, None).await;
        assert_eq!(fresh.reason(&tok).await, Reason::Valid);
        assert_eq!(fresh.reason(&tok).await, Reason::Valid);
        record(&fresh, event(&format!("e{i}"), r, Cause::Operator, now_ms())).await.unwrap();
        assert_eq!(fresh.reason(&tok).await, Reason::SessionRevoked, "kind {i} on a cache hit");
    }
}

#[tokio::test]
async fn ext_authz_answers_401_invalid_token() {
    let key = TestKey::rsa("ins_authz");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = replica(&issuer, None).await;
    let tok = token(&key, &issuer, "sess_authz", "user_authz", unix_now() - 5, None);
    let check = |tok: &str| {
        let mut headers = std::collections::HashMap::new();
        headers.insert("authorization".to_owned(), format!("Bearer {tok}"));
        headers.insert(":path".to_owned(), "/api".to_owned());
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: "/api".into(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    };
    let mut client = AuthorizationClient::new(server.channel.clone());
    let ok = client.check(check(&tok)).await.unwrap().into_inner();
    assert!(matches!(ok.http_response, Some(HttpResponse::OkResponse(_))));
    record(&server, event("msg_authz", session("sess_authz"), Cause::SessionRevoked, now_ms())).await.unwrap();
    let refused = client.check(check(&tok)).await.unwrap().into_inner();
    assert_eq!(refused.status.unwrap().code, tonic::Code::Unauthenticated as i32);
    let Some(HttpResponse::DeniedResponse(d)) = refused.http_response else { panic!("denied") };
    assert_eq!(d.status.unwrap().code, 401);
    let header =
        |k: &str| d.headers.iter().find_map(|h| h.header.as_ref().filter(|h| h.key == k).map(|h| h.value.clone()));
    assert_eq!(header("x-introspect-reason").as_deref(), Some("REASON_SESSION_REVOKED"));
    let www = header("www-authenticate").unwrap();
    assert!(
        www.starts_with("Bearer error=\"invalid_token\", error_description=\"The token's session was revoked"),
        "{www}"
    );
    assert!(!format!("{d:?}").contains(&tok), "never the token");
}

#[tokio::test]
async fn duplicate_and_out_of_order_events() {
    let key = TestKey::rsa("ins_dup");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let redis = Redis::start();
    let a = replica(&issuer, Some(&redis)).await;
    let b = replica(&issuer, Some(&redis)).await;
    let now = unix_now();
    let late = event("msg_late", user("user_o"), Cause::UserBanned, now * 1000);
    let early = event("msg_early", user("user_o"), Cause::UserLocked, (now - 20) * 1000);
    // The later event arrives first; the earlier one after: the later time stands.
    assert_eq!(record(&a, late.clone()).await.unwrap(), Recorded::Applied);
    assert_eq!(record(&b, early.clone()).await.unwrap(), Recorded::Applied);
    let between = token(&key, &issuer, "sess_o", "user_o", now - 10, None);
    for server in [&a, &b] {
        until_revoked(server, &between).await;
        let answer = server.verify(&between).await;
        assert!(answer.message.contains("banned"), "the later event's cause: {}", answer.message);
    }
    // Delivered again (Svix retries), on either replica: applied once.
    assert_eq!(record(&a, late.clone()).await.unwrap(), Recorded::Duplicate);
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    while !(b.app.revocation.index().was_appended("msg_late") && a.app.revocation.index().was_appended("msg_early")) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(record(&b, late).await.unwrap(), Recorded::Duplicate);
    assert_eq!(record(&a, early).await.unwrap(), Recorded::Duplicate);
    assert_eq!(a.app.revocation.index().len(), 1);
    let text = a.app.telemetry.metrics().encode_prometheus();
    assert!(text.lines().any(|l| l == "clerk_introspect_revocation_events_deduplicated_total 2"), "{text}");
}

// === across replicas, through Redis ===

#[tokio::test]
async fn an_event_on_one_replica_is_enforced_by_every_replica_and_replayed_by_a_new_one() {
    let key = TestKey::rsa("ins_fan");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let redis = Redis::start();
    let (a, b, c) = (
        replica(&issuer, Some(&redis)).await,
        replica(&issuer, Some(&redis)).await,
        replica(&issuer, Some(&redis)).await,
    );
    let now = unix_now();
    let victim = token(&key, &issuer, "sess_fan", "user_fan", now - 5, None);
    let bystander = token(&key, &issuer, "sess_ok", "user_fan", now - 5, None);
    for s in [&a, &b, &c] {
        assert_eq!(s.reason(&victim).await, Reason::Valid);
    }
    assert_eq!(
        record(&a, event("msg_fan", session("sess_fan"), Cause::SessionRevoked, now_ms())).await.unwrap(),
        Recorded::Applied
    );
    assert_eq!(a.reason(&victim).await, Reason::SessionRevoked, "at once on the replica that recorded it");
    for s in [&b, &c] {
        until_revoked(s, &victim).await;
        assert_eq!(s.reason(&bystander).await, Reason::Valid);
    }
    // A replica started after the event replays it before it is SERVING.
    let d = replica(&issuer, Some(&redis)).await;
    assert!(d.app.revocation.is_replayed());
    assert_eq!(d.reason(&victim).await, Reason::SessionRevoked, "no wait: replayed before SERVING");
    assert_eq!(d.reason(&bystander).await, Reason::Valid);
}

#[tokio::test]
async fn redis_killed_and_restarted_mid_stream_loses_nothing() {
    let key = TestKey::rsa("ins_kill");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut redis = Redis::start_persistent();
    let a = replica(&issuer, Some(&redis)).await;
    let b = replica(&issuer, Some(&redis)).await;
    let now = unix_now();
    let tok = |sid: &str| token(&key, &issuer, sid, "user_k", now - 5, None);

    record(&a, event("msg_k1", session("sess_k1"), Cause::SessionEnded, now_ms())).await.unwrap();
    until_revoked(&b, &tok("sess_k1")).await;

    redis.kill();
    // During the outage: applied on A at once, but not durably recorded (the
    // webhook answers 5xx and Svix retries); both replicas keep serving what
    // they applied.
    let during = event("msg_k2", session("sess_k2"), Cause::SessionRevoked, now_ms());
    assert!(matches!(record(&a, during.clone()).await, Err(RecordError::Store(_))));
    assert_eq!(a.reason(&tok("sess_k2")).await, Reason::SessionRevoked);
    assert_eq!(b.reason(&tok("sess_k1")).await, Reason::SessionRevoked);
    assert_eq!(b.health("").await.unwrap(), ServingStatus::Serving, "an outage does not take authentication down");

    redis.restart();
    // Svix's retry after the store is back: appended now (local dedup does
    // not swallow it), and B catches up.
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    loop {
        match record(&a, during.clone()).await {
            Ok(r) => {
                assert_eq!(r, Recorded::Applied);
                break;
            }
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("Redis is back but the retry failed: {e}"),
        }
    }
    until_revoked(&b, &tok("sess_k2")).await;
    // And events after the restart flow as before.
    record(&b, event("msg_k3", session("sess_k3"), Cause::SessionRemoved, now_ms())).await.unwrap();
    until_revoked(&a, &tok("sess_k3")).await;
    // A replica started now replays all three from the persisted stream.
    let c = replica(&issuer, Some(&redis)).await;
    for sid in ["sess_k1", "sess_k2", "sess_k3"] {
        assert_eq!(c.reason(&tok(sid)).await, Reason::SessionRevoked, "{sid}");
    }
    assert_eq!(c.reason(&tok("sess_k4")).await, Reason::Valid);
}

#[tokio::test]
async fn store_required_readiness() {
    let key = TestKey::rsa("ins_req");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut redis = Redis::start();
    let mut strict = config(&issuer, Some(&redis));
    strict.revocation.settings.store_required = true;
    strict.revocation.settings.outage_limit = Duration::from_secs(1);
    let strict = Server::start_with(strict).await;
    strict.wait_for(ServingStatus::Serving).await;
    let relaxed = replica(&issuer, Some(&redis)).await;

    redis.kill();
    // The strict replica turns NOT_SERVING after the outage limit; the
    // relaxed one keeps serving.
    strict.wait_for(ServingStatus::NotServing).await;
    assert_eq!(relaxed.health("").await.unwrap(), ServingStatus::Serving);
    let condition = strict.app.readiness.report().conditions;
    assert!(condition[0].state.contains("--revocation-store-required"), "{condition:?}");

    redis.restart();
    strict.wait_for(ServingStatus::Serving).await;

    // A strict replica that starts while Redis is down waits for the replay.
    redis.kill();
    let mut late = config(&issuer, Some(&redis));
    late.revocation.settings.store_required = true;
    late.revocation.settings.outage_limit = Duration::from_secs(1);
    let late = Server::start_with(late).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(late.health("").await.unwrap(), ServingStatus::NotServing);
    redis.restart();
    late.wait_for(ServingStatus::Serving).await;
    assert!(late.app.revocation.is_replayed());
}

/// Starts replicas for the measurement below.
async fn replicas(issuer: &TestIssuer, redis: &Redis, n: usize) -> Vec<Server> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(replica(issuer, Some(redis)).await);
    }
    out
}

/// The time from an event accepted by replica A to its refusal on replica
/// B, over 1,000 events with three replicas and Redis on loopback. Prints
/// p50, p99 and the largest; run with
/// `cargo test --release --test it revocation::propagation -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints figures, asserts nothing about time"]
async fn propagation_latency_three_replicas() {
    let key = TestKey::es256("ins_lat");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let redis = Redis::start();
    let servers = replicas(&issuer, &redis, 3).await;
    let now = unix_now();
    let mut samples = Vec::with_capacity(1000);
    for i in 0..1000 {
        let sid = format!("sess_lat_{i}");
        let tok = token(&key, &issuer, &sid, "user_lat", now - 5, None);
        let (a, b) = (&servers[i % 3], &servers[(i + 1) % 3]);
        assert_eq!(b.reason(&tok).await, Reason::Valid);
        let start = Instant::now();
        record(a, event(&format!("msg_lat_{i}"), session(&sid), Cause::SessionRevoked, now_ms())).await.unwrap();
        until_revoked(b, &tok).await;
        samples.push(start.elapsed());
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "propagation over {} events, 3 replicas, Redis on loopback: p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        p(0.50),
        p(0.99),
        samples.last().unwrap()
    );
}

// === by hand: `clerk-introspect revoke`, and real `serve` processes ===

#[tokio::test]
async fn the_revoke_command_reaches_every_replica_through_the_store() {
    use crate::scratch::{ServeProcess, run_bin, stderr, stdout};
    let key = TestKey::rsa("ins_cli");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let redis = Redis::start();
    let a = replica(&issuer, Some(&redis)).await;
    // A real `serve` process, configured by its flags, beside the in-process replica.
    let mut process = ServeProcess::start(&[
        "--issuer",
        issuer.issuer(),
        "--revocation-store",
        &redis.url(),
        "--token-cache-size",
        "1000",
    ]);
    process.wait_for_line("revocations replayed");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", process.addr)).unwrap().connect_lazy();
    let mut b = clerk_introspect::pb::token_introspection_client::TokenIntrospectionClient::new(channel);
    let now = unix_now();
    let tok = token(&key, &issuer, "sess_cli", "user_cli", now - 5, Some("org_cli"));
    let reason_on_b = |b: &mut clerk_introspect::pb::token_introspection_client::TokenIntrospectionClient<_>,
                       t: String| {
        let mut b = b.clone();
        async move {
            let answer = b.verify(clerk_introspect::pb::VerifyRequest { token: t, expect: None }).await.unwrap();
            Reason::try_from(answer.into_inner().reason).unwrap()
        }
    };
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    while reason_on_b(&mut b, tok.clone()).await != Reason::Valid {
        assert!(Instant::now() < deadline, "the serve process never answered valid");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Without a store: a clear refusal, nothing else to call.
    let out = run_bin(&["revoke", "--session", "sess_cli"], None).await;
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("no revocation store"), "{}", stderr(&out));
    let out = run_bin(&["revoke", "--revocation-store", &redis.url()], None).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("name what to revoke"), "{}", stderr(&out));

    // The membership by hand: both replicas refuse, the user's other orgs pass.
    let out =
        run_bin(&["revoke", "--user", "user_cli", "--org", "org_cli", "--revocation-store", &redis.url()], None).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("revoked membership of user_cli in org_cli"), "{}", stdout(&out));
    until_revoked(&a, &tok).await;
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    while reason_on_b(&mut b, tok.clone()).await != Reason::SessionRevoked {
        assert!(Instant::now() < deadline, "the serve process never applied the revoke");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other_org = token(&key, &issuer, "sess_cli", "user_cli", now - 5, Some("org_other"));
    assert_eq!(reason_on_b(&mut b, other_org).await, Reason::Valid);

    // A store that does not answer: exit 69.
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let out = run_bin(&["revoke", "--session", "sess_x", "--revocation-store", &dead], None).await;
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    // serve says at start-up where revocations go; the password never shows.
    let _ = process.child.kill();
    let _ = process.child.wait();
}

#[tokio::test]
async fn serve_says_revocations_reach_this_replica_only_without_a_store() {
    use crate::scratch::ServeProcess;
    let key = TestKey::rsa("ins_alone");
    let issuer = TestIssuer::start(vec![key]).await.unwrap();
    let mut process = ServeProcess::start(&["--issuer", issuer.issuer()]);
    let line = process.wait_for_line("revocations reach this replica only");
    assert!(line.contains("--revocation-store"), "{line}");
    let _ = process.child.kill();
    let _ = process.child.wait();
}

/// What a 60 s Redis outage does to answers and readiness, measured: two
/// replicas (A default, S with --revocation-store-required and the default
/// 30 s outage limit), a token revoked before the outage, one revoked on A
/// during it (A answers 5xx to the webhook: Svix retries), a valid token.
/// Polls every 100 ms and prints what changed, when. Run with
/// `cargo test --test it revocation::redis_outage -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: takes 70 s and prints a timeline"]
async fn redis_outage_of_60_seconds() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let key = TestKey::es256("ins_outage");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut redis = Redis::start();
    let a = replica(&issuer, Some(&redis)).await;
    let mut strict = config(&issuer, Some(&redis));
    strict.revocation.settings.store_required = true;
    let s = Server::start_with(strict).await;
    s.wait_for(ServingStatus::Serving).await;
    // Minted at each poll at the replica's (manual) clock.
    let tok_on = |server: &Server, sid: &str| {
        let iat = server.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        token(&key, &issuer, sid, "user_out", iat, None)
    };
    let tok = |sid: &str| tok_on(&a, sid);
    record(&a, event("msg_before", session("sess_before"), Cause::SessionRevoked, now_ms())).await.unwrap();
    until_revoked(&s, &tok("sess_before")).await;

    let start = Instant::now();
    redis.kill();
    let during = event("msg_during", session("sess_during"), Cause::SessionRevoked, now_ms());
    let first = record(&a, during.clone()).await;
    println!(
        "t={:>5.1}s  Redis killed; record on A -> {:?}",
        start.elapsed().as_secs_f64(),
        first.map_err(|e| e.to_string())
    );
    let mut last = String::new();
    let mut restarted = false;
    let mut retried = false;
    while start.elapsed() < OUTAGE + Duration::from_secs(10) {
        if !restarted && start.elapsed() >= OUTAGE {
            redis.restart();
            restarted = true;
            println!("t={:>5.1}s  Redis restarted", start.elapsed().as_secs_f64());
        }
        if restarted && !retried {
            // Svix's retry of the webhook that got 5xx.
            if let Ok(r) = record(&a, during.clone()).await {
                retried = true;
                println!("t={:>5.1}s  retry on A -> {r:?}", start.elapsed().as_secs_f64());
            }
        }
        let mut state = Vec::new();
        for (name, server) in [("A", &a), ("S", &s)] {
            let r = |t: String| async move { format!("{:?}", server.reason(&t).await) };
            state.push(format!(
                "{name}: health {:?}, revoked-before {}, revoked-during {}, valid {}",
                server.health("").await.ok(),
                r(tok_on(server, "sess_before")).await,
                r(tok_on(server, "sess_during")).await,
                r(tok_on(server, "sess_fine")).await
            ));
        }
        let line = state.join(" | ");
        if line != last {
            println!("t={:>5.1}s  {line}", start.elapsed().as_secs_f64());
            last = line;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// === through real, Svix-signed Clerk webhooks ===

/// Svix's published example secret.
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A replica with `--webhook-listen` and a signing secret, sharing `redis`.
async fn webhook_replica(issuer: &TestIssuer, redis: &Redis) -> (Server, std::net::SocketAddr) {
    let args = [
        "--issuer",
        issuer.issuer(),
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-signing-secret",
        WEBHOOK_SECRET,
        "--revocation-store",
        &redis.url(),
    ];
    let mut config = clerk_introspect::cli::serve::parse(args).unwrap().loader().load().unwrap();
    config.issuers = vec![issuer_config(issuer)];
    let (server, hook) = Server::start_with_webhook(config).await;
    server.wait_for(ServingStatus::Serving).await;
    (server, hook)
}

/// POSTs a Clerk event to `hook`, signed as Svix signs (`svix_id` given,
/// the timestamp now, `secret`): the HTTP status.
async fn deliver(hook: std::net::SocketAddr, svix_id: &str, secret: &str, event: &Value) -> u16 {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = event.to_string();
    let ts = unix_now();
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap(),
    );
    let signature = b64.encode(aws_lc_rs::hmac::sign(&key, format!("{svix_id}.{ts}.{body}").as_bytes()));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client
        .post(format!("http://{hook}/webhooks/clerk"))
        .header("content-type", "application/json")
        .header("svix-id", svix_id)
        .header("svix-timestamp", ts.to_string())
        .header("svix-signature", format!("v1,{signature}"))
        .body(body)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

fn clerk_event(event_type: &str, data: Value) -> Value {
    json!({"object": "event", "type": event_type, "timestamp": now_ms(), "instance_id": "ins_test", "data": data})
}

#[tokio::test]
async fn signed_webhooks_on_one_replica_are_enforced_by_every_replica() {
    let key = TestKey::es256("ins_hook");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let mut redis = Redis::start_persistent();
    let (a, hook) = webhook_replica(&issuer, &redis).await;
    let b = replica(&issuer, Some(&redis)).await;
    let c = replica(&issuer, Some(&redis)).await;
    let now = unix_now();
    let t = |sid: &str, sub: &str, org: Option<&str>| token(&key, &issuer, sid, sub, now - 5, org);

    // session.ended for one session: refused on A, B, C; the user's other session is not.
    let ended = json!({"object": "session", "id": "sess_hook", "user_id": "user_hook", "status": "ended", "client_id": "client_1"});
    assert_eq!(deliver(hook, "msg_hook_1", WEBHOOK_SECRET, &clerk_event("session.ended", ended)).await, 200);
    for s in [&a, &b, &c] {
        until_revoked(s, &t("sess_hook", "user_hook", None)).await;
        assert_eq!(s.reason(&t("sess_other", "user_hook", None)).await, Reason::Valid);
    }
    let answer = b.verify(&t("sess_hook", "user_hook", None)).await;
    assert!(answer.message.contains("session.ended"), "{}", answer.message);

    // The same delivery again (Svix retries): 200, applied once.
    let ended_again = json!({"object": "session", "id": "sess_hook", "user_id": "user_hook", "status": "ended"});
    assert_eq!(deliver(hook, "msg_hook_1", WEBHOOK_SECRET, &clerk_event("session.ended", ended_again)).await, 200);
    assert_eq!(a.app.revocation.index().len(), 1);

    // A ban and a membership removal.
    let banned = json!({"object": "user", "id": "user_banned", "banned": true, "locked": false});
    assert_eq!(deliver(hook, "msg_hook_2", WEBHOOK_SECRET, &clerk_event("user.updated", banned)).await, 200);
    let removed = json!({"object": "organization_membership", "id": "orgmem_1", "role": "org:admin",
        "organization": {"id": "org_hook", "object": "organization"},
        "public_user_data": {"user_id": "user_member"}});
    assert_eq!(
        deliver(hook, "msg_hook_3", WEBHOOK_SECRET, &clerk_event("organizationMembership.deleted", removed)).await,
        200
    );
    until_revoked(&c, &t("sess_b", "user_banned", None)).await;
    until_revoked(&c, &t("sess_m", "user_member", Some("org_hook"))).await;
    assert_eq!(c.reason(&t("sess_m", "user_member", Some("org_other"))).await, Reason::Valid);

    // A bad signature is refused and revokes nothing.
    let forged = json!({"object": "session", "id": "sess_forged", "user_id": "user_x", "status": "revoked"});
    let wrong_secret = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let status = deliver(hook, "msg_forged", wrong_secret, &clerk_event("session.revoked", forged)).await;
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(a.reason(&t("sess_forged", "user_x", None)).await, Reason::Valid);

    // Redis down: 503 (Svix retries), applied on A at once; after Redis
    // returns the retry is 200 and B catches up.
    redis.kill();
    let during = json!({"object": "session", "id": "sess_outage", "user_id": "user_o", "status": "revoked"});
    let event = clerk_event("session.revoked", during);
    assert_eq!(deliver(hook, "msg_hook_4", WEBHOOK_SECRET, &event).await, 503);
    assert_eq!(a.reason(&t("sess_outage", "user_o", None)).await, Reason::SessionRevoked);
    redis.restart();
    let deadline = Instant::now() + PROPAGATION_LIMIT;
    while deliver(hook, "msg_hook_4", WEBHOOK_SECRET, &event).await != 200 {
        assert!(Instant::now() < deadline, "the retry never succeeded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_revoked(&b, &t("sess_outage", "user_o", None)).await;
}
