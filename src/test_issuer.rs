//! A local, loopback-only OIDC issuer with ephemeral keys: discovery and
//! JWKS over real HTTP, and a minter of Clerk-shaped tokens.
//!
//! It exists for `clerk-introspect demo`, the tests and the benchmarks.
//! `serve` never trusts it unless its URL is named as an issuer. It binds
//! loopback addresses only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::keys::jwk::Algorithm;

/// Path of the JWKS on the test issuer.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// An ephemeral signing key with its public JWK.
#[derive(Clone)]
pub struct TestKey {
    kid: String,
    alg: Algorithm,
    signer: Arc<Signer>,
    jwk: Value,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey").field("kid", &self.kid).field("alg", &self.alg).finish()
    }
}

impl TestKey {
    /// A fresh key for `alg` (RSA keys are 2048-bit).
    pub fn generate(kid: &str, alg: Algorithm) -> TestKey {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let (signer, jwk) = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
                let public = pair.public_key();
                let jwk = json!({
                    "kty": "RSA", "use": "sig", "kid": kid, "alg": alg.as_str(),
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                });
                (Signer::Rsa(pair), jwk)
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let (signing, crv, len) = if alg == Algorithm::ES256 {
                    (&sig::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)
                } else {
                    (&sig::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)
                };
                let pair = EcdsaKeyPair::generate(signing).expect("EC key generation");
                let point = pair.public_key().as_ref().to_vec();
                let jwk = json!({
                    "kty": "EC", "use": "sig", "kid": kid, "alg": alg.as_str(), "crv": crv,
                    "x": b64(&point[1..=len]), "y": b64(&point[1 + len..]),
                });
                (Signer::Ec(pair), jwk)
            }
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::generate().expect("Ed25519 key generation");
                let jwk = json!({
                    "kty": "OKP", "use": "sig", "kid": kid, "alg": "EdDSA", "crv": "Ed25519",
                    "x": b64(pair.public_key().as_ref()),
                });
                (Signer::Ed(pair), jwk)
            }
        };
        TestKey { kid: kid.to_owned(), alg, signer: Arc::new(signer), jwk }
    }

    /// An RS256 key, as Clerk uses.
    pub fn rsa(kid: &str) -> TestKey {
        TestKey::generate(kid, Algorithm::RS256)
    }

    /// An ES256 key.
    pub fn es256(kid: &str) -> TestKey {
        TestKey::generate(kid, Algorithm::ES256)
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm the key signs with.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The public JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The public JWK with members replaced or removed (`null` removes).
    pub fn jwk_with(&self, changes: Value) -> Value {
        let mut jwk = self.jwk.clone();
        if let (Some(obj), Some(ch)) = (jwk.as_object_mut(), changes.as_object()) {
            for (k, v) in ch {
                if v.is_null() {
                    obj.remove(k);
                } else {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
        jwk
    }

    /// Signs `signing_input` with the key's own algorithm.
    pub fn sign_raw(&self, signing_input: &[u8]) -> Vec<u8> {
        self.sign_raw_as(self.alg, signing_input)
    }

    /// Signs with `alg` (which must fit the key: RSA keys can sign any RS/PS alg).
    pub fn sign_raw_as(&self, alg: Algorithm, signing_input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &*self.signer {
            Signer::Rsa(pair) => {
                let padding: &'static dyn sig::RsaEncoding = match alg {
                    Algorithm::RS256 => &sig::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &sig::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &sig::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &sig::RSA_PSS_SHA256,
                    Algorithm::PS384 => &sig::RSA_PSS_SHA384,
                    Algorithm::PS512 => &sig::RSA_PSS_SHA512,
                    other => panic!("an RSA key cannot sign {other}"),
                };
                let mut out = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &rng, signing_input, &mut out).expect("RSA signing");
                out
            }
            Signer::Ec(pair) => pair.sign(&rng, signing_input).expect("ECDSA signing").as_ref().to_vec(),
            Signer::Ed(pair) => pair.sign(signing_input).as_ref().to_vec(),
        }
    }

    /// A compact JWS of `claims` with the header `{"alg", "kid", "typ": "JWT"}`.
    pub fn mint(&self, claims: &Value) -> String {
        self.mint_with_header(&json!({"alg": self.alg.as_str(), "kid": self.kid, "typ": "JWT"}), claims)
    }

    /// A compact JWS with any header, signed with the key's own algorithm.
    pub fn mint_with_header(&self, header: &Value, claims: &Value) -> String {
        self.mint_raw(header.to_string().as_bytes(), claims.to_string().as_bytes())
    }

    /// A compact JWS of any header and payload bytes (JSON or not), signed
    /// with the key's own algorithm.
    pub fn mint_raw(&self, header: &[u8], payload: &[u8]) -> String {
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
        let signature = self.sign_raw(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// Clerk-shaped session-token claims (v2) for `issuer` at `now`:
/// `exp = iat + 60`, `nbf = iat - 10`, `role: authenticated`.
pub fn session_claims(issuer: &str, now: SystemTime) -> Value {
    let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({
        "azp": "http://localhost:3000",
        "exp": iat + 60,
        "fva": [0, -1],
        "iat": iat,
        "iss": issuer,
        "jti": format!("{:020x}", fastrand::u64(..)),
        "nbf": iat - 10,
        "role": "authenticated",
        "sid": "sess_2pDemoSession0000000000000",
        "sts": "active",
        "sub": "user_2pDemoUser000000000000000",
        "v": 2,
    })
}

struct Inner {
    issuer: String,
    keys: Mutex<Vec<TestKey>>,
    up: AtomicBool,
    discovery_issuer: Mutex<Option<String>>,
    cache_control: Mutex<Option<String>>,
    jwks_override: Mutex<Option<Vec<u8>>>,
    jwks_delay: Mutex<Duration>,
    discovery_requests: AtomicUsize,
    jwks_requests: AtomicUsize,
}

/// A running test issuer. Dropping it stops the server.
pub struct TestIssuer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer").field("issuer", &self.inner.issuer).finish_non_exhaustive()
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestIssuer {
    /// Starts an issuer on `127.0.0.1` (an ephemeral port) publishing `keys`.
    pub async fn start(keys: Vec<TestKey>) -> std::io::Result<TestIssuer> {
        Self::start_on(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0), keys).await
    }

    /// Starts an issuer on `addr`, which must be a loopback address.
    pub async fn start_on(addr: SocketAddr, keys: Vec<TestKey>) -> std::io::Result<TestIssuer> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the test issuer binds loopback addresses only",
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            issuer: format!("http://{addr}"),
            keys: Mutex::new(keys),
            up: AtomicBool::new(true),
            discovery_issuer: Mutex::new(None),
            cache_control: Mutex::new(None),
            jwks_override: Mutex::new(None),
            jwks_delay: Mutex::new(Duration::ZERO),
            discovery_requests: AtomicUsize::new(0),
            jwks_requests: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route(JWKS_PATH, get(jwks))
            .with_state(inner.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stopped.cancelled_owned()).await;
        });
        Ok(TestIssuer { inner, addr, stop })
    }

    /// The issuer identifier (`http://127.0.0.1:PORT`).
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The JWKS URL.
    pub fn jwks_uri(&self) -> String {
        format!("{}{JWKS_PATH}", self.inner.issuer)
    }

    /// Replaces the published keys.
    pub fn set_keys(&self, keys: Vec<TestKey>) {
        *self.inner.keys.lock().unwrap() = keys;
    }

    /// Publishes one more key.
    pub fn add_key(&self, key: TestKey) {
        self.inner.keys.lock().unwrap().push(key);
    }

    /// When `false`, every request is answered `503`.
    pub fn set_up(&self, up: bool) {
        self.inner.up.store(up, Ordering::SeqCst);
    }

    /// Makes discovery name another `issuer` (`None`: the right one).
    pub fn set_discovery_issuer(&self, issuer: Option<String>) {
        *self.inner.discovery_issuer.lock().unwrap() = issuer;
    }

    /// Sets the JWKS `Cache-Control` header.
    pub fn set_cache_control(&self, value: Option<String>) {
        *self.inner.cache_control.lock().unwrap() = value;
    }

    /// Serves this body as the JWKS instead of the keys (`None`: the keys).
    pub fn set_jwks_body(&self, body: Option<Vec<u8>>) {
        *self.inner.jwks_override.lock().unwrap() = body;
    }

    /// Delays every JWKS answer (to hold fetches in flight).
    pub fn set_jwks_delay(&self, delay: Duration) {
        *self.inner.jwks_delay.lock().unwrap() = delay;
    }

    /// Discovery requests served so far.
    pub fn discovery_requests(&self) -> usize {
        self.inner.discovery_requests.load(Ordering::SeqCst)
    }

    /// JWKS requests served so far.
    pub fn jwks_requests(&self) -> usize {
        self.inner.jwks_requests.load(Ordering::SeqCst)
    }

    /// Session claims for this issuer (see [`session_claims`]).
    pub fn session_claims(&self, now: SystemTime) -> Value {
        session_claims(&self.inner.issuer, now)
    }
}

async fn discovery(State(inner): State<Arc<Inner>>) -> Response {
    inner.discovery_requests.fetch_add(1, Ordering::SeqCst);
    if !inner.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = inner.discovery_issuer.lock().unwrap().clone().unwrap_or_else(|| inner.issuer.clone());
    let doc = json!({
        "issuer": issuer,
        "jwks_uri": format!("{}{JWKS_PATH}", inner.issuer),
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.to_string()).into_response()
}

async fn jwks(State(inner): State<Arc<Inner>>) -> Response {
    inner.jwks_requests.fetch_add(1, Ordering::SeqCst);
    let delay = *inner.jwks_delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if !inner.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let body = inner.jwks_override.lock().unwrap().clone().unwrap_or_else(|| {
        let keys: Vec<Value> = inner.keys.lock().unwrap().iter().map(|k| k.jwk.clone()).collect();
        json!({ "keys": keys }).to_string().into_bytes()
    });
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(cc) = inner.cache_control.lock().unwrap().as_deref()
        && let Ok(v) = HeaderValue::from_str(cc)
    {
        response.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    response
}
