//! The cost of revocation on the verification hot path: `Verifier::verify`
//! with the revocation index on (100,000 entries of every kind, none of
//! them covering the token, one probing its user) against off, alternated
//! round by round in one run, for
//!
//! - `hot`: the same token again and again (a token-cache hit: the
//!   cheapest path, where the check weighs most);
//! - `distinct`: a different token on every call (no cache: decode and a
//!   signature check every time).
//!
//! - `service hot`: the same hot Verify as one gRPC call through the
//!   server's tower service in process (framing, decoding, the answer's
//!   encoding; no HTTP/2 or network), closer to what a client sees.
//!
//! Prints the median time per call of each, and the ratio on/off.
//! Run: `cargo bench --bench revocation`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, UNIX_EPOCH};

use clerk_introspect::clock::{Clock, ManualClock};
use clerk_introspect::keys::fetch::Fetcher;
use clerk_introspect::keys::jwk::key_from_jwk_json;
use clerk_introspect::keys::{IssuerKeys, KeyContext, KeySource, NoopObserver, RefreshSettings};
use clerk_introspect::revocation::index::Index;
use clerk_introspect::revocation::{Cause, Revocation, RevocationEvent};
use clerk_introspect::test_issuer::{TestKey, session_claims};
use clerk_introspect::verify::{Expectations, Policy, Trust, TrustedIssuer, Verifier};
use serde_json::json;

const ISS: &str = "https://clerk.example.com";
const ENTRIES: usize = 100_000;
const ROUNDS: usize = 11;
const HOT_CALLS: usize = 200_000;
const DISTINCT_CALLS: usize = 2_000;
const SERVICE_CALLS: usize = 50_000;

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the benchmarked call waited"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
    let key = TestKey::es256("kid-bench");
    let parsed = Arc::new(key_from_jwk_json(key.jwk()).unwrap());
    let ctx = KeyContext {
        fetcher: Fetcher::new().unwrap(),
        clock: clock.clone(),
        observer: Arc::new(NoopObserver),
        changed: Default::default(),
    };
    let keys = IssuerKeys::start(Arc::from(ISS), KeySource::Static(vec![parsed]), RefreshSettings::default(), ctx);
    let trust = Trust::new([TrustedIssuer { policy: Arc::new(Policy::default()), keys }]);
    let mint = |n: usize| {
        let mut claims = session_claims(ISS, clock.now());
        claims["o"] = json!({"id": "org_bench", "rol": "admin", "slg": "bench"});
        claims["jti"] = json!(format!("{n:020}"));
        key.mint(&claims)
    };
    let hot = mint(0);
    let distinct: Vec<String> = (1..=DISTINCT_CALLS).map(mint).collect();

    let now_ms = clock.unix_seconds() as u64 * 1000;
    let index = Arc::new(Index::new(Duration::from_secs(24 * 3600), ENTRIES + 1));
    for n in 0..ENTRIES {
        let revocation = match n % 4 {
            0 => Revocation::Session { sid: format!("sess_{n:027}") },
            1 => Revocation::User { sub: format!("user_{n:027}") },
            2 => Revocation::Membership { sub: format!("user_{n:027}"), org_id: "org_bench".into() },
            _ => Revocation::Organization { org_id: format!("org_{n:028}") },
        };
        index.apply(
            &RevocationEvent { id: format!("msg_{n}"), revocation, cause: Cause::Operator, at_ms: now_ms },
            now_ms,
            true,
        );
    }
    // The token's own user, banned a minute before it was issued: probed, and passes.
    let sub = session_claims(ISS, clock.now())["sub"].as_str().unwrap().to_owned();
    let ban = RevocationEvent {
        id: "msg_ban".into(),
        revocation: Revocation::User { sub },
        cause: Cause::UserBanned,
        at_ms: now_ms - 60_000,
    };
    index.apply(&ban, now_ms, true);
    assert!(index.len() > ENTRIES);

    let trust_for_service = trust.clone();
    let index_for_service = index.clone();
    let off_hot = Verifier::with_token_cache(trust.clone(), clock.clone(), 1000);
    let on_hot = Verifier::with_token_cache(trust.clone(), clock.clone(), 1000).with_revocations(index.clone());
    let off_distinct = Verifier::new(trust.clone(), clock.clone());
    let on_distinct = Verifier::new(trust, clock.clone()).with_revocations(index);
    let none = Expectations::default();
    for v in [&off_hot, &on_hot] {
        ready(v.verify(&hot, &none)).expect("valid");
    }
    let time_hot = |v: &Verifier| {
        let start = Instant::now();
        for _ in 0..HOT_CALLS {
            black_box(ready(v.verify(black_box(&hot), &none)).unwrap());
        }
        start.elapsed().as_nanos() as f64 / HOT_CALLS as f64
    };
    let time_distinct = |v: &Verifier| {
        let start = Instant::now();
        for t in &distinct {
            black_box(ready(v.verify(black_box(t), &none)).unwrap());
        }
        start.elapsed().as_nanos() as f64 / DISTINCT_CALLS as f64
    };
    let off_served = Arc::new(Verifier::with_token_cache(trust_for_service.clone(), clock.clone(), 1000));
    let on_served = Arc::new(
        Verifier::with_token_cache(trust_for_service, clock.clone(), 1000).with_revocations(index_for_service),
    );
    let body = grpc_frame(&prost::Message::encode_to_vec(&clerk_introspect::pb::VerifyRequest {
        token: hot.clone(),
        expect: None,
    }));
    let mut off_service = clerk_introspect::service::IntrospectService::new(off_served).into_server();
    let mut on_service = clerk_introspect::service::IntrospectService::new(on_served).into_server();
    let time_service = |svc: &mut IntrospectServer| {
        let start = Instant::now();
        for _ in 0..SERVICE_CALLS {
            call(svc, "/introspect.v1.TokenIntrospection/Verify", &body, |m| m[..2] == [8, 1]);
        }
        start.elapsed().as_nanos() as f64 / SERVICE_CALLS as f64
    };
    let (mut svc_off, mut svc_on) = (vec![], vec![]);
    let (mut hot_off, mut hot_on, mut dist_off, mut dist_on) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            svc_off.push(time_service(&mut off_service));
            svc_on.push(time_service(&mut on_service));
        } else {
            svc_on.push(time_service(&mut on_service));
            svc_off.push(time_service(&mut off_service));
        }
        // Alternate which goes first, so drift hits both alike.
        if round % 2 == 0 {
            hot_off.push(time_hot(&off_hot));
            hot_on.push(time_hot(&on_hot));
            dist_off.push(time_distinct(&off_distinct));
            dist_on.push(time_distinct(&on_distinct));
        } else {
            hot_on.push(time_hot(&on_hot));
            hot_off.push(time_hot(&off_hot));
            dist_on.push(time_distinct(&on_distinct));
            dist_off.push(time_distinct(&off_distinct));
        }
    }
    let (ho, hn, dof, don) = (median(hot_off), median(hot_on), median(dist_off), median(dist_on));
    println!("revocation off vs on ({ENTRIES} entries), median of {ROUNDS} alternated rounds, ES256:");
    println!("  hot (cache hit):      off {ho:8.0} ns/call  on {hn:8.0} ns/call  on/off {:.3}", hn / ho);
    println!("  distinct (no cache):  off {dof:8.0} ns/call  on {don:8.0} ns/call  on/off {:.3}", don / dof);
    let (so, sn) = (median(svc_off), median(svc_on));
    println!("  service hot (gRPC):   off {so:8.0} ns/call  on {sn:8.0} ns/call  on/off {:.3}", sn / so);
}

use clerk_introspect::service::introspect::IntrospectServer;

/// `message` with its gRPC prefix.
fn grpc_frame(message: &[u8]) -> bytes::Bytes {
    // Not compressed, then the length (big-endian u32).
    [&[0][..], &(message.len() as u32).to_be_bytes(), message].concat().into()
}

/// One unary call through `service`, checked.
fn call<S>(service: &mut S, path: &str, body: &bytes::Bytes, check: impl Fn(&[u8]) -> bool)
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt as _;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(black_box(body.clone()))))
        .unwrap();
    let response = ready(service.call(request)).unwrap();
    let answer = ready(response.into_body().collect()).unwrap();
    assert_eq!(answer.trailers().and_then(|t| t.get("grpc-status")).unwrap(), "0");
    let bytes = answer.to_bytes();
    assert!(check(&bytes[5..]), "unexpected answer {bytes:?}");
}
