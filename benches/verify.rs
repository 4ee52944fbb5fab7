//! Criterion benchmarks of the verification hot path (no network: static
//! keys, a fixed clock).
//!
//! - `decode`: step 1 alone (split, base64url, header and claims parsed);
//! - `digest`: SHA-256 of a token (the token cache's key);
//! - `signature/<backend>/<alg>`: one signature check, for RS256, ES256 and
//!   EdDSA, with aws-lc-rs on keys parsed once at load time (what the
//!   service does), aws-lc-rs parsing the key on every call, and ring (which
//!   has no pre-parsed RSA public key API, so it parses on every call too);
//! - `pipeline/<alg>`: `Verifier::verify` without the token cache (steps
//!   1–6, a signature check every time);
//! - `cache_hit/<alg>`: `Verifier::verify` of a token already in the cache;
//! - `respond/valid`: building the `VerifyResponse` of a valid token;
//! - `respond/prost_encode` and `respond/wire_encode`: the valid answer's
//!   bytes, through a `VerifyResponse` and prost (built, encoded, dropped)
//!   and straight from the token (what the server does).
//! - `service/health_check` and `service/verify_hot`: one gRPC call through
//!   the server's tower services, in process (no HTTP/2): a
//!   `grpc.health.v1.Health/Check` and a Verify of a cached token, from the
//!   framed request body to the collected answer and trailers. Their
//!   difference is what Verify costs the server beyond the transport.
//!
//! Run: `cargo bench --bench verify` (add `-- --quick` for a short run).

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clerk_introspect::clock::ManualClock;
use clerk_introspect::keys::fetch::Fetcher;
use clerk_introspect::keys::jwk::{Algorithm, VerificationKey, key_from_jwk_json};
use clerk_introspect::keys::{IssuerKeys, KeyContext, KeySource, NoopObserver, RefreshSettings};
use clerk_introspect::service::respond;
use clerk_introspect::test_issuer::{TestKey, session_claims};
use clerk_introspect::verify::cache::TokenDigest;
use clerk_introspect::verify::token;
use clerk_introspect::verify::{Expectations, Policy, Trust, TrustedIssuer, Verifier};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const ISS: &str = "https://clerk.example.com";
const ALGS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Runs a future that never waits (static keys, no refetch) to completion.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the benchmarked call waited"),
    }
}

struct Case {
    alg: Algorithm,
    key: TestKey,
    parsed: Arc<VerificationKey>,
    token: String,
}

impl Case {
    fn new(alg: Algorithm, clock: &ManualClock) -> Case {
        let key = TestKey::generate(&format!("kid-{alg}"), alg);
        let parsed = Arc::new(key_from_jwk_json(key.jwk()).expect("test key loads"));
        let token = key.mint(&session_claims(ISS, clerk_introspect::clock::Clock::now(clock)));
        Case { alg, key, parsed, token }
    }

    fn signing_input(&self) -> &str {
        self.token.rsplit_once('.').unwrap().0
    }

    fn signature(&self) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(self.token.rsplit_once('.').unwrap().1).unwrap()
    }

    fn jwk_bytes(&self, member: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(self.key.jwk()[member].as_str().unwrap()).unwrap()
    }

    /// The uncompressed EC point (0x04 ‖ x ‖ y).
    fn ec_point(&self) -> Vec<u8> {
        [vec![4], self.jwk_bytes("x"), self.jwk_bytes("y")].concat()
    }
}

struct Setup {
    cases: Vec<Case>,
    plain: Verifier,
    cached: Verifier,
    /// A cached verifier of its own, for the `service` group.
    served: Arc<Verifier>,
}

fn setup() -> Setup {
    let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
    let cases: Vec<Case> = ALGS.iter().map(|a| Case::new(*a, &clock)).collect();
    let ctx = KeyContext {
        fetcher: Fetcher::new().expect("HTTP client"),
        clock: clock.clone(),
        observer: Arc::new(NoopObserver),
        changed: Default::default(),
    };
    let keys = IssuerKeys::start(
        Arc::from(ISS),
        KeySource::Static(cases.iter().map(|c| c.parsed.clone()).collect()),
        RefreshSettings::default(),
        ctx,
    );
    let trust = Trust::new([TrustedIssuer { policy: Arc::new(Policy::default()), keys }]);
    let plain = Verifier::new(trust.clone(), clock.clone());
    let cached = Verifier::with_token_cache(trust.clone(), clock.clone(), 1000);
    let served = Arc::new(Verifier::with_token_cache(trust, clock, 1000));
    for c in &cases {
        ready(cached.verify(&c.token, &Expectations::default())).expect("valid token");
        ready(served.verify(&c.token, &Expectations::default())).expect("valid token");
    }
    Setup { cases, plain, cached, served }
}

fn benches(c: &mut Criterion) {
    let s = setup();
    let rs = &s.cases[0];

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("RS256 session token", |b| b.iter(|| token::decode(black_box(&rs.token)).unwrap()));
    g.finish();

    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Elements(1));
    g.bench_function("SHA-256 of a token", |b| b.iter(|| TokenDigest::of(black_box(&rs.token))));
    g.finish();

    let mut g = c.benchmark_group("signature");
    g.throughput(Throughput::Elements(1));
    for case in &s.cases {
        let (msg, sig) = (case.signing_input().as_bytes(), case.signature());
        let alg = case.alg;
        g.bench_function(format!("aws-lc-rs/{alg}"), |b| {
            b.iter(|| assert!(case.parsed.verify(alg, black_box(msg), black_box(&sig))))
        });
        g.bench_function(format!("aws-lc-rs-unparsed/{alg}"), |b| {
            use aws_lc_rs::signature as s;
            match alg {
                Algorithm::RS256 => {
                    let (n, e) = (case.jwk_bytes("n"), case.jwk_bytes("e"));
                    let key = s::RsaPublicKeyComponents { n: &n, e: &e };
                    b.iter(|| key.verify(&s::RSA_PKCS1_2048_8192_SHA256, black_box(msg), black_box(&sig)).unwrap())
                }
                Algorithm::ES256 => {
                    let key = s::UnparsedPublicKey::new(&s::ECDSA_P256_SHA256_FIXED, case.ec_point());
                    b.iter(|| key.verify(black_box(msg), black_box(&sig)).unwrap())
                }
                _ => {
                    let key = s::UnparsedPublicKey::new(&s::ED25519, case.jwk_bytes("x"));
                    b.iter(|| key.verify(black_box(msg), black_box(&sig)).unwrap())
                }
            }
        });
        g.bench_function(format!("ring/{alg}"), |b| {
            use ring::signature as s;
            match alg {
                Algorithm::RS256 => {
                    let (n, e) = (case.jwk_bytes("n"), case.jwk_bytes("e"));
                    let key = s::RsaPublicKeyComponents { n: &n, e: &e };
                    b.iter(|| key.verify(&s::RSA_PKCS1_2048_8192_SHA256, black_box(msg), black_box(&sig)).unwrap())
                }
                Algorithm::ES256 => {
                    let key = s::UnparsedPublicKey::new(&s::ECDSA_P256_SHA256_FIXED, case.ec_point());
                    b.iter(|| key.verify(black_box(msg), black_box(&sig)).unwrap())
                }
                _ => {
                    let key = s::UnparsedPublicKey::new(&s::ED25519, case.jwk_bytes("x"));
                    b.iter(|| key.verify(black_box(msg), black_box(&sig)).unwrap())
                }
            }
        });
    }
    g.finish();

    let none = Expectations::default();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));
    for case in &s.cases {
        g.bench_function(case.alg.as_str(), |b| {
            b.iter(|| ready(s.plain.verify(black_box(&case.token), &none)).unwrap())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cache_hit");
    g.throughput(Throughput::Elements(1));
    for case in &s.cases {
        g.bench_function(case.alg.as_str(), |b| {
            b.iter(|| ready(s.cached.verify(black_box(&case.token), &none)).unwrap())
        });
    }
    g.finish();

    let verified = ready(s.plain.verify(&rs.token, &none)).unwrap();
    let mut g = c.benchmark_group("respond");
    g.throughput(Throughput::Elements(1));
    g.bench_function("valid", |b| b.iter(|| respond::valid(black_box(&verified))));
    let mut buf = Vec::with_capacity(1024);
    g.bench_function("prost_encode", |b| {
        b.iter(|| {
            buf.clear();
            prost::Message::encode(&respond::valid(black_box(&verified)), &mut buf).unwrap();
            black_box(buf.len())
        })
    });
    g.bench_function("wire_encode", |b| {
        b.iter(|| {
            buf.clear();
            respond::wire::encode_valid(black_box(&verified), &mut buf);
            black_box(buf.len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("service");
    g.throughput(Throughput::Elements(1));
    let (_reporter, mut health) = tonic_health::server::health_reporter();
    let health_body = grpc_frame(&[]);
    g.bench_function("health_check", |b| {
        b.iter(|| call(&mut health, "/grpc.health.v1.Health/Check", &health_body, |m| m == [8, 1]))
    });
    let mut introspect = clerk_introspect::service::IntrospectService::new(s.served.clone()).into_server();
    let verify_body = grpc_frame(&prost::Message::encode_to_vec(&clerk_introspect::pb::VerifyRequest {
        token: rs.token.clone(),
        expect: None,
    }));
    g.bench_function("verify_hot", |b| {
        b.iter(|| call(&mut introspect, "/introspect.v1.TokenIntrospection/Verify", &verify_body, |m| m[..2] == [8, 1]))
    });
    g.finish();
}

/// `message` with its gRPC prefix.
fn grpc_frame(message: &[u8]) -> bytes::Bytes {
    // Not compressed, then the length (big-endian u32).
    [&[0][..], &(message.len() as u32).to_be_bytes(), message].concat().into()
}

/// One unary call through `service`: the framed `body` in, the answer
/// collected (its message must pass `check`, its trailers say OK).
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

criterion_group! {
    name = verify;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(verify);
