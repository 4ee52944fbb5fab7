//! Clerk webhooks end to end: the real server with `--webhook-listen
//! 127.0.0.1:0` (configured through the real command-line parser), a real
//! HTTP client, deliveries signed here exactly as Svix signs them (an
//! independent HMAC-SHA256 over `{id}.{timestamp}.{body}`), and a test
//! [`Record`] that keeps what it is given. The binary itself is run for
//! what it says at start-up.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clerk_introspect::app::{App, Deps};
use clerk_introspect::config::Config;
use clerk_introspect::revocation::{Cause, Record, RecordError, Recorded, Revocation, RevocationEvent};
use clerk_introspect::server::webhook::{self, WebhookListener};
use clerk_introspect::{ServeError, ServeOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_clerk-introspect");
/// Svix's published example secret (its libraries' tests).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second secret (Svix's Rust library's test secret), for rotation.
const NEW_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// A secret the server does not know.
const STRANGER: &str = "whsec_c3RyYW5nZXIgc2VjcmV0IGJ5dGVzIQ==";

// === signing, as Svix does ===

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` under `secret`.
fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key_bytes = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key_bytes);
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    format!("v1,{}", STANDARD.encode(aws_lc_rs::hmac::sign(&key, &content)))
}

/// A delivery: its headers and body.
struct Delivery {
    id: String,
    timestamp: i64,
    signature: String,
    body: Vec<u8>,
}

impl Delivery {
    /// `body` signed now with `secret`, under a fresh message id.
    fn new(secret: &str, body: &serde_json::Value) -> Delivery {
        Self::at(secret, body, now())
    }

    fn at(secret: &str, body: &serde_json::Value, timestamp: i64) -> Delivery {
        let id = format!("msg_{:016x}", fastrand::u64(..));
        let body = body.to_string().into_bytes();
        Delivery { signature: sign(secret, &id, timestamp, &body), id, timestamp, body }
    }
}

/// Clerk's envelope around `data`.
fn event(event_type: &str, data: serde_json::Value) -> serde_json::Value {
    json!({
        "data": data,
        "event_attributes": {"http_request": {"client_ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}},
        "instance_id": "ins_2GIoQhbUpy0hX7B2cVkuTMinXoD",
        "object": "event",
        "timestamp": 1_700_000_123_456u64,
        "type": event_type
    })
}

// === a Record that keeps what it is given ===

#[derive(Default)]
struct Kept {
    events: Mutex<Vec<RevocationEvent>>,
    seen: Mutex<HashSet<String>>,
    failing: AtomicBool,
}

impl Record for Kept {
    fn record(
        &self,
        event: RevocationEvent,
    ) -> Pin<Box<dyn Future<Output = Result<Recorded, RecordError>> + Send + '_>> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) {
                return Err(RecordError::Store("redis://10.0.0.9:6379 refused the connection".to_owned()));
            }
            if !self.seen.lock().unwrap().insert(event.id.clone()) {
                return Ok(Recorded::Duplicate);
            }
            self.events.lock().unwrap().push(event);
            Ok(Recorded::Applied)
        })
    }
}

impl Kept {
    fn events(&self) -> Vec<RevocationEvent> {
        self.events.lock().unwrap().clone()
    }
}

// === the server ===

struct Hook {
    webhook: SocketAddr,
    metrics: SocketAddr,
    kept: Arc<Kept>,
    app: App,
    http: reqwest::Client,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

/// `serve`'s configuration from these flags (no issuer is contacted).
fn config(flags: &[&str]) -> Config {
    let mut args = vec!["--issuer", "https://clerk.example.com", "--webhook-listen", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    let mut config =
        clerk_introspect::cli::serve::parse(args).unwrap().loader().load().unwrap_or_else(|e| panic!("{e}"));
    config.issuers.clear();
    config
}

impl Hook {
    /// The server with `--webhook-signing-secret SECRET` and `flags`.
    async fn start(flags: &[&str]) -> Hook {
        let mut all = vec!["--webhook-signing-secret", SECRET];
        all.extend_from_slice(flags);
        Self::start_with(config(&all)).await
    }

    async fn start_with(config: Config) -> Hook {
        let webhook_listener = TcpListener::bind(config.webhook.listen.unwrap()).await.unwrap();
        let webhook = webhook_listener.local_addr().unwrap();
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = metrics_listener.local_addr().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::start(&config, Deps::default()).unwrap();
        let kept = Arc::new(Kept::default());
        let options = ServeOptions {
            admin_listener: Some(metrics_listener),
            reload: None,
            webhook: Some(WebhookListener { listener: webhook_listener, record: kept.clone() }),
        };
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(clerk_introspect::serve(listener, app.clone(), options, stop.clone().cancelled_owned()));
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Hook { webhook, metrics, kept, app, http, stop, task }
    }

    fn url(&self) -> String {
        format!("http://{}/webhooks/clerk", self.webhook)
    }

    /// POSTs `d` with Svix's headers: (status, body).
    async fn send(&self, d: &Delivery) -> (u16, String) {
        self.send_with(d, &[]).await
    }

    /// POSTs `d`, leaving out the headers named in `without`.
    async fn send_with(&self, d: &Delivery, without: &[&str]) -> (u16, String) {
        let mut request = self.http.post(self.url()).header("content-type", "application/json");
        for (name, value) in [
            ("svix-id", d.id.clone()),
            ("svix-timestamp", d.timestamp.to_string()),
            ("svix-signature", d.signature.clone()),
        ] {
            if !without.contains(&name) {
                request = request.header(name, value);
            }
        }
        let response = request.body(d.body.clone()).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The value of `clerk_introspect_webhooks_total{event_type, result}`.
    async fn count(&self, event_type: &str, result: &str) -> f64 {
        let text =
            self.http.get(format!("http://{}/metrics", self.metrics)).send().await.unwrap().text().await.unwrap();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "clerk_introspect_webhooks_total"
                    && s.labels.get("event_type") == Some(event_type)
                    && s.labels.get("result") == Some(result)
            })
            .map_or(0.0, |s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                ref other => panic!("{other:?}"),
            })
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

// === events ===

fn session(id: &str, status: &str) -> serde_json::Value {
    json!({
        "abandon_at": 1_702_592_123_000u64,
        "client_id": "client_2cQ8TqKZ3wF1sJ0bY4mXhR7vUeN",
        "created_at": 1_700_000_000_000u64,
        "expire_at": 1_700_604_800_000u64,
        "id": id,
        "last_active_at": 1_700_000_100_000u64,
        "object": "session",
        "status": status,
        "updated_at": 1_700_000_123_000u64,
        "user_id": "user_2cQ8TpX3mB7vN1kR9sW4yZ0hLqD"
    })
}

fn user(id: &str, banned: bool, locked: bool) -> serde_json::Value {
    json!({
        "banned": banned,
        "email_addresses": [{"email_address": "ada@example.com", "id": "idn_1", "object": "email_address"}],
        "first_name": "Ada",
        "id": id,
        "locked": locked,
        "object": "user",
        "public_metadata": {"plan": "pro"},
        "updated_at": 1_700_000_123_000u64
    })
}

fn membership(user_id: &str, org_id: &str) -> serde_json::Value {
    json!({
        "id": "orgmem_2cQ8TmR4vK1xJ7pN0wB3yZ6hLqE",
        "object": "organization_membership",
        "organization": {"id": org_id, "name": "Acme Inc", "object": "organization", "slug": "acme-inc"},
        "public_user_data": {"identifier": "ada@example.com", "user_id": user_id},
        "role": "org:admin"
    })
}

#[tokio::test]
async fn each_event_type_is_recorded_as_its_revocation() {
    let hook = Hook::start(&[]).await;
    let at_ms = 1_700_000_123_456;
    let cases = [
        (
            event("session.revoked", session("sess_revoked1", "revoked")),
            Revocation::Session { sid: "sess_revoked1".into() },
            Cause::SessionRevoked,
        ),
        (
            event("session.ended", session("sess_ended1", "ended")),
            Revocation::Session { sid: "sess_ended1".into() },
            Cause::SessionEnded,
        ),
        (
            event("session.removed", session("sess_removed1", "removed")),
            Revocation::Session { sid: "sess_removed1".into() },
            Cause::SessionRemoved,
        ),
        (
            event("user.deleted", json!({"deleted": true, "id": "user_deleted1", "object": "user"})),
            Revocation::User { sub: "user_deleted1".into() },
            Cause::UserDeleted,
        ),
        (
            event("user.updated", user("user_banned1", true, false)),
            Revocation::User { sub: "user_banned1".into() },
            Cause::UserBanned,
        ),
        (
            event("user.updated", user("user_locked1", false, true)),
            Revocation::User { sub: "user_locked1".into() },
            Cause::UserLocked,
        ),
        (
            event("organizationMembership.deleted", membership("user_member1", "org_acme1")),
            Revocation::Membership { sub: "user_member1".into(), org_id: "org_acme1".into() },
            Cause::MembershipRemoved,
        ),
        (
            event("organization.deleted", json!({"deleted": true, "id": "org_gone1", "object": "organization"})),
            Revocation::Organization { org_id: "org_gone1".into() },
            Cause::OrganizationDeleted,
        ),
    ];
    let mut want = Vec::new();
    for (body, revocation, cause) in cases {
        let d = Delivery::new(SECRET, &body);
        let (status, text) = hook.send(&d).await;
        assert_eq!(status, 200, "{body}: {text}");
        assert!(text.starts_with("applied: "), "{text}");
        want.push(RevocationEvent { id: d.id.clone(), revocation, cause, at_ms });
    }
    assert_eq!(hook.kept.events(), want);
    assert_eq!(hook.count("session.revoked", "applied").await, 1.0);
    assert_eq!(hook.count("user.updated", "applied").await, 2.0);
    assert_eq!(hook.count("organizationMembership.deleted", "applied").await, 1.0);
    hook.stop().await;
}

#[tokio::test]
async fn the_event_time_is_the_delivery_time_when_the_body_has_none() {
    let hook = Hook::start(&[]).await;
    let mut body = event("session.revoked", session("sess_1", "revoked"));
    body.as_object_mut().unwrap().remove("timestamp");
    let d = Delivery::new(SECRET, &body);
    assert_eq!(hook.send(&d).await.0, 200);
    assert_eq!(hook.kept.events()[0].at_ms, d.timestamp as u64 * 1000);
    hook.stop().await;
}

#[tokio::test]
async fn other_events_are_acknowledged_and_counted_but_revoke_nothing() {
    let hook = Hook::start(&[]).await;
    for body in [
        event("session.created", session("sess_new", "active")),
        event("user.updated", user("user_fine", false, false)),
        event("role.created", json!({"id": "role_1", "key": "org:editor"})),
        event("paymentAttempt.created", json!({"id": "pa_1"})),
    ] {
        let (status, text) = hook.send(&Delivery::new(SECRET, &body)).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.starts_with("ignored: "), "{text}");
    }
    assert!(hook.kept.events().is_empty());
    assert_eq!(hook.count("session.created", "ignored").await, 1.0);
    assert_eq!(hook.count("user.updated", "ignored").await, 1.0);
    assert_eq!(hook.count("other", "ignored").await, 2.0, "types outside the known set share one label");
    hook.stop().await;
}

#[tokio::test]
async fn a_redelivered_message_is_recorded_once() {
    let hook = Hook::start(&[]).await;
    let d = Delivery::new(SECRET, &event("session.revoked", session("sess_1", "revoked")));
    assert_eq!(hook.send(&d).await.0, 200);
    let (status, text) = hook.send(&d).await;
    assert_eq!(status, 200, "a duplicate is still a success for Svix");
    assert!(text.starts_with("duplicate: "), "{text}");
    assert_eq!(hook.kept.events().len(), 1);
    assert_eq!(hook.count("session.revoked", "duplicate").await, 1.0);
    hook.stop().await;
}

#[tokio::test]
async fn deliveries_not_signed_by_a_configured_secret_are_refused() {
    let hook = Hook::start(&[]).await;
    let body = event("user.deleted", json!({"deleted": true, "id": "user_1", "object": "user"}));

    let stranger = Delivery::new(STRANGER, &body);
    let (status, text) = hook.send(&stranger).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("no v1 signature"), "{text}");
    assert!(!text.contains(&stranger.signature[3..]), "the answer never echoes the signature: {text}");

    // Signed, then altered: the body, the id, the timestamp.
    let mut altered = Delivery::new(SECRET, &body);
    altered.body =
        event("user.deleted", json!({"deleted": true, "id": "user_2", "object": "user"})).to_string().into_bytes();
    assert_eq!(hook.send(&altered).await.0, 401);
    let mut other_id = Delivery::new(SECRET, &body);
    other_id.id.push('x');
    assert_eq!(hook.send(&other_id).await.0, 401);
    let mut other_time = Delivery::new(SECRET, &body);
    other_time.timestamp -= 1;
    assert_eq!(hook.send(&other_time).await.0, 401);

    // Missing headers: 400, naming the header.
    for header in ["svix-id", "svix-timestamp", "svix-signature"] {
        let (status, text) = hook.send_with(&Delivery::new(SECRET, &body), &[header]).await;
        assert_eq!(status, 400, "{header}: {text}");
        assert!(text.contains(header), "{text}");
    }
    assert!(hook.kept.events().is_empty());
    assert_eq!(hook.count("unknown", "bad_signature").await, 7.0);
    hook.stop().await;
}

#[tokio::test]
async fn timestamps_more_than_five_minutes_old_or_ahead_are_refused() {
    let hook = Hook::start(&[]).await;
    let body = event("session.revoked", session("sess_1", "revoked"));
    for (offset, word) in [(-400, "old"), (400, "in the future")] {
        let d = Delivery::at(SECRET, &body, now() + offset);
        let (status, text) = hook.send(&d).await;
        assert_eq!(status, 401, "{offset}: {text}");
        assert!(text.contains(word), "{text}");
    }
    // Within the five minutes, either way.
    for offset in [-240, 240] {
        assert_eq!(hook.send(&Delivery::at(SECRET, &body, now() + offset)).await.0, 200);
    }
    assert_eq!(hook.count("unknown", "stale").await, 2.0);
    assert_eq!(hook.kept.events().len(), 2);
    hook.stop().await;
}

#[tokio::test]
async fn while_rotating_every_configured_secret_is_accepted() {
    let dir =
        std::env::temp_dir().join(format!("clerk-introspect-webhook-{}-{:x}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("signing-secrets");
    std::fs::write(&file, format!("# mounted from the Kubernetes Secret\n{NEW_SECRET}\n\n")).unwrap();
    let hook = Hook::start(&["--webhook-signing-secret-file", file.to_str().unwrap()]).await;
    let body = event("session.revoked", session("sess_1", "revoked"));
    // Our side: the old secret (flag) and the new one (file) both pass.
    assert_eq!(hook.send(&Delivery::new(SECRET, &body)).await.0, 200);
    assert_eq!(hook.send(&Delivery::new(NEW_SECRET, &body)).await.0, 200);
    assert_eq!(hook.send(&Delivery::new(STRANGER, &body)).await.0, 401);
    // Svix's side: a header with a signature per secret, one unknown here.
    let mut both = Delivery::new(STRANGER, &body);
    both.signature = format!("{} {}", both.signature, sign(NEW_SECRET, &both.id, both.timestamp, &both.body));
    assert_eq!(hook.send(&both).await.0, 200);
    assert_eq!(hook.kept.events().len(), 3);

    // A reload that drops the old secret: the new one alone passes.
    let mut reloaded = config(&["--webhook-signing-secret-file", file.to_str().unwrap()]);
    reloaded.issuers.clear();
    let summary = hook.app.reload(&reloaded).unwrap();
    assert_eq!(summary.webhook_signing_secrets, Some(1));
    assert_eq!(hook.send(&Delivery::new(SECRET, &body)).await.0, 401);
    assert_eq!(hook.send(&Delivery::new(NEW_SECRET, &body)).await.0, 200);
    hook.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused_with_413() {
    let hook = Hook::start(&["--webhook-max-body-bytes", "2KiB"]).await;
    let big = event("user.updated", json!({"id": "user_1", "banned": true, "bio": "x".repeat(4096)}));
    let (status, text) = hook.send(&Delivery::new(SECRET, &big)).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("2048 bytes"), "{text}");

    // Without Content-Length (chunked): refused once the cap is passed.
    let over = event("user.updated", json!({"id": "user_1", "banned": true, "bio": "x".repeat(1900)}));
    let d = Delivery::new(SECRET, &over);
    assert!(d.body.len() > 2048 && d.body.len() < 2300);
    let mut request = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\nsvix-id: {}\r\nsvix-timestamp: {}\r\nsvix-signature: {}\r\n\r\n",
        d.id, d.timestamp, d.signature
    )
    .into_bytes();
    for chunk in d.body.chunks(1000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // One write, so the server has read it all when it answers and closes.
    let mut conn = tokio::net::TcpStream::connect(hook.webhook).await.unwrap();
    conn.write_all(&request).await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut answer)).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Under the cap: fine.
    let small = event("user.updated", user("user_1", true, false));
    assert_eq!(hook.send(&Delivery::new(SECRET, &small)).await.0, 200);
    assert_eq!(hook.count("unknown", "too_large").await, 2.0);
    hook.stop().await;
}

#[tokio::test]
async fn signed_bodies_that_are_not_clerk_events_are_refused_with_400() {
    let hook = Hook::start(&[]).await;
    for body in [
        json!("just a string"),
        json!({"type": "session.revoked"}),
        json!({"type": "session.revoked", "data": {"status": "revoked"}, "object": "event"}),
        json!({"type": "organizationMembership.deleted", "data": {"organization": {"id": "org_1"}}}),
    ] {
        let (status, text) = hook.send(&Delivery::new(SECRET, &body)).await;
        assert_eq!(status, 400, "{body}: {text}");
    }
    let mut not_json = Delivery::new(SECRET, &json!(null));
    not_json.body = b"<xml/>".to_vec();
    not_json.signature = sign(SECRET, &not_json.id, not_json.timestamp, &not_json.body);
    let (status, text) = hook.send(&not_json).await;
    assert_eq!(status, 400);
    assert!(text.contains("not a Clerk webhook event"), "{text}");
    assert!(hook.kept.events().is_empty());
    assert_eq!(hook.count("unknown", "malformed").await, 3.0);
    assert_eq!(hook.count("session.revoked", "malformed").await, 1.0);
    assert_eq!(hook.count("organizationMembership.deleted", "malformed").await, 1.0);
    hook.stop().await;
}

#[tokio::test]
async fn an_event_that_cannot_be_recorded_gets_503_and_is_taken_when_retried() {
    let hook = Hook::start(&[]).await;
    let d = Delivery::new(SECRET, &event("session.revoked", session("sess_1", "revoked")));
    hook.kept.failing.store(true, Ordering::SeqCst);
    let (status, text) = hook.send(&d).await;
    assert_eq!(status, 503, "{text}");
    assert!(!text.contains("10.0.0.9"), "the store's details stay in the log: {text}");
    assert_eq!(hook.count("session.revoked", "store_error").await, 1.0);
    // Svix retries the same message (same id, a new timestamp and signature).
    hook.kept.failing.store(false, Ordering::SeqCst);
    let retry_at = now();
    let retry = Delivery {
        signature: sign(SECRET, &d.id, retry_at, &d.body),
        id: d.id.clone(),
        timestamp: retry_at,
        body: d.body.clone(),
    };
    assert_eq!(hook.send(&retry).await.0, 200);
    assert_eq!(hook.kept.events().len(), 1);
    assert_eq!(hook.kept.events()[0].id, d.id);
    hook.stop().await;
}

#[tokio::test]
async fn only_post_to_the_webhook_path_is_served() {
    let hook = Hook::start(&[]).await;
    let get = hook.http.get(hook.url()).send().await.unwrap();
    assert_eq!(get.status().as_u16(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    for path in ["/", "/metrics", "/webhooks/clerk/x", "/webhooks"] {
        let r = hook.http.post(format!("http://{}{path}", hook.webhook)).body("{}").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    // The query string is not part of the path.
    let d = Delivery::new(SECRET, &event("session.revoked", session("sess_1", "revoked")));
    let r = hook
        .http
        .post(format!("{}?source=clerk", hook.url()))
        .header("svix-id", &d.id)
        .header("svix-timestamp", d.timestamp.to_string())
        .header("svix-signature", &d.signature)
        .body(d.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    hook.stop().await;
}

/// The listener on its own, with short limits: a body that stops coming,
/// and a head that never ends.
#[tokio::test]
async fn slow_bodies_and_heads_are_cut_off() {
    let config = config(&["--webhook-signing-secret", SECRET]);
    let app = App::start(&config, Deps::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = webhook::Limits {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        ..webhook::Limits::default()
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(webhook::serve(
        listener,
        app.webhook.clone(),
        Arc::new(Kept::default()),
        limits,
        stop.clone().cancelled_owned(),
    ));
    let answer = tokio::task::spawn_blocking(move || {
        let mut slow_body = std::net::TcpStream::connect(addr).unwrap();
        slow_body
            .write_all(b"POST /webhooks/clerk HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"type\":")
            .unwrap();
        let mut answer = String::new();
        let _ = slow_body.read_to_string(&mut answer);
        let mut slow_head = std::net::TcpStream::connect(addr).unwrap();
        slow_head.write_all(b"POST /webhooks/clerk HTTP/1.1\r\nhost: x\r\n").unwrap();
        // Returns once the server closes it (end of stream or reset).
        let _ = slow_head.read_to_end(&mut Vec::new());
        answer
    });
    let answer = tokio::time::timeout(Duration::from_secs(10), answer).await.expect("both cut off in time").unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    stop.cancel();
    task.await.unwrap().unwrap();
}

// === the binary and the configuration ===

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("CLERK_WEBHOOK_SIGNING_SECRET").env_remove("CLERK_ISSUER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_configuration_requires_valid_secrets_and_never_shows_them() {
    let serve = ["serve", "--issuer", "https://clerk.example.com", "--webhook-listen", "127.0.0.1:0", "--check-config"];
    // No secret at all.
    let (code, _, err) = run(&serve, &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--webhook-listen") && err.contains("signing secret"), "{err}");
    // Not whsec_, not base64: the message names the fault, never the value.
    for bad in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_MfKQ9r8GKYqrTwjUPD8IL!!!Io2LaLaSw"] {
        let (code, out, err) = run(&serve, &[("CLERK_WEBHOOK_SIGNING_SECRET", bad)]);
        assert_eq!(code, 64, "{err}");
        assert!(err.contains("--webhook-signing-secret"), "{err}");
        assert!(!err.contains("MfKQ9r8") && !out.contains("MfKQ9r8"), "the secret leaked: {err}");
    }
    // Comma- or space-separated in the environment; the summary counts them.
    let (code, out, err) = run(&serve, &[("CLERK_WEBHOOK_SIGNING_SECRET", &format!("{SECRET}, {NEW_SECRET}"))]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("webhooks: POST /webhooks/clerk on 127.0.0.1:0, 2 signing secret(s)"), "{out}");
    assert!(!out.contains("MfKQ9r8"), "{out}");
    // --help never shows the environment's secret.
    let (code, out, _) = run(&["serve", "--help"], &[("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)]);
    assert_eq!(code, 0);
    assert!(out.contains("--webhook-signing-secret"), "{out}");
    assert!(!out.contains("MfKQ9r8"), "--help shows the secret:\n{out}");
    // The webhook port is its own.
    let (code, _, err) = run(
        &["serve", "--issuer", "https://clerk.example.com", "--webhook-listen", "0.0.0.0:9464", "--check-config"],
        &[("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)],
    );
    assert_eq!(code, 64);
    assert!(err.contains("metrics port"), "{err}");
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let args = clerk_introspect::cli::serve::parse([
        "--issuer",
        "https://clerk.example.com",
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-signing-secret",
        SECRET,
    ])
    .unwrap();
    let config = args.loader().load().unwrap();
    for shown in [format!("{args:?}"), format!("{config:?}"), format!("{:?}", args.loader())] {
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
    }
}

#[test]
fn the_binary_serves_webhooks_into_the_revocation_service() {
    // `serve` wires the endpoint to the revocation service (webhook_record in
    // main.rs): it starts, and says where revocations go.
    let mut process = crate::scratch::ServeProcess::start_with_env(
        &["--issuer", "https://clerk.example.com", "--webhook-listen", "127.0.0.1:0"],
        &[("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)],
    );
    process.wait_for_line("revocations reach this replica only");
    process.wait_for_line("serving Clerk webhooks");
    let _ = process.child.kill();
    let _ = process.child.wait();
}
