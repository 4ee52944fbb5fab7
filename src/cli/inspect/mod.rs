//! `clerk-introspect inspect TOKEN|-`: decodes a token locally, clearly
//! labelled UNVERIFIED (no key is fetched, the signature is not checked),
//! and flags the set-ups that break a Clerk → Supabase integration, each
//! with one line saying what to do. The signature is never printed.
//!
//! Exit code: 0 nothing wrong found, 1 at least one error-level finding (a
//! token the server would refuse whatever its signature), 2 not a token.

use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value, json};

use super::{approx, now_unix, read_token, rfc3339, table};
use crate::keys::fetch::is_loopback_host;
use crate::keys::jwk::{AlgClass, Algorithm, truncate};
use crate::verify::claims::{Claim, Claims};
use crate::verify::policy::effective_kind;
use crate::verify::rejection::{Rejection, is_supabase_auth_issuer};
use crate::verify::token::{self, TokenKind, category};

/// Clerk's SDKs' default clock skew, used for the clock findings.
pub const CLERK_DEFAULT_SKEW: Duration = Duration::from_secs(5);
/// The lifetime of a Clerk session token (`exp - iat`).
pub const CLERK_SESSION_LIFETIME_SECS: i64 = 60;
/// The most a `__session` cookie can hold.
pub const COOKIE_LIMIT_BYTES: usize = 4096;

/// Flags of `inspect`.
#[derive(Debug, Clone, Args)]
#[deny(missing_docs)]
pub struct InspectArgs {
    /// The token, or - to read it from stdin. A leading "Bearer " is accepted.
    #[arg(value_name = "TOKEN|-")]
    pub token: String,

    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The server refuses this token whatever its signature, or the set-up is wrong.
    Error,
    /// Likely a problem; check.
    Warning,
    /// Worth knowing.
    Note,
}

impl Level {
    /// `error`, `warning`, `note`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Note => "note",
        }
    }
}

/// One thing found, with what to do about it (one line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How serious.
    pub level: Level,
    /// A stable identifier, e.g. `shared-secret`, `no-role`.
    pub code: &'static str,
    /// One line: what is wrong and what to do.
    pub message: String,
}

/// What `inspect` found in a token.
#[derive(Clone, Debug)]
pub struct Report {
    /// The decoded header.
    pub header: Map<String, Value>,
    /// The decoded payload.
    pub payload: Map<String, Value>,
    /// Size of the signature (never shown).
    pub signature_bytes: usize,
    /// The token's size.
    pub token_bytes: usize,
    /// Its kind, from the header and subject.
    pub kind: TokenKind,
    /// The findings: errors, then warnings, then notes; within each, in
    /// pipeline order (header, issuer, kind, claims, time).
    pub findings: Vec<Finding>,
    /// The time the clock findings were computed against.
    pub now: i64,
}

impl Report {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Error)
    }

    /// The findings with `code` (for tests).
    pub fn find(&self, code: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.code == code)
    }
}

/// Decodes `raw` (an optional `Bearer ` prefix is accepted) and inspects it
/// at time `now`. `Err` when it is not a token at all (same bounds and
/// sentences as the server's `REASON_MALFORMED`).
pub fn inspect(raw: &str, now: i64) -> Result<Report, Rejection> {
    let t = token::strip_bearer(raw);
    let parts = token::decode_raw(t)?;
    let not_object = |what: &'static str| Rejection::new(crate::pb::Reason::Malformed, what);
    let header: Map<String, Value> = match serde_json::from_slice(&parts.header) {
        Ok(Value::Object(m)) => m,
        _ => return Err(not_object("The token's header is not a JSON object.")),
    };
    let payload: Map<String, Value> = match serde_json::from_slice(&parts.payload) {
        Ok(Value::Object(m)) => m,
        _ => return Err(not_object("The token's payload is not a JSON object.")),
    };
    let mut f = Findings::default();
    let claims = Claims::parse(&parts.payload);
    if claims.is_none() {
        f.error(
            "repeated-claim",
            "the payload repeats a claim name; the server refuses it as malformed (which copy would Supabase use?)",
        );
    }
    let claims = claims.unwrap_or_default();
    let str_of = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let typ = str_of(&header, "typ");
    let cat = str_of(&header, "cat");
    let kind = effective_kind(token::kind_from_header(typ.as_deref(), cat.as_deref()), &claims);

    header_findings(&mut f, &header, parts.signature_len, claims.iss.get().map(String::as_str));
    issuer_findings(&mut f, &claims);
    kind_findings(&mut f, kind, &claims, cat.as_deref(), typ.as_deref());
    claim_findings(&mut f, &claims, &payload, kind);
    time_findings(&mut f, &claims, now);
    if t.len() > COOKIE_LIMIT_BYTES {
        f.warning(
            "large-token",
            format!(
                "the token is {} bytes, more than a 4 KiB __session cookie holds; trim custom session claims (Clerk recommends under 1.2 KB)",
                t.len()
            ),
        );
    }
    // Errors first, then warnings, then notes; pipeline order within each.
    f.0.sort_by_key(|finding| finding.level);
    Ok(Report { header, payload, signature_bytes: parts.signature_len, token_bytes: t.len(), kind, findings: f.0, now })
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn push(&mut self, level: Level, code: &'static str, message: impl Into<String>) {
        self.0.push(Finding { level, code, message: message.into() });
    }
    fn error(&mut self, code: &'static str, message: impl Into<String>) {
        self.push(Level::Error, code, message);
    }
    fn warning(&mut self, code: &'static str, message: impl Into<String>) {
        self.push(Level::Warning, code, message);
    }
    fn note(&mut self, code: &'static str, message: impl Into<String>) {
        self.push(Level::Note, code, message);
    }
}

fn q(s: &str) -> String {
    format!("\"{}\"", truncate(s, 80))
}

fn header_findings(f: &mut Findings, header: &Map<String, Value>, signature_len: usize, iss: Option<&str>) {
    match header.get("alg") {
        Some(Value::String(alg)) => match Algorithm::classify(alg) {
            AlgClass::Symmetric => {
                let supabase = iss.is_some_and(is_supabase_issuer);
                f.error(
                    "shared-secret",
                    if supabase {
                        format!(
                            "alg {} is Supabase's legacy JWT secret (deprecated): with Clerk, Supabase never signs user tokens; send the Clerk session token and add Clerk under Supabase Third-Party Auth",
                            truncate(alg, 8)
                        )
                    } else {
                        format!(
                            "alg {} means a shared secret: the deprecated Clerk JWT-template + Supabase JWT-secret set-up; use Clerk's RS256 session token (enable Clerk's Supabase integration) and share no secret",
                            truncate(alg, 8)
                        )
                    },
                );
            }
            AlgClass::None => f.error("alg-none", "alg \"none\": the token is unsigned and is always refused"),
            AlgClass::Unknown => f.error(
                "alg-unknown",
                format!("alg {} is not one this service verifies (RS256/384/512, PS256/384/512, ES256/384, EdDSA)", q(alg)),
            ),
            AlgClass::Supported(Algorithm::RS256) => {}
            AlgClass::Supported(other) => f.note(
                "alg-not-rs256",
                format!("alg {other}: Clerk signs session tokens with RS256, so this token comes from another issuer; allow {other} for it explicitly"),
            ),
        },
        _ => f.error("no-alg", "the header has no string \"alg\"; the server refuses it as malformed"),
    }
    match header.get("kid") {
        Some(Value::String(_)) => {}
        Some(_) => f.error("bad-kid", "the header's \"kid\" is not a string; the server refuses it as malformed"),
        None => f.error(
            "no-kid",
            "no \"kid\" in the header: Supabase requires one, and Clerk session tokens always carry the instance id (ins_…); this token is not a Clerk session token",
        ),
    }
    if header.contains_key("crit") {
        f.error("crit", "the header has \"crit\": extensions this service does not implement, so the token is refused (RFC 7515 §4.1.11)");
    }
    let key_params: Vec<&str> = ["jku", "x5u", "jwk", "x5c"].into_iter().filter(|k| header.contains_key(*k)).collect();
    if !key_params.is_empty() {
        f.warning(
            "header-key",
            format!(
                "the header names a key ({}): it is never used; keys come only from the configured issuer (a token that brings its own key proves nothing)",
                key_params.join(", ")
            ),
        );
    }
    if signature_len == 0 {
        f.error("no-signature", "the token has no signature: it is unsigned and always refused");
    }
}

/// A Supabase-hosted issuer (Supabase Auth, or any *.supabase.co URL).
fn is_supabase_issuer(iss: &str) -> bool {
    if is_supabase_auth_issuer(iss) {
        return true;
    }
    host_of(iss).is_some_and(|h| h.ends_with(".supabase.co") || h.ends_with(".supabase.in"))
}

fn host_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    uri.host().map(str::to_ascii_lowercase)
}

/// Whether the host looks like a Clerk Frontend API.
fn looks_like_clerk(host: &str) -> bool {
    host.starts_with("clerk.")
        || host.ends_with(".clerk.accounts.dev")
        || host.ends_with(".lcl.dev")
        || host.ends_with(".lclclerk.com")
}

fn issuer_findings(f: &mut Findings, claims: &Claims) {
    let iss = match &claims.iss {
        Claim::Present(iss) => iss,
        Claim::Absent => {
            f.error(
                "no-iss",
                "no \"iss\" claim: the issuer cannot be trusted; a Clerk session token names its Frontend API URL",
            );
            return;
        }
        Claim::WrongType => {
            f.error("no-iss", "the \"iss\" claim is not a string, so the issuer cannot be trusted");
            return;
        }
    };
    if is_supabase_issuer(iss) {
        f.error(
            "supabase-issuer",
            format!(
                "the issuer {} is a Supabase project: this token was minted by Supabase Auth, not Clerk; with Clerk, send the Clerk session token (getToken()) and let Supabase verify it through Third-Party Auth",
                q(iss)
            ),
        );
        return;
    }
    let Ok(uri) = iss.parse::<http::Uri>() else {
        f.error(
            "iss-not-url",
            format!("the issuer {} is not a URL; a Clerk issuer is https://clerk.<your-domain>", q(iss)),
        );
        return;
    };
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback_host(&host) => {}
        _ => f.error(
            "iss-not-https",
            format!("the issuer {} is not https; Supabase and this service trust https issuers only (http only on loopback)", q(iss)),
        ),
    }
    if iss.ends_with('/') {
        f.warning(
            "iss-trailing-slash",
            "the issuer ends with \"/\"; issuers are compared exactly, so configure it with the slash, exactly as here",
        );
    }
    if !looks_like_clerk(&host) && !is_loopback_host(&host) {
        f.note(
            "iss-not-clerk",
            format!(
                "the issuer host {} does not look like a Clerk Frontend API (clerk.<domain> or <slug>.clerk.accounts.dev); fine for a proxy or satellite domain, but it must be configured exactly",
                q(&host)
            ),
        );
    }
    f.note(
        "configure-issuer",
        format!(
            "serve must trust exactly {}; check it with: clerk-introspect check-issuer {}",
            q(iss),
            truncate(iss, 200)
        ),
    );
}

fn kind_findings(f: &mut Findings, kind: TokenKind, claims: &Claims, cat: Option<&str>, typ: Option<&str>) {
    match kind {
        TokenKind::Session => {}
        TokenKind::JwtTemplate => f.error(
            "jwt-template",
            "a Clerk JWT-template token (cat cl_B7d4PD222AAA), not a session token: templates, including the deprecated Supabase template, are not accepted; call getToken() without a template and enable Clerk's Supabase integration",
        ),
        TokenKind::Machine => f.error(
            "machine-token",
            if cat == Some(category::MACHINE) {
                "a Clerk machine (M2M) token (cat cl_B7d4PD333AAA), not a user session: refused unless the issuer accepts the machine kind (token_kinds)"
            } else {
                "a Clerk machine (M2M) token (sub mch_…), not a user session: refused unless the issuer accepts the machine kind (token_kinds)"
            },
        ),
        TokenKind::OAuth => f.error(
            "oauth-token",
            "an OAuth access token (typ at+jwt), not a Clerk session token: refused unless the issuer accepts the oauth kind (token_kinds)",
        ),
        TokenKind::Unrecognized => f.error(
            "unrecognized-kind",
            format!(
                "the header's typ {} / cat {} is not one Clerk uses for session tokens, so the token is refused",
                typ.map_or("(none)".to_owned(), q),
                cat.map_or("(none)".to_owned(), q)
            ),
        ),
    }
    if kind == TokenKind::Session && claims.sid.is_none() {
        f.warning(
            "no-sid",
            "no \"sid\" claim: Clerk session tokens always carry the session id (sess_…), so this is a JWT-template or hand-made token",
        );
    }
}

fn claim_findings(f: &mut Findings, claims: &Claims, payload: &Map<String, Value>, kind: TokenKind) {
    match &claims.sub {
        Claim::Present(sub) if sub.is_empty() => {
            f.error("no-sub", "the \"sub\" claim is empty; it must name the Clerk user")
        }
        Claim::Present(_) => {}
        Claim::Absent => f.error("no-sub", "no \"sub\" claim: the server requires the user id"),
        Claim::WrongType => f.error("no-sub", "the \"sub\" claim is not a string"),
    }
    match &claims.role {
        Claim::Present(role) if role == "authenticated" => {}
        Claim::Present(role) if role == "service_role" => f.error(
            "service-role",
            "role \"service_role\" bypasses Row Level Security: never put it in a user's token; Clerk session tokens should say \"authenticated\"",
        ),
        Claim::Present(role) if role == "anon" => f.warning(
            "role-anon",
            "role \"anon\": Supabase treats the request as signed out; Clerk's Supabase integration sets \"authenticated\"",
        ),
        Claim::Present(role) => f.note(
            "role-custom",
            format!("role {}: allowed only if the server's roles list it, and the Postgres role must exist", q(role)),
        ),
        Claim::Absent => f.error(
            "no-role",
            "no \"role\" claim: PostgREST would silently run the request as anon; enable Clerk's Supabase integration (or add \"role\": \"authenticated\" to the session token)",
        ),
        Claim::WrongType => f.error("no-role", "the \"role\" claim is not a string, so it cannot name a Postgres role"),
    }
    if kind == TokenKind::Session {
        match payload.get("v") {
            Some(v) if v.as_i64() == Some(2) => {}
            Some(v) => f.note("claims-version", format!("session token version {v}: this report knows versions 1 and 2")),
            None => f.warning(
                "v1-claims",
                "no \"v\" claim: a version 1 session token (deprecated since 2025-04-14); switch the instance to v2 in Clerk's dashboard, and read organizations from \"o\" (o.id, o.rol, o.slg) as well as org_id/org_role/org_slug in RLS",
            ),
        }
    }
    match &claims.azp {
        Claim::Absent => f.warning(
            "no-azp",
            "no \"azp\" claim: Clerk omits it when the token was minted without an Origin (server-side, top-level navigation); an issuer with require_azp or authorized parties refuses it",
        ),
        Claim::WrongType => f.error("azp-type", "the \"azp\" claim is not a string; the server refuses it"),
        Claim::Present(_) => {}
    }
    match &claims.aud {
        Claim::WrongType => f.error("aud-type", "the \"aud\" claim is neither a string nor an array of strings"),
        Claim::Present(aud) if kind == TokenKind::Session => f.note(
            "has-aud",
            format!("aud {}: Clerk session tokens carry aud only when it is added to their claims; the server checks it only if audiences are configured", aud.iter().take(3).map(|a| q(a)).collect::<Vec<_>>().join(", ")),
        ),
        _ => {}
    }
    if let Claim::Present(sts) = &claims.sts
        && sts == "pending"
    {
        f.warning(
            "pending-session",
            "sts \"pending\": the session is not complete (e.g. an organization must be chosen); Clerk treats it as signed out, and the server refuses it unless accept_pending_sessions is on",
        );
    }
    if let Some(act) = payload.get("act") {
        let by = act.get("sub").and_then(Value::as_str).map_or("someone".to_owned(), q);
        f.note(
            "impersonation",
            format!("\"act\": this session is an impersonation by {by}; the identity is the impersonated user"),
        );
    }
}

fn time_findings(f: &mut Findings, claims: &Claims, now: i64) {
    let skew = i64::try_from(CLERK_DEFAULT_SKEW.as_secs()).unwrap_or(5);
    let exp = match claims.exp {
        Claim::Present(exp) => Some(exp),
        Claim::Absent => {
            f.error("no-exp", "no \"exp\" claim: a token must expire, and the server requires it");
            None
        }
        Claim::WrongType => {
            f.error("no-exp", "the \"exp\" claim is not a number (seconds since 1970)");
            None
        }
    };
    let iat = claims.iat.get().copied();
    let nbf = claims.nbf.get().copied();
    if let Some(exp) = exp {
        if now >= exp {
            f.error(
                "expired",
                format!(
                    "expired {} ago ({}); a Clerk session token lives 60 s, so get a fresh one (getToken()) for every request, never store it",
                    approx(now.saturating_sub(exp).unsigned_abs()),
                    rfc3339(exp)
                ),
            );
        } else {
            f.note(
                "expires",
                format!("valid for another {} (until {})", approx((exp - now).unsigned_abs()), rfc3339(exp)),
            );
        }
    }
    for (name, value) in [("nbf", nbf), ("iat", iat)] {
        if let Some(t) = value
            && t > now.saturating_add(skew)
        {
            f.error(
                "not-yet-valid",
                format!(
                    "\"{name}\" is {} in the future ({}), beyond Clerk's 5 s default skew: this host's clock or the issuer's is wrong; sync it (NTP, or restart WSL)",
                    approx((t - now).unsigned_abs()),
                    rfc3339(t)
                ),
            );
        }
    }
    if let (Some(exp), Some(iat)) = (exp, iat) {
        let lifetime = exp.saturating_sub(iat);
        if lifetime > CLERK_SESSION_LIFETIME_SECS && from_loopback_issuer(claims) {
            // A loopback issuer is a test issuer (the demo's, or a test's):
            // the demo's token lives 10 minutes so that there is time to
            // paste it. Not a mistake to warn about, but worth saying.
            f.note(
                "lifetime",
                format!(
                    "lifetime {} (exp - iat), from a loopback test issuer (the demo's token lives 10 min, time to paste it); Clerk session tokens live 60 s",
                    approx(lifetime.unsigned_abs())
                ),
            );
        } else if lifetime > CLERK_SESSION_LIFETIME_SECS {
            f.warning(
                "lifetime",
                format!(
                    "lifetime {} (exp - iat) is longer than a Clerk session token's 60 s: a JWT template or another issuer's token; Supabase Realtime and long-lived clients must refresh tokens, not extend them",
                    approx(lifetime.unsigned_abs())
                ),
            );
        } else if lifetime <= 0 {
            f.error("lifetime", "exp is not after iat: the token was never valid");
        } else {
            f.note("lifetime", format!("lifetime {lifetime} s (exp - iat); Clerk session tokens live 60 s"));
        }
    }
}

/// Whether the token names an issuer on a loopback host (a test issuer:
/// the server trusts `http` issuers only there).
fn from_loopback_issuer(claims: &Claims) -> bool {
    claims.iss.get().and_then(|iss| host_of(iss)).is_some_and(|host| is_loopback_host(&host))
}

/// The report as text: the UNVERIFIED banner, header, payload (never the
/// signature), times, findings.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    out.push_str("UNVERIFIED: decoded locally; the signature was NOT checked and no key was fetched.\n");
    out.push_str("For a verdict, ask the server: clerk-introspect verify --addr HOST:PORT -\n\n");
    let pretty = |m: &Map<String, Value>| serde_json::to_string_pretty(m).unwrap_or_default();
    out.push_str("header\n");
    out.push_str(&indent(&pretty(&report.header)));
    out.push_str("payload\n");
    out.push_str(&indent(&pretty(&report.payload)));
    let mut rows = vec![
        ("signature".to_owned(), format!("{} bytes (not shown)", report.signature_bytes)),
        ("kind".to_owned(), kind_name(report.kind).to_owned()),
    ];
    for name in ["iat", "nbf", "exp"] {
        if let Some(t) = report.payload.get(name).and_then(Value::as_f64) {
            let t = t.floor() as i64;
            let rel = if t <= report.now {
                format!("{} ago", approx((report.now - t).unsigned_abs()))
            } else {
                format!("in {}", approx((t - report.now).unsigned_abs()))
            };
            rows.push((name.to_owned(), format!("{}  ({rel})", rfc3339(t))));
        }
    }
    rows.push(("now".to_owned(), rfc3339(report.now)));
    out.push('\n');
    out.push_str(&table(&rows));
    out.push_str("\nfindings\n");
    if report.findings.is_empty() {
        out.push_str("  nothing wrong found (this says nothing about the signature)\n");
    }
    for f in &report.findings {
        let label = match f.level {
            Level::Error => "ERROR",
            Level::Warning => "WARN ",
            Level::Note => "NOTE ",
        };
        out.push_str(&format!("  {label} {}: {}\n", f.code, f.message));
    }
    out
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

fn kind_name(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Session => "session token",
        TokenKind::JwtTemplate => "JWT-template token",
        TokenKind::Machine => "machine (M2M) token",
        TokenKind::OAuth => "OAuth access token",
        TokenKind::Unrecognized => "unrecognized",
    }
}

/// The report as JSON.
pub fn render_json(report: &Report) -> String {
    let findings: Vec<Value> = report
        .findings
        .iter()
        .map(|f| json!({"level": f.level.as_str(), "code": f.code, "message": f.message}))
        .collect();
    let value = json!({
        "unverified": true,
        "header": report.header,
        "payload": report.payload,
        "signature_bytes": report.signature_bytes,
        "kind": report.kind.as_str(),
        "now": report.now,
        "findings": findings,
    });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// Runs the command: prints the report, returns the exit code.
pub fn run(args: &InspectArgs) -> u8 {
    let token = match read_token(&args.token) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("clerk-introspect inspect: {e}");
            return 2;
        }
    };
    match inspect(&token, now_unix()) {
        Ok(report) => {
            if args.json {
                println!("{}", render_json(&report));
            } else {
                print!("{}", render_text(&report));
            }
            if report.has_errors() { 1 } else { 0 }
        }
        Err(rejection) => {
            eprintln!("clerk-introspect inspect: not a token: {}", rejection.message);
            2
        }
    }
}

#[cfg(test)]
mod tests;
