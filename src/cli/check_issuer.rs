//! `clerk-introspect check-issuer URL`: fetches the issuer's discovery
//! document and JWKS exactly as `serve` does (the same [`Fetcher`]: no
//! redirects, the same timeouts and size caps, https unless loopback, the
//! same exact issuer match, the same [`parse_jwks`]) and reports what it
//! found and every problem in plain words.
//!
//! With `--config FILE` it checks every issuer of a config file, each with
//! its own key source, as `serve --config FILE` would load them.
//!
//! Exit code 0 when `serve` would load keys for this issuer (for every
//! issuer of the file), 1 when not.

use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Args;
use serde_json::{Value, json};

use super::table;
use crate::config::{parse_duration, validate_issuer};
use crate::keys::fetch::{Fetcher, check_key_url, discovery_url};
use crate::keys::jwk::{Algorithm, parse_jwks, truncate};
use crate::keys::{MAX_REFRESH, MIN_REFRESH, REFRESH_JITTER};

/// Flags of `check-issuer`.
#[derive(Debug, Clone, Args)]
#[deny(missing_docs)]
pub struct CheckIssuerArgs {
    /// The issuer (the Clerk Frontend API URL), or a publishable key to derive it from.
    #[arg(
        value_name = "URL",
        required_unless_present = "config",
        help = "The issuer: your Clerk Frontend API URL (https://clerk.<your-domain>, or https://<slug>.clerk.accounts.dev in development). A publishable key (pk_live_… / pk_test_…) works too: the issuer is derived from it."
    )]
    pub issuer: Option<String>,

    /// Fetch the keys from this JWKS URL instead of discovery (as jwks_uri in the config file).
    #[arg(long, value_name = "URL")]
    pub jwks_uri: Option<String>,

    /// Check every issuer of this config file instead, each with its own key source and refresh interval, as serve --config would load them (the environment applies as it does to serve).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["issuer", "jwks_uri", "refresh_interval"])]
    pub config: Option<std::path::PathBuf>,

    /// The refresh interval serve would use when the JWKS has no max-age (as --refresh-interval).
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub refresh_interval: Duration,

    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One usable key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    /// `kid`, if any.
    pub kid: Option<String>,
    /// `RSA`, `EC P-256`, ...
    pub key_type: &'static str,
    /// RSA modulus bits (0 otherwise).
    pub rsa_bits: usize,
    /// The JWK's own `alg`.
    pub alg: Option<String>,
    /// The JWK's `use`.
    pub use_: Option<String>,
    /// Algorithms it can verify.
    pub verifies: String,
}

/// What `check-issuer` found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The issuer checked.
    pub issuer: String,
    /// How the issuer was derived, when it was not given as a URL.
    pub derived_from: Option<String>,
    /// The discovery URL fetched (None when skipped).
    pub discovery_url: Option<String>,
    /// Whether discovery succeeded and named the issuer exactly.
    pub issuer_matches: Option<bool>,
    /// The JWKS URL.
    pub jwks_uri: Option<String>,
    /// The JWKS response's Cache-Control.
    pub cache_control: Option<String>,
    /// The refresh interval serve would derive.
    pub refresh_every: Option<Duration>,
    /// Usable keys.
    pub keys: Vec<KeyRow>,
    /// Skipped keys, with reasons.
    pub skipped: Vec<String>,
    /// Problems: serve would not load keys (exit 1).
    pub problems: Vec<String>,
    /// Things to check that do not stop serve.
    pub warnings: Vec<String>,
    /// Time taken by the fetches.
    pub elapsed: Duration,
    /// The keys are given in the config file (nothing fetched).
    pub static_keys: bool,
}

impl Report {
    /// Whether `serve` would load keys for this issuer.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The issuer a publishable key (`pk_test_…`/`pk_live_…`) encodes:
/// base64 of `<frontend-api-host>$`.
pub fn issuer_from_publishable_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix("pk_test_").or_else(|| key.strip_prefix("pk_live_"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(rest.trim()))
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let host = text.strip_suffix('$')?;
    (!host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c)))
        .then(|| format!("https://{host}"))
}

/// Runs the checks (network: discovery and JWKS, as `serve`) for the
/// issuer on the command line.
pub async fn check(args: &CheckIssuerArgs) -> Report {
    check_one(args.issuer.as_deref().unwrap_or_default(), args.jwks_uri.as_deref(), args.refresh_interval).await
}

/// Checks every issuer of the config file at `path`, as `serve --config`
/// loads it: each with its key source (discovery, `jwks_uri`, or static
/// keys, which are listed without any fetch) and its refresh interval.
pub async fn check_config(path: &std::path::Path) -> Result<Vec<Report>, crate::config::ConfigError> {
    use crate::config::{ConfigError, Loader};
    use crate::keys::KeySource;
    // The environment as serve reads it (say, INTROSPECT_REFRESH_INTERVAL).
    let env = super::serve::parse(std::iter::empty::<&str>())
        .map_err(|e| ConfigError::new("environment", e.to_string().trim_end().to_owned()))?
        .env;
    let config = Loader::for_file(path, env).load()?;
    let mut reports = Vec::with_capacity(config.issuers.len());
    for issuer in &config.issuers {
        reports.push(match &issuer.source {
            KeySource::Discovery => check_one(&issuer.issuer, None, issuer.refresh.interval).await,
            KeySource::JwksUri(uri) => check_one(&issuer.issuer, Some(uri), issuer.refresh.interval).await,
            KeySource::Static(keys) => static_report(&issuer.issuer, keys),
        });
    }
    Ok(reports)
}

/// The report of an issuer whose keys are in the config file (loading the
/// file already refused a key source without a usable key).
fn static_report(issuer: &str, keys: &[std::sync::Arc<crate::keys::jwk::VerificationKey>]) -> Report {
    let mut r = Report { issuer: issuer.to_owned(), static_keys: true, ..Report::default() };
    r.keys = keys.iter().map(|key| key_row(key, None)).collect();
    r.warnings.extend(without_rs256(keys.iter().map(|k| &**k)));
    r
}

/// The warning for a key set that cannot verify RS256, if it cannot.
fn without_rs256<'a>(mut keys: impl Iterator<Item = &'a crate::keys::jwk::VerificationKey>) -> Option<String> {
    (!keys.any(|k| k.supports(Algorithm::RS256)))
        .then(|| "no key can verify RS256, which Clerk signs session tokens with; is this a Clerk issuer?".to_owned())
}

fn key_row(key: &crate::keys::jwk::VerificationKey, use_: Option<String>) -> KeyRow {
    KeyRow {
        kid: key.kid().map(|k| truncate(k, 64)),
        key_type: key.family().as_str(),
        rsa_bits: key.rsa_bits(),
        alg: key.jwk_alg().map(|a| a.as_str().to_owned()),
        use_,
        verifies: key.algorithms().to_string(),
    }
}

async fn check_one(issuer: &str, jwks_uri: Option<&str>, refresh_interval: Duration) -> Report {
    let started = Instant::now();
    let mut r = Report::default();
    let given = issuer.trim();
    r.issuer = match issuer_from_publishable_key(given) {
        Some(issuer) => {
            r.derived_from = Some("the publishable key".to_owned());
            issuer
        }
        None => given.to_owned(),
    };
    if given.starts_with("sk_") {
        r.problems.push(
            "that is a secret key: never paste it anywhere; give the issuer (Frontend API URL) or the publishable key"
                .into(),
        );
        return r;
    }
    if let Err(problem) = validate_issuer(&r.issuer) {
        r.problems.push(problem);
        return r;
    }
    let host = r.issuer.parse::<http::Uri>().ok().and_then(|u| u.host().map(str::to_ascii_lowercase));
    if host.as_deref().is_some_and(|h| h.ends_with(".supabase.co") || h.ends_with(".supabase.in")) {
        r.problems.push(format!(
            "{} is a Supabase project, not a Clerk issuer: Clerk issues the tokens; give your Clerk Frontend API URL (https://clerk.<your-domain>)",
            r.issuer
        ));
        return r;
    }
    if r.issuer.contains("/.well-known/") || r.issuer.ends_with(".json") {
        r.problems.push(format!(
            "{} looks like a discovery or JWKS URL; give the issuer itself (the token's iss, e.g. https://clerk.example.com), and --jwks-uri for a JWKS URL",
            r.issuer
        ));
        return r;
    }
    if r.issuer.ends_with('/') {
        r.warnings.push(
            "the issuer ends with \"/\"; it is compared exactly with the tokens' iss, and Clerk's has no trailing slash"
                .into(),
        );
    }
    let fetcher = match Fetcher::new() {
        Ok(f) => f,
        Err(e) => {
            r.problems.push(format!("cannot build the HTTP client: {e}"));
            return r;
        }
    };
    let jwks_uri = match jwks_uri {
        Some(uri) => {
            if let Err(why) = check_key_url(uri) {
                r.problems.push(format!("jwks_uri {uri}: {why}"));
                return r;
            }
            uri.to_owned()
        }
        None => {
            r.discovery_url = Some(discovery_url(&r.issuer));
            match fetcher.discover(&r.issuer).await {
                Ok(uri) => {
                    r.issuer_matches = Some(true);
                    uri
                }
                Err(e) => {
                    if matches!(e, crate::keys::fetch::FetchError::IssuerMismatch { .. }) {
                        r.issuer_matches = Some(false);
                    }
                    r.problems.push(e.to_string());
                    r.elapsed = started.elapsed();
                    return r;
                }
            }
        }
    };
    r.jwks_uri = Some(jwks_uri.clone());
    let body = match fetcher.jwks(&jwks_uri).await {
        Ok(b) => b,
        Err(e) => {
            r.problems.push(e.to_string());
            r.elapsed = started.elapsed();
            return r;
        }
    };
    r.elapsed = started.elapsed();
    r.cache_control = body.cache_control.clone();
    let interval = body.max_age.map_or(refresh_interval, |age| age.clamp(MIN_REFRESH, MAX_REFRESH));
    r.refresh_every = Some(interval);
    match (&body.cache_control, body.max_age) {
        (None, _) | (Some(_), None) => r.warnings.push(format!(
            "the JWKS response has no Cache-Control max-age: serve refreshes every {} (--refresh-interval)",
            humantime::format_duration(refresh_interval)
        )),
        (Some(_), Some(age)) if age != interval => r.warnings.push(format!(
            "max-age {} s is outside 1 min..1 h: serve refreshes every {} instead",
            age.as_secs(),
            humantime::format_duration(interval)
        )),
        _ => {}
    }
    let parsed = match parse_jwks(&body.body, &[]) {
        Ok(p) => p,
        Err(e) => {
            r.problems.push(format!("JWKS at {jwks_uri}: {e}"));
            return r;
        }
    };
    let raw: Vec<Value> = serde_json::from_slice::<Value>(&body.body)
        .ok()
        .and_then(|v| v.get("keys").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    let member = |kid: Option<&str>, name: &str| {
        raw.iter()
            .find(|k| k.get("kid").and_then(Value::as_str) == kid)
            .and_then(|k| k.get(name))
            .and_then(Value::as_str)
            .map(|s| truncate(s, 32))
    };
    for key in &parsed.keys {
        r.keys.push(key_row(key, member(key.kid(), "use")));
        if key.kid().is_none() {
            r.warnings.push(
                "a key has no kid: tokens without a kid can be verified only while it is the only key for their algorithm"
                    .into(),
            );
        }
    }
    for s in &parsed.skipped {
        r.skipped.push(format!(
            "{}: {}",
            s.kid.as_deref().map_or("(no kid)".to_owned(), |k| format!("{k:?}")),
            s.reason
        ));
    }
    r.warnings.extend(without_rs256(parsed.keys.iter().map(|k| &**k)));
    r
}

/// The report as text.
pub fn render_text(r: &Report) -> String {
    let mut rows = vec![("issuer".to_owned(), r.issuer.clone())];
    if let Some(from) = &r.derived_from {
        rows.push(("derived from".to_owned(), from.clone()));
    }
    match (&r.discovery_url, r.issuer_matches) {
        (Some(url), Some(true)) => rows.push(("discovery".to_owned(), format!("{url}: issuer matches exactly"))),
        (Some(url), Some(false)) => rows.push(("discovery".to_owned(), format!("{url}: issuer DOES NOT match"))),
        (Some(url), None) => rows.push(("discovery".to_owned(), format!("{url}: failed"))),
        (None, _) if r.jwks_uri.is_some() => {
            rows.push(("discovery".to_owned(), "skipped (a fixed jwks_uri)".to_owned()))
        }
        (None, _) if r.static_keys => {
            rows.push(("keys".to_owned(), "from the config file (nothing fetched)".to_owned()))
        }
        (None, _) => {}
    }
    if let Some(uri) = &r.jwks_uri {
        rows.push(("jwks_uri".to_owned(), uri.clone()));
    }
    if r.jwks_uri.is_some() {
        rows.push(("cache-control".to_owned(), r.cache_control.clone().unwrap_or_else(|| "(none)".to_owned())));
    }
    if let Some(every) = r.refresh_every {
        rows.push((
            "serve refreshes".to_owned(),
            format!("every {} (±{:.0} %)", humantime::format_duration(every), REFRESH_JITTER * 100.0),
        ));
    }
    if !r.elapsed.is_zero() {
        rows.push(("fetched in".to_owned(), format!("{} ms", r.elapsed.as_millis())));
    }
    let mut out = table(&rows);
    if r.jwks_uri.is_some() || r.static_keys {
        out.push_str(&format!("\nkeys ({} usable)\n", r.keys.len()));
        for k in &r.keys {
            let bits = if k.rsa_bits > 0 { format!(" {} bit", k.rsa_bits) } else { String::new() };
            out.push_str(&format!(
                "  kid {}  {}{bits}  alg {}  use {}  verifies {}\n",
                k.kid.as_deref().unwrap_or("(none)"),
                k.key_type,
                k.alg.as_deref().unwrap_or("(none)"),
                k.use_.as_deref().unwrap_or("(none)"),
                k.verifies
            ));
        }
        if !r.skipped.is_empty() {
            out.push_str(&format!("\nskipped ({})\n", r.skipped.len()));
            for s in &r.skipped {
                out.push_str(&format!("  {s}\n"));
            }
        }
    }
    if !r.warnings.is_empty() {
        out.push_str("\nwarnings\n");
        for w in &r.warnings {
            out.push_str(&format!("  {w}\n"));
        }
    }
    out.push_str("\nproblems\n");
    if r.problems.is_empty() {
        out.push_str("  none: serve would load these keys\n");
    }
    for p in &r.problems {
        out.push_str(&format!("  {p}\n"));
    }
    out
}

/// The report as JSON.
pub fn render_json(r: &Report) -> String {
    serde_json::to_string_pretty(&json_value(r)).unwrap_or_default()
}

fn json_value(r: &Report) -> Value {
    let keys: Vec<Value> = r
        .keys
        .iter()
        .map(|k| {
            json!({"kid": k.kid, "type": k.key_type, "rsa_bits": (k.rsa_bits > 0).then_some(k.rsa_bits),
                "alg": k.alg, "use": k.use_, "verifies": k.verifies})
        })
        .collect();
    json!({
        "issuer": r.issuer,
        "derived_from": r.derived_from,
        "discovery_url": r.discovery_url,
        "issuer_matches": r.issuer_matches,
        "jwks_uri": r.jwks_uri,
        "cache_control": r.cache_control,
        "refresh_seconds": r.refresh_every.map(|d| d.as_secs()),
        "keys": keys,
        "skipped": r.skipped,
        "warnings": r.warnings,
        "problems": r.problems,
        "static_keys": r.static_keys,
        "ok": r.ok(),
    })
}

/// Runs the command: prints the report (or one per issuer of `--config`),
/// returns the exit code.
pub async fn run(args: &CheckIssuerArgs) -> u8 {
    if let Some(path) = &args.config {
        let reports = match check_config(path).await {
            Ok(reports) => reports,
            Err(e) => {
                eprintln!("clerk-introspect: invalid configuration: {e}");
                return 1;
            }
        };
        let ok = reports.iter().all(Report::ok);
        if args.json {
            let all: Vec<Value> = reports.iter().map(json_value).collect();
            let value = json!({"config": path.display().to_string(), "issuers": all, "ok": ok});
            println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        } else {
            for (i, report) in reports.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                println!(
                    "== issuer {} of {} ({}) ==",
                    i + 1,
                    reports.len(),
                    if report.ok() { "ok" } else { "PROBLEMS" }
                );
                print!("{}", render_text(report));
            }
        }
        return if ok { 0 } else { 1 };
    }
    let report = check(args).await;
    if args.json {
        println!("{}", render_json(&report));
    } else {
        print!("{}", render_text(&report));
    }
    if report.ok() { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishable_keys_name_their_issuer() {
        let key = format!(
            "pk_test_{}",
            base64::engine::general_purpose::STANDARD.encode("inspired-puma-74.clerk.accounts.dev$")
        );
        assert_eq!(issuer_from_publishable_key(&key).as_deref(), Some("https://inspired-puma-74.clerk.accounts.dev"));
        assert_eq!(issuer_from_publishable_key("pk_live_bm9kb2xsYXI="), None, "no $ terminator");
        assert_eq!(issuer_from_publishable_key("https://clerk.example.com"), None);
    }
}
