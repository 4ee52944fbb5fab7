//! Pipeline tests over static keys (no network): algorithms, issuers, keys,
//! signatures, hostile headers, and Clerk's own fixture tokens.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::*;
use crate::clock::ManualClock;
use crate::keys::fetch::Fetcher;
use crate::keys::jwk::key_from_jwk_json;
use crate::keys::{KeyContext, KeySource, NoopObserver, RefreshSettings};
use crate::test_issuer::{TestKey, session_claims};

const ISS: &str = "https://clerk.example.com";
const OTHER_ISS: &str = "https://clerk.other.example.com";

fn ctx(clock: Arc<ManualClock>) -> KeyContext {
    KeyContext {
        fetcher: Fetcher::new().unwrap(),
        clock,
        observer: Arc::new(NoopObserver),
        changed: Arc::new(Notify::new()),
    }
}

fn static_issuer(iss: &str, jwks: &[Value], policy: Policy, clock: Arc<ManualClock>) -> TrustedIssuer {
    let keys = jwks.iter().map(|j| Arc::new(key_from_jwk_json(j).unwrap())).collect();
    TrustedIssuer {
        policy: Arc::new(policy),
        keys: IssuerKeys::start(Arc::from(iss), KeySource::Static(keys), RefreshSettings::default(), ctx(clock)),
    }
}

struct Fixture {
    verifier: Verifier,
    clock: Arc<ManualClock>,
}

impl Fixture {
    fn new(issuers: impl FnOnce(Arc<ManualClock>) -> Vec<TrustedIssuer>) -> Self {
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000)));
        let verifier = Verifier::new(Trust::new(issuers(clock.clone())), clock.clone());
        Fixture { verifier, clock }
    }

    fn one(keys: &[&TestKey], policy: Policy) -> Self {
        let jwks: Vec<Value> = keys.iter().map(|k| k.jwk().clone()).collect();
        Self::new(|clock| vec![static_issuer(ISS, &jwks, policy, clock)])
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    fn claims(&self) -> Value {
        session_claims(ISS, self.now())
    }

    async fn reason(&self, token: &str) -> Reason {
        match self.verifier.verify(token, &Expectations::default()).await {
            Ok(_) => Reason::Valid,
            Err(VerifyError::Rejected(r)) => r.reason,
            Err(VerifyError::Unavailable { .. }) => Reason::Unspecified,
        }
    }

    async fn rejection(&self, token: &str) -> Rejection {
        match self.verifier.verify(token, &Expectations::default()).await {
            Err(VerifyError::Rejected(r)) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}

fn b64<T: AsRef<[u8]> + ?Sized>(v: &T) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn unsigned(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(&header.to_string()), b64(&claims.to_string()), b64(&signature))
}

#[tokio::test]
async fn every_algorithm_verifies_with_its_own_key() {
    for alg in Algorithm::ALL {
        let key = TestKey::generate("k1", alg);
        let f = Fixture::one(&[&key], Policy::default());
        let token = key.mint(&f.claims());
        let verified = f.verifier.verify(&token, &Expectations::default()).await.unwrap();
        assert_eq!(verified.algorithm, alg);
        assert_eq!(verified.key.kid(), Some("k1"));
        let bearer = format!("  bearer {token} ");
        assert_eq!(f.reason(&bearer).await, Reason::Valid, "{alg}");
    }
}

#[tokio::test]
async fn payload_is_returned_exactly_as_signed() {
    let key = TestKey::rsa("k1");
    let f = Fixture::one(&[&key], Policy::default());
    // Unusual but valid JSON spacing and key order must survive untouched.
    let claims_text = format!(
        "{{ \"sub\":\"user_1\",  \"role\":\"authenticated\",\"iss\":\"{ISS}\", \"exp\": {}, \"x\": [1, 2.50] }}",
        crate::clock::unix_seconds(f.now()) + 60
    );
    let input = format!("{}.{}", b64(&json!({"alg":"RS256","kid":"k1"}).to_string()), b64(&claims_text));
    let token = format!("{input}.{}", b64(&key.sign_raw(input.as_bytes())));
    let verified = f.verifier.verify(&token, &Expectations::default()).await.unwrap();
    assert_eq!(&*verified.payload, claims_text);
}

#[tokio::test]
async fn tokens_minted_by_an_independent_library_verify() {
    // jsonwebtoken signs (a code path independent of our aws-lc-rs verifier),
    // and its own JWK export is what we load.
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(&pem_of(&pair)).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, jsonwebtoken::Algorithm::RS256).unwrap();
    let mut jwk = serde_json::to_value(&jwk).unwrap();
    jwk["kid"] = json!("jwt-crate");
    let f = Fixture::new(|clock| vec![static_issuer(ISS, &[jwk], Policy::default(), clock)]);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("jwt-crate".into());
    let token = jsonwebtoken::encode(&header, &f.claims(), &encoding).unwrap();
    assert_eq!(f.reason(&token).await, Reason::Valid);
    let other = Fixture::one(&[&TestKey::rsa("k1")], Policy::default());
    assert_eq!(other.reason(&token).await, Reason::UnknownKey);
}

fn pem_of(pair: &aws_lc_rs::rsa::KeyPair) -> Vec<u8> {
    let der = aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(pair).unwrap();
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem.into_bytes()
}

#[tokio::test]
async fn algorithm_rules() {
    let rsa = TestKey::rsa("rsa");
    let ec = TestKey::es256("ec");
    let f = Fixture::one(&[&rsa, &ec], Policy::default());
    let claims = f.claims();

    // none and HMAC, whatever the signature.
    let none = unsigned(&json!({"alg": "none", "kid": "rsa"}), &claims, b"");
    assert_eq!(f.reason(&none).await, Reason::AlgorithmNotAllowed);
    // Alg confusion: HS256 "signed" with the RSA public key as the secret.
    let secret = rsa.jwk()["n"].as_str().unwrap().as_bytes().to_vec();
    let input = format!("{}.{}", b64(&json!({"alg":"HS256","kid":"rsa"}).to_string()), b64(&claims.to_string()));
    let tag =
        aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret), input.as_bytes());
    let confused = format!("{input}.{}", b64(&tag.as_ref()));
    let err = f.rejection(&confused).await;
    assert_eq!(err.reason, Reason::AlgorithmNotAllowed);
    assert!(err.message.contains("deprecated"), "{}", err.message);

    // Header alg that does not fit the key the kid names.
    let es_on_rsa = rsa.mint_with_header(&json!({"alg": "RS256", "kid": "ec"}), &claims);
    assert_eq!(f.reason(&es_on_rsa).await, Reason::AlgorithmNotAllowed);
    // JWK alg is RS256: a PS256 signature by the same RSA key is refused.
    let input = format!("{}.{}", b64(&json!({"alg":"PS256","kid":"rsa"}).to_string()), b64(&claims.to_string()));
    let ps = format!("{input}.{}", b64(&rsa.sign_raw_as(Algorithm::PS256, input.as_bytes())));
    let err = f.rejection(&ps).await;
    assert_eq!(err.reason, Reason::AlgorithmNotAllowed);
    assert!(err.message.contains("RS256 only"), "{}", err.message);

    // Allow-list from configuration.
    let only_rs = Fixture::one(
        &[&rsa, &ec],
        Policy { algorithms: [Algorithm::RS256].into_iter().collect(), ..Policy::default() },
    );
    assert_eq!(only_rs.reason(&ec.mint(&only_rs.claims())).await, Reason::AlgorithmNotAllowed);
    assert_eq!(only_rs.reason(&rsa.mint(&only_rs.claims())).await, Reason::Valid);
}

#[tokio::test]
async fn a_jwk_without_alg_accepts_every_fitting_algorithm() {
    let rsa = TestKey::rsa("rsa");
    let jwk = rsa.jwk_with(json!({"alg": null}));
    let f = Fixture::new(|clock| vec![static_issuer(ISS, &[jwk], Policy::default(), clock)]);
    for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384] {
        let input =
            format!("{}.{}", b64(&json!({"alg": alg.as_str(), "kid":"rsa"}).to_string()), b64(&f.claims().to_string()));
        let token = format!("{input}.{}", b64(&rsa.sign_raw_as(alg, input.as_bytes())));
        assert_eq!(f.reason(&token).await, Reason::Valid, "{alg}");
    }
}

#[tokio::test]
async fn issuer_rules() {
    let key = TestKey::rsa("k1");
    let f = Fixture::one(&[&key], Policy::default());
    let mut claims = f.claims();
    claims["iss"] = json!(format!("{ISS}/"));
    assert_eq!(f.reason(&key.mint(&claims)).await, Reason::UntrustedIssuer);
    claims["iss"] = json!("https://CLERK.example.com");
    assert_eq!(f.reason(&key.mint(&claims)).await, Reason::UntrustedIssuer);
    claims["iss"] = json!("https://abcd.supabase.co/auth/v1");
    let err = f.rejection(&key.mint(&claims)).await;
    assert_eq!(err.reason, Reason::UntrustedIssuer);
    assert!(err.message.contains("Supabase Auth"), "{}", err.message);
    // No iss: with one issuer configured, its key still checks the signature
    // first (nothing is trusted before that); then the missing iss is refused.
    claims.as_object_mut().unwrap().remove("iss");
    assert_eq!(f.reason(&key.mint(&claims)).await, Reason::UntrustedIssuer);
    assert_eq!(f.reason(&TestKey::rsa("k1").mint(&claims)).await, Reason::BadSignature);
    claims["iss"] = json!(7);
    assert_eq!(f.reason(&key.mint(&claims)).await, Reason::UntrustedIssuer);
    // With several issuers there is no key to try: refused at once.
    let two = Fixture::new(|clock| {
        vec![
            static_issuer(ISS, &[key.jwk().clone()], Policy::default(), clock.clone()),
            static_issuer(OTHER_ISS, &[key.jwk().clone()], Policy::default(), clock),
        ]
    });
    assert_eq!(two.reason(&TestKey::rsa("k1").mint(&claims)).await, Reason::UntrustedIssuer);
}

#[tokio::test]
async fn keys_are_scoped_by_issuer_never_by_bare_kid() {
    // Two Clerk instances that happen to share a kid.
    let a = TestKey::rsa("ins_same");
    let b = TestKey::rsa("ins_same");
    let f = Fixture::new(|clock| {
        vec![
            static_issuer(ISS, &[a.jwk().clone()], Policy::default(), clock.clone()),
            static_issuer(OTHER_ISS, &[b.jwk().clone()], Policy::default(), clock),
        ]
    });
    let mut claims = f.claims();
    assert_eq!(f.reason(&a.mint(&claims)).await, Reason::Valid);
    // B's key, claiming A as issuer: verified with A's key, so it fails.
    assert_eq!(f.reason(&b.mint(&claims)).await, Reason::BadSignature);
    claims["iss"] = json!(OTHER_ISS);
    assert_eq!(f.reason(&b.mint(&claims)).await, Reason::Valid);
    assert_eq!(f.reason(&a.mint(&claims)).await, Reason::BadSignature);
}

#[tokio::test]
async fn key_selection() {
    let k1 = TestKey::rsa("k1");
    let k2 = TestKey::rsa("k2");
    let one = Fixture::one(&[&k1], Policy::default());
    let claims = one.claims();
    // No kid, a single fitting key: accepted.
    let no_kid = k1.mint_with_header(&json!({"alg": "RS256"}), &claims);
    assert_eq!(one.reason(&no_kid).await, Reason::Valid);
    // No kid, two fitting keys: refused.
    let two = Fixture::one(&[&k1, &k2], Policy::default());
    assert_eq!(two.reason(&no_kid).await, Reason::UnknownKey);
    // Unknown kid (static keys cannot be refetched).
    let err = one.rejection(&k2.mint(&claims)).await;
    assert_eq!(err.reason, Reason::UnknownKey);
    assert!(err.message.contains("development vs production"), "{}", err.message);
}

#[tokio::test]
async fn signatures() {
    let rsa = TestKey::rsa("rsa");
    let ec = TestKey::es256("ec");
    let f = Fixture::one(&[&rsa, &ec], Policy::default());
    let claims = f.claims();
    let token = rsa.mint(&claims);
    let (input, sig) = token.rsplit_once('.').unwrap();

    // A payload altered after signing.
    let mut altered = claims.clone();
    altered["role"] = json!("service_role");
    let forged = format!("{}.{}.{sig}", input.split('.').next().unwrap(), b64(&altered.to_string()));
    assert_eq!(f.reason(&forged).await, Reason::BadSignature);
    // A truncated, an empty and a bit-flipped signature.
    assert_eq!(f.reason(&format!("{input}.")).await, Reason::BadSignature);
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    assert_eq!(f.reason(&format!("{input}.{}", b64(&raw[..raw.len() - 3]))).await, Reason::BadSignature);
    // Non-canonical base64url (unused trailing bits set) is malformed, not a
    // bad signature: a 256-byte signature leaves 4 unused bits in its last
    // character; set the lowest of them.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = ALPHABET.iter().position(|c| *c == *sig.as_bytes().last().unwrap()).unwrap();
    let non_canonical = format!("{}{}", &sig[..sig.len() - 1], ALPHABET[last | 1] as char);
    assert_eq!(f.reason(&format!("{input}.{non_canonical}")).await, Reason::Malformed);
    raw[10] ^= 1;
    assert_eq!(f.reason(&format!("{input}.{}", b64(&raw))).await, Reason::BadSignature);

    // ECDSA: r = s = 0 ("psychic signatures"), and r, s out of range.
    let ec_input = ec.mint(&claims);
    let (ec_input, _) = ec_input.rsplit_once('.').unwrap();
    for bad in [vec![0u8; 64], vec![0xff; 64], [vec![0u8; 32], vec![1u8; 32]].concat()] {
        assert_eq!(f.reason(&format!("{ec_input}.{}", b64(&bad))).await, Reason::BadSignature);
    }
}

#[tokio::test]
async fn header_key_injection_is_ignored() {
    let legit = TestKey::rsa("ins_real");
    let attacker = TestKey::rsa("ins_real");
    let f = Fixture::one(&[&legit], Policy::default());
    let claims = f.claims();
    let header = json!({
        "alg": "RS256", "kid": "ins_real",
        "jwk": attacker.jwk(),
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": ["MIIB"],
    });
    assert_eq!(f.reason(&attacker.mint_with_header(&header, &claims)).await, Reason::BadSignature);
    // The same headers on a legitimately signed token change nothing.
    assert_eq!(f.reason(&legit.mint_with_header(&header, &claims)).await, Reason::Valid);
}

#[tokio::test]
async fn clerk_categories_and_types() {
    let key = TestKey::rsa("k1");
    let f = Fixture::one(&[&key], Policy::default());
    let claims = f.claims();
    let kind = |cat: Option<&str>, typ: Option<&str>| {
        let mut h = json!({"alg": "RS256", "kid": "k1"});
        if let Some(c) = cat {
            h["cat"] = json!(c);
        }
        if let Some(t) = typ {
            h["typ"] = json!(t);
        }
        key.mint_with_header(&h, &claims)
    };
    assert_eq!(f.reason(&kind(Some(token::category::SESSION), Some("JWT"))).await, Reason::Valid);
    assert_eq!(f.reason(&kind(Some(token::category::JWT_TEMPLATE), None)).await, Reason::TokenTypeNotAccepted);
    assert_eq!(f.reason(&kind(Some(token::category::MACHINE), None)).await, Reason::TokenTypeNotAccepted);
    assert_eq!(f.reason(&kind(None, Some("at+jwt"))).await, Reason::TokenTypeNotAccepted);
    let accepting = Fixture::one(
        &[&key],
        Policy { token_kinds: TokenKinds::SESSION_ONLY.with(TokenKind::JwtTemplate), ..Policy::default() },
    );
    assert_eq!(accepting.reason(&kind(Some(token::category::JWT_TEMPLATE), None)).await, Reason::Valid);
}

#[tokio::test]
async fn clerk_fixture_tokens() {
    let fixtures: Value =
        serde_json::from_str(include_str!("../../tests/data/clerk-js-fixtures.json")).expect("fixture JSON");
    let iss = fixtures["issuer"].as_str().unwrap();
    let jwks: Vec<Value> = fixtures["jwks"]["keys"].as_array().unwrap().clone();
    let f = Fixture::new(|clock| vec![static_issuer(iss, &jwks, Policy::default(), clock)]);
    let tokens = &fixtures["tokens"];
    // Signature verifies; the 2022 token is expired. (No role claim either, but
    // expiry comes first in the contract's order.)
    assert_eq!(f.reason(tokens["issued_by_clerk"].as_str().unwrap()).await, Reason::Expired);
    assert_eq!(f.reason(tokens["azp_tampered"].as_str().unwrap()).await, Reason::BadSignature);
    assert_eq!(f.reason(tokens["payload_swapped"].as_str().unwrap()).await, Reason::BadSignature);
    // At its own time (iat + 1) it is valid but for the role claim Supabase needs.
    f.clock.set(UNIX_EPOCH + Duration::from_secs(1_666_648_251));
    assert_eq!(f.reason(tokens["issued_by_clerk"].as_str().unwrap()).await, Reason::MissingRole);
}

#[tokio::test]
async fn identity_and_time_come_from_the_clock() {
    let key = TestKey::rsa("k1");
    let f = Fixture::one(&[&key], Policy::default());
    let token = key.mint(&f.claims());
    assert_eq!(f.reason(&token).await, Reason::Valid);
    f.clock.advance(Duration::from_secs(64));
    assert_eq!(f.reason(&token).await, Reason::Valid);
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(f.reason(&token).await, Reason::Expired);
}
