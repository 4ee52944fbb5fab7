//! Entry points of the fuzz targets (`fuzz/fuzz_targets/`), shared with the
//! replay of their committed corpus in `tests/fuzz_corpus.rs`, so that
//! `cargo test` runs every corpus input through exactly what the fuzzer
//! runs. Not an API: hidden from the docs, and free to change with the
//! targets (docs/fuzzing.md).
//!
//! Each entry point takes arbitrary bytes, feeds them to one input boundary
//! of the service and returns; it panics only when the service panicked or
//! broke one of the invariants checked here (a rejection sentence that
//! quotes the token or holds a control character, a configuration error
//! over several lines, an answer that disagrees with the verifier).
//!
//! The verifier they share trusts two issuers with static keys and reads a
//! fixed clock ([`NOW`]): Clerk's own fixture issuer
//! (`tests/data/clerk-js-fixtures.json`) and [`FUZZ_ISSUER`], whose public
//! keys are in `tests/data/fuzz-keys.json` (written, with the tokens of the
//! seed corpus signed by them, by `tests/fuzz_corpus.rs`'s ignored
//! `write_seed_corpus`; no private key is kept).

use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tokio::sync::Notify;

use crate::clock::ManualClock;
use crate::config::authz::{AuthzConfig, AuthzSettings, UnavailableMode};
use crate::config::file;
use crate::config::settings::Layer;
use crate::config::validate;
use crate::keys::fetch::{self, Fetcher};
use crate::keys::jwk::{self, VerificationKey};
use crate::keys::{IssuerKeys, KeyContext, KeySource, NoopObserver, RefreshSettings};
use crate::pb;
use crate::service::ext_authz::AuthzService;
use crate::service::ext_authz::source::{self, Headers, RouteExpectations};
use crate::service::introspect::{IntrospectServer, IntrospectService, MAX_REQUEST_BYTES};
use crate::verify::token::{self, TokenKind};
use crate::verify::{Expectations, Policy, Rejection, TokenKinds, Trust, TrustedIssuer, Verifier, VerifyError, json};

/// The fixed time of the shared verifier's clock (Unix seconds): the seed
/// tokens of [`FUZZ_ISSUER`] are valid then.
pub const NOW: u64 = 1_800_000_000;
/// The issuer of the keys in `tests/data/fuzz-keys.json`.
pub const FUZZ_ISSUER: &str = "https://clerk.fuzz.example";
/// The `azp` that [`FUZZ_ISSUER`]'s policy accepts.
pub const FUZZ_AZP: &str = "http://localhost:3000";
/// The path the config target's text is said to be read from: it does not
/// exist, so relative key and certificate paths name missing files.
pub const CONFIG_PATH: &str = "/nonexistent/clerk-introspect-fuzz/config.toml";

/// `{"issuer", "jwks"}`: the public keys of [`FUZZ_ISSUER`].
const FUZZ_KEYS: &str = include_str!("../tests/data/fuzz-keys.json");
/// Clerk's fixture issuer, JWKS and tokens.
const CLERK_FIXTURES: &str = include_str!("../tests/data/clerk-js-fixtures.json");

/// Longest rejection sentence: a few fixed words and at most a few quoted,
/// truncated values.
const MAX_MESSAGE_BYTES: usize = 2048;
/// Tokens shorter than this may well occur in a fixed sentence by chance;
/// longer ones must never be quoted (see [`never_quoted`]).
const QUOTABLE_TOKEN_BYTES: usize = 24;

/// What the entry points share, built once per process.
struct World {
    runtime: tokio::runtime::Runtime,
    verifier: Arc<Verifier>,
    introspect: IntrospectServer,
    authz: [(AuthzService, Arc<AuthzConfig>); 2],
    fuzz_keys: Vec<Arc<VerificationKey>>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(World::new)
}

impl World {
    fn new() -> World {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime");
        let _entered = runtime.enter();
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(NOW)));
        let ctx = KeyContext {
            fetcher: Fetcher::new().expect("an HTTP client"),
            clock: clock.clone(),
            observer: Arc::new(NoopObserver),
            changed: Arc::new(Notify::new()),
        };
        let keys_of = |doc: &str| -> (String, Vec<Arc<VerificationKey>>) {
            let doc: serde_json::Value = serde_json::from_str(doc).expect("a fixture is JSON");
            let issuer = doc["issuer"].as_str().expect("a fixture names its issuer").to_owned();
            let jwks = serde_json::to_vec(&doc["jwks"]).expect("JSON");
            (issuer, jwk::parse_jwks(&jwks, &[]).expect("a fixture's JWKS parses").keys)
        };
        let issuer = |iss: String, keys: Vec<Arc<VerificationKey>>, policy: Policy| TrustedIssuer {
            policy: Arc::new(policy),
            keys: IssuerKeys::start(Arc::from(iss), KeySource::Static(keys), RefreshSettings::default(), ctx.clone()),
        };
        let (clerk_iss, clerk_keys) = keys_of(CLERK_FIXTURES);
        let (fuzz_iss, fuzz_keys) = keys_of(FUZZ_KEYS);
        assert_eq!(fuzz_iss, FUZZ_ISSUER);
        let wide = Policy {
            authorized_parties: vec![FUZZ_AZP.to_owned()],
            token_kinds: [TokenKind::Session, TokenKind::JwtTemplate, TokenKind::Machine, TokenKind::OAuth]
                .into_iter()
                .collect::<TokenKinds>(),
            ..Policy::default()
        };
        let trust =
            Trust::new([issuer(clerk_iss, clerk_keys, Policy::default()), issuer(fuzz_iss, fuzz_keys.clone(), wide)]);
        let verifier = Arc::new(Verifier::new(trust, clock));
        let introspect = IntrospectService::new(verifier.clone()).into_server();
        let custom = AuthzSettings {
            token_header: "x-clerk-token".to_owned(),
            claim_headers: vec!["email=x-user-email".to_owned(), "org_id=x-org-id".to_owned()],
            bypass_cors_preflight: false,
            unavailable: UnavailableMode::GrpcError,
            ..AuthzSettings::default()
        };
        let authz = [AuthzConfig::default(), AuthzConfig::from_settings(&custom).expect("valid ext_authz settings")]
            .map(|config| {
                let config = Arc::new(config);
                (AuthzService::new(verifier.clone(), config.clone()), config)
            });
        drop(_entered);
        World { runtime, verifier, introspect, authz, fuzz_keys }
    }
}

/// Whether an answer that contains `token` has quoted the token itself:
/// true for a JWS-shaped token (at least [`QUOTABLE_TOKEN_BYTES`] of
/// base64url and exactly two dots). Such a token can only appear inside an
/// answer by being quoted: values the answer quotes from the token are
/// decoded from one of its parts, so shorter than it, and the fixed words
/// hold no such run. Any other text may be a piece of a fixed sentence
/// (the fuzzer once sent one back as the token).
fn never_quoted(token: &str) -> bool {
    token.len() >= QUOTABLE_TOKEN_BYTES
        && token.bytes().filter(|b| *b == b'.').count() == 2
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a rejection of `token`: one sentence, bounded, no control
/// character, never the token itself.
fn check_rejection(r: &Rejection, token: &str) {
    let m = &r.message;
    assert!(!m.is_empty(), "an empty sentence for {:?}", r.reason);
    assert!(m.len() <= MAX_MESSAGE_BYTES, "a sentence of {} bytes", m.len());
    assert!(!m.chars().any(char::is_control), "a control character in {m:?}");
    if never_quoted(token) {
        assert!(!m.contains(token), "the sentence quotes the token: {m:?}");
    }
}

/// Target `token`: the strict JSON check on raw bytes, then (for UTF-8
/// input) [`token::decode`] and [`token::decode_raw`], then the verifier's
/// whole pipeline (decode, algorithm, issuer, key, signature, policy) over
/// the fixed key set.
pub fn token(data: &[u8]) {
    if let Ok(text) = json::check(data) {
        assert_eq!(text.as_bytes(), data);
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let stripped = token::strip_bearer(text);
    let decoded = token::decode(stripped);
    let raw = token::decode_raw(stripped);
    match &decoded {
        Ok(d) => {
            let raw = raw.as_ref().expect("what decode accepts, decode_raw accepts");
            assert!(stripped.as_bytes().starts_with(d.signing_input));
            assert_eq!(stripped.as_bytes().get(d.signing_input.len()), Some(&b'.'));
            assert_eq!(d.payload.as_bytes(), &raw.payload[..]);
            assert_eq!(d.signature().len(), raw.signature_len);
            assert!(json::check(&raw.header).is_ok(), "a decoded header that is not strict JSON");
        }
        Err(r) => check_rejection(r, stripped),
    }
    let w = world();
    let outcome = w.runtime.block_on(w.verifier.verify(text, &Expectations::default()));
    match (&decoded, outcome) {
        (Err(d), Err(VerifyError::Rejected(r))) => assert_eq!(d, &r, "decode and the pipeline refuse differently"),
        (Err(d), other) => panic!("decode refused ({d}), the pipeline answered {other:?}"),
        (Ok(_), Err(VerifyError::Rejected(r))) => check_rejection(&r, stripped),
        (Ok(_), Err(e @ VerifyError::Unavailable { .. })) => panic!("static keys are always available: {e}"),
        (Ok(d), Ok(v)) => {
            assert_eq!(d.header.alg, v.algorithm);
            assert_eq!(&*v.payload, d.payload);
        }
    }
}

/// Target `jwks`: the JWKS parser (with the fuzz issuer's keys as the
/// previous set), each of its keys alone, the discovery document parser,
/// and (for UTF-8 input) the PEM key reader, `Cache-Control` and the key
/// URL rule. Every error is one line.
pub fn jwks(data: &[u8]) {
    let w = world();
    match jwk::parse_jwks(data, &w.fuzz_keys) {
        Ok(parsed) => {
            assert!(!parsed.keys.is_empty() && parsed.keys.len() <= jwk::MAX_KEYS);
            for key in &parsed.keys {
                assert!(!key.algorithms().is_empty(), "a usable key that verifies nothing");
                assert!(key.algorithms().iter().all(|a| key.supports(a)));
            }
            for skipped in &parsed.skipped {
                one_line(&skipped.reason.to_string());
            }
        }
        Err(e) => one_line(&e.to_string()),
    }
    if let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(data)
        && let Some(serde_json::Value::Array(keys)) = doc.get("keys")
    {
        for key in keys.iter().take(jwk::MAX_KEYS) {
            if let Err(reason) = jwk::key_from_jwk_json(key) {
                one_line(&reason.to_string());
            }
        }
    }
    let url = fetch::discovery_url(FUZZ_ISSUER);
    match fetch::parse_discovery(&url, FUZZ_ISSUER, data) {
        Ok(uri) => assert!(fetch::check_key_url(&uri).is_ok()),
        Err(e) => one_line(&e.to_string()),
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    match VerificationKey::from_public_key_pem(text, Some("kid")) {
        Ok(key) => assert_eq!(key.kid(), Some("kid")),
        Err(e) => one_line(&e.to_string()),
    }
    let _ = fetch::parse_max_age(text);
    let _ = fetch::check_key_url(text);
}

/// An error or log text: one line, no control character.
fn one_line(text: &str) {
    assert!(!text.chars().any(char::is_control), "a control character in {text:?}");
}

/// Target `config`: TOML text read as the config file (at
/// [`CONFIG_PATH`]), then validated over the defaults into a `Config`:
/// a `Config` or a one-line `ConfigError`, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new(CONFIG_PATH);
    let result = file::parse(text, path)
        .and_then(|f| validate(&Layer::defaults(), &Layer::default(), Some(&f), &Layer::default()));
    match result {
        Ok(config) => assert!(!config.issuers.is_empty()),
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains(['\n', '\r']), "a configuration error over several lines: {line:?}");
        }
    }
}

/// Target `ext_authz`: the bytes as a protobuf `CheckRequest`, answered by
/// the Authorization service under two configurations (the defaults; a
/// custom token header, claim headers, no preflight bypass). The answer
/// never contains a token, and allows exactly when a token found in the
/// request verifies under the route's expectations (or, with the bypass,
/// for a CORS preflight).
pub fn ext_authz(data: &[u8]) {
    let Ok(request) = CheckRequest::decode(data) else { return };
    let w = world();
    for (service, config) in &w.authz {
        let answer = w.runtime.block_on(service.check(tonic::Request::new(request.clone())));
        let http = source::http_request(&request);
        let route = RouteExpectations::from_extensions(request.attributes.as_ref().map(|a| &a.context_extensions));
        let candidates = match source::find_tokens(&Headers::of(http), config) {
            Ok(Some(c)) => c.tokens.into_iter().map(|t| t.into_owned()).collect(),
            _ => Vec::new(),
        };
        let shown = match &answer {
            Ok(response) => format!("{:?}", response.get_ref()),
            Err(status) => format!("{status:?}"),
        };
        // With several candidates (cookies), one token's quoted claim may be
        // another candidate; with one, a quote is shorter than the token.
        if let [t] = &candidates[..]
            && never_quoted(t.trim())
        {
            assert!(!shown.contains(t.trim()), "the answer contains the token");
        }
        let preflight = config.bypass_cors_preflight && source::is_cors_preflight(http);
        let verifies =
            candidates.iter().any(|t| w.runtime.block_on(w.verifier.verify(t, &route.as_expectations())).is_ok());
        let allowed = matches!(&answer, Ok(r) if allowed(r.get_ref()));
        assert_eq!(
            allowed,
            preflight || verifies,
            "allowed {allowed}, preflight {preflight}, a token verifies {verifies}"
        );
    }
}

fn allowed(response: &CheckResponse) -> bool {
    response.status.as_ref().is_some_and(|s| s.code == 0)
}

/// A request body of the given DATA frames.
struct Frames(VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// Target `verify`: one Verify call as it arrives on the server's route
/// (`/introspect.v1.TokenIntrospection/Verify`): a request body cut into
/// DATA frames, read by the Verify route's own gRPC framing, decoded as a
/// `VerifyRequest` and answered. Input: a control byte (bits 0-1: how
/// many cuts follow, 0-3; bits 2-3: no `grpc-encoding`, `identity`, `gzip`
/// or `deflate`), one byte per cut (where, in 255ths of the body), then
/// the body.
///
/// Checked: a body that is exactly one uncompressed message of a valid
/// `VerifyRequest` is answered OK with a `VerifyResponse` that agrees with
/// the verifier; a body that ends before its message does, or a compressed
/// one, gets an error status; the answer never contains the token.
pub fn verify(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else { return };
    let cuts = usize::from(control & 0b11);
    if rest.len() < cuts {
        return;
    }
    let (cut_bytes, body) = rest.split_at(cuts);
    let encoding = match (control >> 2) & 0b11 {
        0 => None,
        1 => Some("identity"),
        2 => Some("gzip"),
        _ => Some("deflate"),
    };
    let mut at: Vec<usize> = cut_bytes.iter().map(|&b| usize::from(b) * body.len() / 255).collect();
    at.sort_unstable();
    let mut frames = VecDeque::new();
    let mut from = 0;
    for to in at.into_iter().chain([body.len()]) {
        frames.push_back(Bytes::copy_from_slice(&body[from..to]));
        from = to;
    }

    let mut request = http::Request::new(tonic::body::Body::new(Frames(frames)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static("http://localhost/introspect.v1.TokenIntrospection/Verify");
    let headers = request.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert("te", http::HeaderValue::from_static("trailers"));
    if let Some(e) = encoding {
        headers.insert("grpc-encoding", http::HeaderValue::from_static(e));
    }

    let w = world();
    let mut server = w.introspect.clone();
    let (status, answer) = w.runtime.block_on(async {
        let response = tower::Service::call(&mut server, request).await.unwrap_or_else(|e| match e {});
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("an answer body never fails");
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let status = trailers.get("grpc-status").or_else(|| parts.headers.get("grpc-status")).cloned();
        (status, collected.to_bytes())
    });
    let status = status.expect("every answer has a grpc-status");
    let ok = status == "0";

    // What a correct server must answer, worked out from the bytes alone.
    let compressed = matches!(encoding, Some("gzip" | "deflate"));
    let declared =
        (body.len() >= 5).then(|| (body[0], u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize));
    let whole = match declared {
        Some((0, len)) if len <= MAX_REQUEST_BYTES && body.len() == 5 + len => Some(&body[5..]),
        _ => None,
    };
    let short = match declared {
        None => true,
        Some((flag, len)) => flag == 0 && len <= MAX_REQUEST_BYTES && body.len() < 5 + len,
    };
    if compressed || short {
        assert!(!ok, "an incomplete or compressed request was answered OK");
    }
    let Some(message) = whole.filter(|_| !compressed) else { return };
    let Ok(request) = pb::VerifyRequest::decode(message) else {
        assert!(!ok, "an undecodable VerifyRequest was answered OK");
        return;
    };
    assert!(ok, "one valid VerifyRequest was answered with grpc-status {status:?}");
    let mut framed = answer;
    assert!(framed.len() >= 5 && framed[0] == 0, "the answer is one uncompressed message");
    framed.advance(5);
    let response = pb::VerifyResponse::decode(framed).expect("the answer is a VerifyResponse");
    let expect = match &request.expect {
        None => Expectations::default(),
        Some(e) => Expectations { authorized_parties: &e.authorized_parties, audiences: &e.audiences, roles: &e.roles },
    };
    let direct = w.runtime.block_on(w.verifier.verify(&request.token, &expect));
    assert_eq!(response.valid, direct.is_ok(), "Verify and the verifier disagree: {direct:?}");
    if let Err(VerifyError::Rejected(r)) = &direct {
        assert_eq!(response.reason, r.reason as i32);
    }
    let token = token::strip_bearer(&request.token);
    if never_quoted(token) {
        assert!(!response.message.contains(token), "the answer quotes the token");
    }
}

/// The shared verifier's answer for `token` (no expectations): for tests
/// of the seed corpus.
pub fn outcome(token: &str) -> Result<Arc<crate::verify::VerifiedToken>, VerifyError> {
    let w = world();
    w.runtime.block_on(w.verifier.verify(token, &Expectations::default()))
}

/// The moment [`NOW`] as a `SystemTime` (for minting seed tokens).
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}
