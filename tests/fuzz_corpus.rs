//! The fuzz targets' committed corpus (`fuzz/corpus/<target>/`), replayed on
//! the stable toolchain through the very entry points the targets call
//! (`clerk_introspect::fuzzing`): every input a fuzzer found interesting,
//! and every crash it ever found, stays a regression test of `cargo test`.
//!
//! `write_seed_corpus` (ignored) writes the seed corpus and the fuzz
//! issuer's public keys (`tests/data/fuzz-keys.json`) afresh:
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`.
//! docs/fuzzing.md has the rest.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clerk_introspect::fuzzing;
use clerk_introspect::keys::jwk::Algorithm;
use clerk_introspect::pb::Reason;
use clerk_introspect::test_issuer::{TestKey, session_claims};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
use prost::Message;
use serde_json::{Value, json};

/// A target's entry point.
type EntryPoint = fn(&[u8]);

/// The targets and their entry points, as in `fuzz/fuzz_targets/`.
const TARGETS: [(&str, EntryPoint); 5] = [
    ("token", fuzzing::token),
    ("jwks", fuzzing::jwks),
    ("config", fuzzing::config),
    ("ext_authz", fuzzing::ext_authz),
    ("verify", fuzzing::verify),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

#[test]
fn every_corpus_input_runs_clean() {
    for (target, run) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(files.len() >= 5, "{target}: only {} corpus inputs", files.len());
        for file in files {
            let data = std::fs::read(&file).unwrap();
            // A panic names the input: run it alone with `cargo fuzz run <target> <file>`.
            eprintln!("{target}: {}", file.display());
            run(&data);
        }
    }
}

/// The seeds still do what they were written for: under the fixed clock
/// and keys the fuzz issuer's seed tokens verify (so that the fuzzer starts
/// from inputs that reach the policy checks), and Clerk's own token is
/// refused as expired only after its signature verified.
#[test]
fn seed_tokens_verify_under_the_fixed_clock_and_keys() {
    let dir = corpus_dir("token");
    for name in [
        "fuzz-valid-rs256",
        "fuzz-valid-ps256",
        "fuzz-valid-es256",
        "fuzz-valid-es384",
        "fuzz-valid-eddsa",
        "fuzz-unknown-kid-kidless-key",
        "bearer-prefix",
    ] {
        let token = std::fs::read_to_string(dir.join(name)).unwrap();
        if let Err(e) = fuzzing::outcome(&token) {
            panic!("{name}: {e}");
        }
    }
    // No kid, and two ES256 keys (one with a kid, one without): no key can be chosen.
    let no_kid = std::fs::read_to_string(dir.join("fuzz-no-kid-ambiguous")).unwrap();
    match fuzzing::outcome(&no_kid) {
        Err(clerk_introspect::verify::VerifyError::Rejected(r)) => assert_eq!(r.reason, Reason::UnknownKey, "{r}"),
        other => panic!("{other:?}"),
    }
    let clerk = std::fs::read_to_string(dir.join("clerk-issued_by_clerk")).unwrap();
    match fuzzing::outcome(&clerk) {
        Err(clerk_introspect::verify::VerifyError::Rejected(r)) => assert_eq!(r.reason, Reason::Expired, "{r}"),
        other => panic!("{other:?}"),
    }
    let mut altered = std::fs::read_to_string(dir.join("fuzz-valid-es256")).unwrap().into_bytes();
    let last = altered.len() - 2;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    match fuzzing::outcome(std::str::from_utf8(&altered).unwrap()) {
        Err(clerk_introspect::verify::VerifyError::Rejected(r)) => assert_eq!(r.reason, Reason::BadSignature, "{r}"),
        other => panic!("{other:?}"),
    }
}

// === seed corpus ===

fn write(target: &str, name: &str, data: impl AsRef<[u8]>) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

fn b64(data: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// An unsigned compact JWS of raw header and payload bytes (signature "sig").
fn unsigned(header: &[u8], payload: &[u8]) -> String {
    format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
}

#[test]
#[ignore = "writes tests/data/fuzz-keys.json and fuzz/corpus/; run by hand (docs/fuzzing.md)"]
fn write_seed_corpus() {
    let iss = fuzzing::FUZZ_ISSUER;
    let keys = [
        TestKey::generate("fuzz-rs256", Algorithm::RS256),
        TestKey::generate("fuzz-ps256", Algorithm::PS256),
        TestKey::generate("fuzz-es256", Algorithm::ES256),
        TestKey::generate("fuzz-es384", Algorithm::ES384),
        TestKey::generate("fuzz-eddsa", Algorithm::EdDSA),
    ];
    let kidless = TestKey::generate("", Algorithm::ES256);
    let kidless_jwk = kidless.jwk_with(json!({"kid": null}));
    let mut jwks: Vec<Value> = keys.iter().map(|k| k.jwk().clone()).collect();
    jwks.push(kidless_jwk.clone());
    let jwks = json!({"keys": jwks});
    let fixture = json!({
        "what": "Public keys of the fuzz targets' issuer (src/fuzzing.rs). The private keys signed the seed tokens in fuzz/corpus/ and were then dropped; written by tests/fuzz_corpus.rs write_seed_corpus.",
        "issuer": iss,
        "jwks": jwks,
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-keys.json");
    std::fs::write(path, serde_json::to_string_pretty(&fixture).unwrap() + "\n").unwrap();
    for target in ["token", "jwks", "config", "ext_authz", "verify"] {
        let _ = std::fs::remove_dir_all(corpus_dir(target));
    }

    let now = fuzzing::now();
    let claims = session_claims(iss, now);
    let with = |changes: Value| {
        let mut c = claims.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let es = &keys[2];
    let mut tokens: Vec<(String, String)> = Vec::new();
    for key in &keys {
        tokens.push((format!("fuzz-valid-{}", key.alg().as_str().to_lowercase()), key.mint(&claims)));
    }
    let kidless_token = kidless.mint_with_header(&json!({"alg": "ES256", "typ": "JWT"}), &claims);
    tokens.push(("fuzz-no-kid-ambiguous".into(), kidless_token));
    tokens.push((
        "fuzz-unknown-kid-kidless-key".into(),
        kidless.mint_with_header(&json!({"alg": "ES256", "kid": "other"}), &claims),
    ));
    let header = |extra: Value| {
        let mut h = json!({"alg": "ES256", "kid": "fuzz-es256", "typ": "JWT"});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let signed = [
        ("fuzz-machine", header(json!({"cat": "cl_B7d4PD333AAA"})), with(json!({"sub": "mch_2abc"}))),
        ("fuzz-template", header(json!({"cat": "cl_B7d4PD222AAA"})), with(json!({"aud": ["api", "web"]}))),
        ("fuzz-oauth", header(json!({"typ": "at+jwt"})), with(json!({"scope": "read write", "client_id": "c"}))),
        ("fuzz-unknown-cat", header(json!({"cat": "cl_other"})), claims.clone()),
        ("fuzz-expired", header(json!({})), with(json!({"exp": fuzzing::NOW - 3600}))),
        ("fuzz-not-yet", header(json!({})), with(json!({"nbf": fuzzing::NOW + 3600}))),
        ("fuzz-pending", header(json!({})), with(json!({"sts": "pending"}))),
        ("fuzz-no-role", header(json!({})), with(json!({"role": null}))),
        ("fuzz-other-azp", header(json!({})), with(json!({"azp": "https://evil.example"}))),
        ("fuzz-no-iss", header(json!({})), with(json!({"iss": null}))),
        ("fuzz-untrusted-iss", header(json!({})), with(json!({"iss": "https://clerk.evil.example"}))),
        ("fuzz-null-nbf", header(json!({})), with(json!({"nbf": null, "exp": "soon"}))),
        (
            "fuzz-org-claims",
            header(json!({})),
            with(json!({"o": {"id": "org_1", "rol": "admin", "per": "a,b"}, "email": "a@b.c", "v": 2})),
        ),
        (
            "fuzz-deep-claims",
            header(json!({})),
            with(json!({"m": [[[[[[[[[[{"a": [1.5e300, -0, "\u{1F600}"]}]]]]]]]]]]})),
        ),
    ];
    for (name, h, c) in &signed {
        tokens.push((name.to_string(), es.mint_with_header(h, c)));
    }
    tokens.push(("fuzz-ps-with-rsa-key".into(), {
        let input = format!("{}.{}", b64(br#"{"alg":"PS256","kid":"fuzz-rs256"}"#), b64(claims.to_string()));
        let sig = keys[0].sign_raw_as(Algorithm::PS256, input.as_bytes());
        format!("{input}.{}", b64(sig))
    }));
    tokens.push(("fuzz-alg-key-mismatch".into(), {
        let input = format!("{}.{}", b64(br#"{"alg":"RS256","kid":"fuzz-es256"}"#), b64(claims.to_string()));
        format!("{input}.{}", b64([7u8; 256]))
    }));
    tokens.push(("bearer-prefix".into(), format!("Bearer {}", keys[0].mint(&claims))));
    let clerk: Value = serde_json::from_str(include_str!("data/clerk-js-fixtures.json")).unwrap();
    for (name, t) in clerk["tokens"].as_object().unwrap() {
        tokens.push((format!("clerk-{name}"), t.as_str().unwrap().to_owned()));
    }
    let p = br#"{"sub":"user_1","iss":"https://clerk.fuzz.example"}"#;
    let h = br#"{"alg":"RS256","kid":"k"}"#;
    let malformed: Vec<(&str, String)> = vec![
        ("bad-not-utf8-header", unsigned(b"{\"alg\":\"RS256\",\"x\":\"\xff\"}", p)),
        ("bad-duplicate-alg", unsigned(br#"{"alg":"RS256","alg":"ES256"}"#, p)),
        ("bad-escaped-duplicate", unsigned(br#"{"alg":"RS256","\u0061lg":"ES256"}"#, p)),
        ("bad-kid-null", unsigned(br#"{"alg":"RS256","kid":null}"#, p)),
        ("bad-kid-number", unsigned(br#"{"alg":"RS256","kid":7}"#, p)),
        ("bad-crit", unsigned(br#"{"alg":"RS256","crit":["exp"]}"#, p)),
        ("bad-enc", unsigned(br#"{"alg":"RS256","enc":"A128GCM"}"#, p)),
        ("bad-zip", unsigned(br#"{"alg":"RS256","zip":"DEF"}"#, p)),
        ("bad-b64", unsigned(br#"{"alg":"RS256","b64":false}"#, p)),
        ("bad-alg-none", unsigned(br#"{"alg":"none"}"#, p)),
        ("bad-hs256-supabase", unsigned(br#"{"alg":"HS256"}"#, br#"{"iss":"https://abc.supabase.co/auth/v1"}"#)),
        ("bad-alg-unknown", unsigned(br#"{"alg":"ES512"}"#, p)),
        ("bad-lone-surrogate", unsigned(h, br#"{"sub":"\ud800"}"#)),
        ("bad-number-range", unsigned(h, br#"{"exp":1e400}"#)),
        ("bad-trailing-text", unsigned(br#"{"alg":"RS256"} x"#, p)),
        ("bad-too-deep", unsigned(h, format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40)).as_bytes())),
        ("bad-payload-array", unsigned(h, b"[1]")),
        ("bad-padding", format!("{}=.{}.c2ln", b64(h), b64(p))),
        ("bad-trailing-bits", format!("{}.{}.c2lnB", b64(h), b64(p))),
        ("bad-four-parts", format!("{}.{}.c2ln.x", b64(h), b64(p))),
        ("bad-big-header", unsigned(format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "k".repeat(700)).as_bytes(), p)),
        ("json-object", r#"{"a":[1,2.5,-0,"\u00e9"],"b":{"c":null,"d":true}}"#.to_owned()),
        ("json-whitespace", " \t\r\n{ \"a\" : [ ] } \n".to_owned()),
        ("empty", String::new()),
    ];
    for (name, t) in &tokens {
        write("token", name, t);
    }
    for (name, t) in &malformed {
        write("token", name, t);
    }

    // jwks: JWKS documents, single JWKs, discovery documents, PEM keys, Cache-Control values.
    write("jwks", "fuzz-issuer-jwks", serde_json::to_vec(&jwks).unwrap());
    write("jwks", "clerk-jwks", serde_json::to_vec(&clerk["jwks"]).unwrap());
    let rsa = keys[0].jwk();
    let odd = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        keys[2].jwk_with(json!({"use": "enc"})),
        keys[2].jwk_with(json!({"key_ops": ["encrypt"]})),
        keys[2].jwk_with(json!({"crv": "P-521"})),
        keys[2].jwk_with(json!({"x": "AAAA"})),
        keys[3].jwk_with(json!({"y": keys[3].jwk()["x"].clone()})),
        keys[4].jwk_with(json!({"alg": "ES256"})),
        rsa.clone(),
        rsa.clone(),
        keys[0].jwk_with(json!({"n": "AQAB"})),
        keys[0].jwk_with(json!({"e": 65537})),
        {"kty": "RSA", "n": format!("{}=", rsa["n"].as_str().unwrap()), "e": "AQAB"},
        {"kty": "OKP", "crv": "X25519", "x": keys[4].jwk()["x"].clone()},
        kidless_jwk,
    ]});
    write("jwks", "mixed-jwks", serde_json::to_vec_pretty(&odd).unwrap());
    write("jwks", "empty-jwks", r#"{"keys":[]}"#);
    write("jwks", "not-jwks", r#"{"keys":{"kty":"RSA"}}"#);
    write(
        "jwks",
        "discovery",
        serde_json::to_vec(&json!({
            "issuer": iss,
            "jwks_uri": format!("{iss}/.well-known/jwks.json"),
            "authorization_endpoint": format!("{iss}/oauth/authorize"),
            "response_types_supported": ["code"],
        }))
        .unwrap(),
    );
    write("jwks", "discovery-http", format!(r#"{{"issuer":"{iss}","jwks_uri":"http://127.0.0.1:8080/jwks"}}"#));
    write(
        "jwks",
        "discovery-other-issuer",
        r#"{"issuer":"https://other.example","jwks_uri":"https://other.example/j"}"#,
    );
    write("jwks", "discovery-no-jwks-uri", format!(r#"{{"issuer":"{iss}"}}"#));
    let pem = include_str!("../examples/config.toml")
        .split("\"\"\"")
        .nth(1)
        .expect("examples/config.toml has an inline PEM key")
        .to_owned();
    write("jwks", "pem-public-key", &pem);
    write("jwks", "pem-escaped-newlines", format!("\"{}\"", pem.trim().replace('\n', "\\n")));
    write(
        "jwks",
        "pem-private-key",
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
    );
    write("jwks", "cache-control", "public, max-age=600, must-revalidate");
    write("jwks", "key-url", "https://clerk.fuzz.example/.well-known/jwks.json");

    // config: the example, and small files that validate (or fail late).
    write("config", "example", include_str!("../examples/config.toml"));
    write("config", "minimal", "[[issuers]]\nissuer = \"https://clerk.example.com\"\n");
    write(
        "config",
        "two-issuers-pem",
        format!(
            "listen = \"127.0.0.1:50051\"\nshutdown_grace = \"3s\"\nwatch_interval = 0\n\n[[issuers]]\nissuer = \"https://clerk.a.example\"\nalgorithms = [\"RS256\", \"ES256\"]\naudiences = [\"api\"]\nclock_skew = 30\ntoken_kinds = [\"session\", \"machine\", \"oauth\", \"jwt-template\"]\n\n[[issuers]]\nissuer = \"https://clerk.b.example\"\npublic_key_pem = \"\"\"\n{pem}\"\"\"\npublic_key_kid = \"k1\"\nrefresh_interval = \"10m\"\nmax_key_staleness = \"1h\"\n"
        ),
    );
    write(
        "config",
        "local-jwks-uri",
        "[[issuers]]\nissuer = \"http://127.0.0.1:8080\"\njwks_uri = \"http://127.0.0.1:8080/jwks\"\nrequire_azp = true\nauthorized_parties = [\"http://localhost:3000\"]\naccept_pending_sessions = true\nroles = [\"authenticated\", \"service_role\"]\n",
    );
    write(
        "config",
        "duplicate-issuer",
        "[[issuers]]\nissuer = \"https://a.example\"\n[[issuers]]\nissuer = \"https://a.example\"\n",
    );
    write(
        "config",
        "unknown-key",
        "colour = \"blue\"\n[[issuers]]\nissuer = \"https://a.example\"\nclock_skew = \"forever\"\n",
    );
    write(
        "config",
        "tls-table",
        "[tls]\ncert = \"a.crt\"\nkey = \"a.key\"\n[[issuers]]\nissuer = \"https://a.example\"\njwks_file = \"k.json\"\n",
    );
    write("config", "syntax-error", "[[issuers]\nissuer = 'x\n");

    // ext_authz: CheckRequests as Envoy sends them.
    let good = keys[2].mint(&claims);
    let check = |headers: &[(&str, &str)], method: &str, extensions: &[(&str, &str)], raw: bool| -> Vec<u8> {
        let mut http = HttpRequest { method: method.to_owned(), path: "/api/x".into(), ..Default::default() };
        if raw {
            http.header_map = Some(HeaderMap {
                headers: headers
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.to_string(),
                        raw_value: v.as_bytes().to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            });
        } else {
            http.headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        }
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest { http: Some(http), ..Default::default() }),
                context_extensions: extensions.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            }),
        };
        request.encode_to_vec()
    };
    let bearer = format!("Bearer {good}");
    let cookie = format!("theme=dark; __session={good}; __session_abc={}", tokens[0].1);
    write("ext_authz", "bearer", check(&[("authorization", &bearer)], "GET", &[], false));
    write("ext_authz", "bearer-raw-headers", check(&[("authorization", &bearer), (":method", "GET")], "", &[], true));
    write("ext_authz", "cookies", check(&[("cookie", &cookie)], "GET", &[], false));
    write("ext_authz", "custom-header", check(&[("x-clerk-token", &good)], "POST", &[], false));
    write(
        "ext_authz",
        "route-expectations",
        check(
            &[("authorization", &bearer)],
            "GET",
            &[("authorized_parties", FUZZ_AZP_LIST), ("roles", "authenticated, admin"), ("audiences", "api")],
            false,
        ),
    );
    write(
        "ext_authz",
        "cors-preflight",
        check(&[("origin", "https://app.example"), ("access-control-request-method", "POST")], "OPTIONS", &[], false),
    );
    write(
        "ext_authz",
        "two-authorization",
        check(&[("authorization", &bearer), ("Authorization", "Bearer x")], "GET", &[], true),
    );
    write(
        "ext_authz",
        "basic-and-cookie",
        check(&[("authorization", "Basic dXNlcjpwdw=="), ("cookie", &cookie)], "GET", &[], false),
    );
    write("ext_authz", "no-token", check(&[("user-agent", "curl/8")], "GET", &[], false));
    write(
        "ext_authz",
        "clerk-expired",
        check(
            &[(
                "authorization",
                &format!("bearer {}", tokens.iter().find(|t| t.0 == "clerk-issued_by_clerk").unwrap().1),
            )],
            "GET",
            &[],
            false,
        ),
    );

    // verify: framed VerifyRequests (control byte, cuts, body).
    let framed = |token: &str, expect: Option<clerk_introspect::pb::Expectations>| -> Vec<u8> {
        let message = clerk_introspect::pb::VerifyRequest { token: token.to_owned(), expect }.encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        body
    };
    let with_control = |control: u8, cuts: &[u8], body: &[u8]| [&[control][..], cuts, body].concat();
    let body = framed(&good, None);
    write("verify", "one-frame", with_control(0, &[], &body));
    write("verify", "three-frames", with_control(3, &[1, 3, 200], &body));
    write("verify", "identity-encoding", with_control(0b0100, &[], &body));
    write("verify", "gzip-encoding", with_control(0b1000, &[], &body));
    let expect = clerk_introspect::pb::Expectations {
        authorized_parties: vec![fuzzing::FUZZ_AZP.into()],
        audiences: vec!["api".into()],
        roles: vec!["authenticated".into()],
    };
    write("verify", "with-expectations", with_control(1, &[128], &framed(&good, Some(expect))));
    write(
        "verify",
        "clerk-token",
        with_control(0, &[], &framed(&tokens.iter().find(|t| t.0 == "clerk-issued_by_clerk").unwrap().1, None)),
    );
    write("verify", "malformed-token", with_control(0, &[], &framed("not.a.token", None)));
    write("verify", "two-messages", with_control(0, &[], &[body.clone(), framed("x", None)].concat()));
    write("verify", "truncated", with_control(0, &[], &body[..body.len() - 3]));
    write("verify", "compressed-flag", with_control(0, &[], &[&[1u8][..], &body[1..]].concat()));
    write("verify", "empty-body", [0u8]);
}

const FUZZ_AZP_LIST: &str = "http://localhost:3000, https://app.example";
