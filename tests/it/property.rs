//! Property: any string as a token yields an answer through gRPC (never a
//! panic, never an RPC error), with a reason, a sentence, and an identity
//! only when valid.

use std::sync::OnceLock;

use clerk_introspect::pb::Reason;
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use proptest::prelude::*;
use tokio::runtime::Runtime;

use crate::support::Server;

struct World {
    rt: Runtime,
    server: Server,
    token: String,
    _issuer: TestIssuer,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (server, issuer, token) = rt.block_on(async {
            let key = TestKey::rsa("ins_prop");
            let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
            let server = Server::ready(&issuer).await;
            let mut claims = issuer.session_claims(server.now());
            claims["exp"] = serde_json::json!(claims["iat"].as_i64().unwrap() + 3600);
            let token = key.mint(&claims);
            (server, issuer, token)
        });
        World { rt, server, token, _issuer: issuer }
    })
}

fn check(token: &str) -> Result<(), TestCaseError> {
    let w = world();
    let answer = w.rt.block_on(w.server.verify_with(token, None));
    let answer = answer.map_err(|s| TestCaseError::fail(format!("RPC error {s:?}")))?;
    let reason = Reason::try_from(answer.reason).map_err(|_| TestCaseError::fail("unknown reason"))?;
    prop_assert_ne!(reason, Reason::Unspecified);
    prop_assert_eq!(answer.valid, reason == Reason::Valid);
    prop_assert_eq!(answer.identity.is_some(), answer.valid);
    prop_assert!(!answer.message.is_empty());
    if token.len() >= 24 {
        prop_assert!(!answer.message.contains(token.trim()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_string_gets_an_answer(token in ".{0,400}") {
        check(&token)?;
    }

    #[test]
    fn any_bytes_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn jws_shaped_noise_gets_an_answer(parts in prop::collection::vec("[A-Za-z0-9_=+/-]{0,120}", 1..6)) {
        check(&parts.join("."))?;
    }

    #[test]
    fn mutated_tokens_are_never_valid(position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let w = world();
        let mut bytes = w.token.clone().into_bytes();
        let i = position.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        let token = String::from_utf8_lossy(&bytes).into_owned();
        check(&token)?;
        let answer = w.rt.block_on(w.server.verify_with(&token, None)).unwrap();
        // Base64url has spare bits only in the last character of a part; a
        // change there can decode to the same bytes. Anything else must fail.
        if answer.valid {
            let decoded_same = token.split('.').map(|p| p.len()).eq(w.token.split('.').map(|p| p.len()));
            prop_assert!(decoded_same, "a mutated token verified: {token}");
        }
    }
}
