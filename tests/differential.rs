//! Differential testing against an independent JOSE implementation: tokens
//! made by mutating a valid Clerk-shaped token ([`mutate`]) are verified by our
//! verifier (in process, through the library) and by panva's `jose` on Node
//! (`tests/differential/oracle.mjs`, one long-lived process, pinned in its
//! `package-lock.json`, provisioned by `ci/tools/setup.sh`), with the same
//! keys, algorithms, issuer, clock tolerance, required claims and time.
//!
//! The rule: our answer is never "valid" where jose says invalid. Where we
//! say invalid and jose says valid, our sentence must start like one of the
//! documented differences in `docs/differential.md` (the reasons we are
//! stricter); anything else fails the run. See that file for how to run the
//! long run (`scripts/differential.sh`).
//!
//! A fixed seed fixes the mutations; keys (and ECDSA nonces) are fresh on
//! every run.

#[path = "differential/mutate.rs"]
mod mutate;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, UNIX_EPOCH};

use clerk_introspect::clock::{Clock, ManualClock};
use clerk_introspect::keys::fetch::Fetcher;
use clerk_introspect::keys::jwk::{Algorithm, key_from_jwk_json};
use clerk_introspect::keys::{IssuerKeys, KeyContext, KeySource, NoopObserver, RefreshSettings};
use clerk_introspect::test_issuer::{TestKey, session_claims};
use clerk_introspect::verify::{Expectations, Policy, Trust, TrustedIssuer, Verifier, VerifyError};
use fastrand::Rng;
use serde_json::{Value, json};
use tokio::sync::Notify;

use mutate::{Draft, J, Recipe, Style, World};

const ISSUER: &str = "https://clerk.differential.example.com";
const SKEW: i64 = 5;
/// The algorithms both verifiers are told to allow.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
/// Tokens per batch written to jose before its answers are read.
const BATCH: usize = 256;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `ci/tools/setup.sh` run once (it installs `tests/differential/node_modules`).
fn provisioned() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let done = DONE.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").to_path_buf();
        let out = Command::new("bash")
            .arg(repo().join("ci/tools/setup.sh"))
            .env("INTROSPECT_TOOLS_DIR", target.join("tools"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run bash ci/tools/setup.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ci/tools/setup.sh failed ({}): the differential test needs node (20+), npm and, the first time, the npm registry.\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = done {
        panic!("{e}");
    }
}

/// jose, as one node process answering one line per token.
struct Oracle {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Oracle {
    fn start(jwks: &Value, now: i64) -> Oracle {
        provisioned();
        let mut child = Command::new("node")
            .arg(repo().join("tests/differential/oracle.mjs"))
            .current_dir(repo().join("tests/differential"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node tests/differential/oracle.mjs");
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let config = json!({
            "jwks": jwks,
            "issuer": ISSUER,
            "algorithms": ALGORITHMS.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "clockTolerance": SKEW,
            "now": now,
            "requiredClaims": ["exp", "sub"],
        });
        writeln!(stdin, "{config}").unwrap();
        stdin.flush().unwrap();
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), r#"{"ready":true}"#, "the oracle did not start");
        Oracle { child, stdin: Some(stdin), stdout }
    }

    /// jose's answers for `tokens`, in order: `None` valid, `Some(code)` invalid.
    fn verdicts(&mut self, tokens: &[String]) -> Vec<Option<String>> {
        // Written from another thread: both pipes hold less than a batch.
        let mut stdin = self.stdin.take().unwrap();
        let lines: Vec<String> = tokens.iter().map(|t| Value::String(t.clone()).to_string()).collect();
        let writer = std::thread::spawn(move || {
            for line in lines {
                writeln!(stdin, "{line}").unwrap();
            }
            stdin.flush().unwrap();
            stdin
        });
        let mut out = Vec::with_capacity(tokens.len());
        for _ in tokens {
            let mut line = String::new();
            assert!(self.stdout.read_line(&mut line).unwrap() > 0, "the oracle exited");
            let answer: Value = serde_json::from_str(&line).unwrap();
            out.push(if answer["valid"] == true {
                None
            } else {
                Some(answer["code"].as_str().unwrap_or("").to_owned())
            });
        }
        self.stdin = Some(writer.join().unwrap());
        out
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A documented difference: our `REASON: sentence` starts with `pattern`.
#[derive(Debug)]
struct Documented {
    pattern: String,
}

/// The differences `docs/differential.md` lists: the first code span of each
/// table row that starts with a code span.
fn documented() -> Vec<Documented> {
    let text = std::fs::read_to_string(repo().join("docs/differential.md")).expect("docs/differential.md");
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(p, _)| Documented { pattern: p.to_owned() }))
        .collect()
}

/// What one run found.
#[derive(Default)]
struct Tally {
    tokens: usize,
    both_valid: usize,
    both_invalid: usize,
    /// Ours valid, jose invalid: never allowed.
    violations: Vec<String>,
    /// Ours invalid, jose valid, by documented pattern.
    stricter: BTreeMap<String, usize>,
    /// Ours invalid, jose valid, matching no documented pattern.
    undocumented: Vec<String>,
}

impl Tally {
    fn summary(&self) -> String {
        let mut s = format!(
            "{} tokens: {} valid in both, {} invalid in both, {} stricter here (documented), {} ours-valid-jose-invalid, {} undocumented\n",
            self.tokens,
            self.both_valid,
            self.both_invalid,
            self.stricter.values().sum::<usize>(),
            self.violations.len(),
            self.undocumented.len()
        );
        for (pattern, n) in &self.stricter {
            s.push_str(&format!("  {n:6}  {pattern}\n"));
        }
        s
    }
}

fn describe(token: &str, recipe: &Recipe) -> String {
    use base64::Engine as _;
    let decode = |part: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|_| "(not base64url)".into())
    };
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "recipe {:?}\n    header  {}\n    payload {}",
        recipe.0,
        parts.first().map_or(String::new(), |p| decode(p)),
        parts.get(1).map_or(String::new(), |p| decode(p)),
    )
}

/// Generates and compares tokens until `count` are done or `until` passes.
async fn run(seed: u64, count: usize, until: Option<Instant>) -> Tally {
    let keys: Vec<TestKey> =
        ALGORITHMS.iter().enumerate().map(|(i, alg)| TestKey::generate(&format!("ins_diff{i}"), *alg)).collect();
    let stranger = TestKey::generate("ins_diff0", Algorithm::RS256);
    let clock = Arc::new(ManualClock::starting_now());
    let now = clock.unix_seconds();
    let jwks = json!({"keys": keys.iter().map(|k| k.jwk().clone()).collect::<Vec<_>>()});
    let verification: Vec<_> = keys.iter().map(|k| Arc::new(key_from_jwk_json(k.jwk()).unwrap())).collect();
    let ctx = KeyContext {
        fetcher: Fetcher::new().unwrap(),
        clock: clock.clone(),
        observer: Arc::new(NoopObserver),
        changed: Arc::new(Notify::new()),
    };
    let issuer_keys =
        IssuerKeys::start(Arc::from(ISSUER), KeySource::Static(verification), RefreshSettings::default(), ctx);
    let policy = Policy {
        algorithms: ALGORITHMS.into_iter().collect(),
        clock_skew: Duration::from_secs(SKEW as u64),
        ..Policy::default()
    };
    let trust = Trust::new([TrustedIssuer { policy: Arc::new(policy), keys: issuer_keys }]);
    let verifier = Verifier::new(trust, clock.clone());
    let mut oracle = Oracle::start(&jwks, now);
    let documented = documented();
    assert!(!documented.is_empty(), "docs/differential.md lists no difference");

    let world = World { keys: &keys, stranger: &stranger, issuer: ISSUER.to_owned(), now, skew: SKEW };
    let mut rng = Rng::with_seed(seed);
    let mut tally = Tally::default();
    let base_claims = {
        let mut c = session_claims(ISSUER, UNIX_EPOCH + Duration::from_secs(now as u64));
        c["o"] = json!({"id": "org_2pDiff", "rol": "admin", "slg": "acme", "per": "read,write"});
        c["metadata"] = json!({"plan": "pro", "seats": 3, "tags": ["a", "b"], "nested": {"x": [1, {"y": null}]}});
        c
    };
    let expect = Expectations::default();
    while tally.tokens < count && until.is_none_or(|u| Instant::now() < u) {
        let n = BATCH.min(count - tally.tokens);
        let mut tokens = Vec::with_capacity(n);
        let mut recipes = Vec::with_capacity(n);
        for _ in 0..n {
            let key = &keys[rng.usize(..keys.len())];
            let header = json!({"alg": key.alg().as_str(), "kid": key.kid(), "typ": "JWT"});
            let mut draft = Draft {
                header: J::from_value(&header),
                payload: J::from_value(&base_claims),
                header_bytes: None,
                payload_bytes: None,
                header_style: Style::default(),
                payload_style: Style::default(),
            };
            let mut recipe = Recipe::default();
            let m = mutate::mutate(&mut rng, &world, &mut draft, &mut recipe);
            tokens.push(mutate::finish(&mut rng, &world, key, &draft, m, &mut recipe));
            recipes.push(recipe);
        }
        // jose gets the token as our API reads it: without a `Bearer `
        // scheme or surrounding whitespace (docs/differential.md).
        let compared: Vec<String> =
            tokens.iter().map(|t| clerk_introspect::verify::token::strip_bearer(t).to_owned()).collect();
        let theirs = oracle.verdicts(&compared);
        for ((token, recipe), jose) in tokens.iter().zip(&recipes).zip(theirs) {
            tally.tokens += 1;
            let ours = match verifier.verify(token, &expect).await {
                Ok(_) => None,
                Err(VerifyError::Rejected(r)) => Some(r.to_string().trim_start_matches("REASON_").to_owned()),
                Err(e) => panic!("{e}"),
            };
            match (ours, jose) {
                (None, None) => tally.both_valid += 1,
                (Some(_), Some(_)) => tally.both_invalid += 1,
                (None, Some(code)) => tally.violations.push(format!("jose {code}: {}", describe(token, recipe))),
                (Some(why), None) => match documented.iter().find(|d| why.starts_with(&d.pattern)) {
                    Some(d) => *tally.stricter.entry(d.pattern.clone()).or_default() += 1,
                    None => tally.undocumented.push(format!("{why}\n    {}", describe(token, recipe))),
                },
            }
        }
    }
    tally
}

fn assert_clean(tally: &Tally) {
    let show = |v: &[String]| v.iter().take(20).map(|s| format!("  {s}\n")).collect::<String>();
    assert!(
        tally.violations.is_empty(),
        "valid here, invalid for jose ({}):\n{}\n{}",
        tally.violations.len(),
        show(&tally.violations),
        tally.summary()
    );
    assert!(
        tally.undocumented.is_empty(),
        "invalid here, valid for jose, for a reason docs/differential.md does not list ({}):\n{}\n{}",
        tally.undocumented.len(),
        show(&tally.undocumented),
        tally.summary()
    );
}

/// The fixed-seed run that `cargo test` includes.
#[tokio::test]
async fn fixed_seed_run_agrees_with_jose() {
    let tally = run(17, 3000, None).await;
    eprintln!("{}", tally.summary());
    assert_clean(&tally);
    // The mutations reach both verdicts, and both sides of every comparison.
    assert!(tally.both_valid > 300 && tally.both_invalid > 1000, "{}", tally.summary());
    assert!(tally.stricter.len() >= 5, "{}", tally.summary());
}

/// The long run: `scripts/differential.sh --seconds N [--seed S]`.
#[tokio::test]
#[ignore = "long: run through scripts/differential.sh"]
async fn long_run() {
    let seconds: u64 = std::env::var("DIFFERENTIAL_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 =
        std::env::var("DIFFERENTIAL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    let started = Instant::now();
    let tally = run(seed, usize::MAX, Some(started + Duration::from_secs(seconds))).await;
    println!("seed {seed}, {:.0} s: {}", started.elapsed().as_secs_f64(), tally.summary());
    assert_clean(&tally);
}
