//! [`validate()`]: merges the layers and turns them into a [`Config`]. Every
//! rule on a setting, and its message, is here and only here; an error
//! names the value at fault by where it was given ([`Origin`]).

use std::sync::Arc;
use std::time::Duration;

use super::authz::{AuthzConfig, AuthzSettings, IdentityField, MAX_CLAIM_HEADERS, MAX_NAME};
use super::error::ConfigError;
use super::file::{FileLayers, IssuerTable, read_text};
use super::settings::{Layer, MetricsListen, Origin, Setting, Sourced};
use super::{
    Config, ConnectionSettings, IssuerConfig, MAX_CLOCK_SKEW_SECS, MAX_MAX_CALLS, MAX_MAX_CONNECTIONS,
    MAX_MAX_REQUEST_BYTES, MAX_TOKEN_CACHE_SIZE, MAX_WEBHOOK_BODY_BYTES, MAX_WEBHOOK_SECRET_FILE_BYTES,
    MIN_MAX_REQUEST_BYTES, MIN_REFRESH_INTERVAL, MIN_UNKNOWN_KID_COOLDOWN, MIN_WATCH_INTERVAL, MIN_WEBHOOK_BODY_BYTES,
    RevocationConfig, Secret, StoreUrl, WebhookConfig,
};
use crate::keys::fetch::{MAX_BODY_BYTES, check_key_url, is_loopback_host};
use crate::keys::jwk::{self, AlgorithmSet, VerificationKey};
use crate::keys::{KeySource, RefreshSettings};
use crate::tls::{self, TlsFiles};
use crate::verify::{Policy, TokenKinds};
use crate::webhook::svix::{MAX_SECRETS, SigningSecret};

/// Largest `public_key_file` read (a PEM public key is 0.5 to 1.5 KiB).
pub const MAX_PUBLIC_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Merges `defaults` < `env` < `file` < `command_line` and validates the
/// result into a [`Config`].
pub fn validate(
    defaults: &Layer,
    env: &Layer,
    file: Option<&FileLayers>,
    command_line: &Layer,
) -> Result<Config, ConfigError> {
    let mut server = defaults.clone();
    server.overlay(env);
    if let Some(file) = file {
        server.overlay(&file.server);
    }
    server.overlay(command_line);

    let issuers = match file {
        None => issuers_from_flags(&server)?,
        Some(file) => {
            if let Some(given) = &command_line.issuers {
                return Err(given.error(
                    "with --config the issuers come from the file; list each one there as an [[issuers]] table (or drop --config)",
                ));
            }
            let mut issuers: Vec<(IssuerConfig, usize)> = Vec::with_capacity(file.issuers.len());
            for table in &file.issuers {
                let mut layer = defaults.clone();
                layer.overlay(env);
                layer.overlay(&table.layer);
                layer.overlay(command_line);
                let issuer = issuer_from_file(table, &layer)?;
                if let Some((_, first)) = issuers.iter().find(|(c, _)| c.issuer == issuer.issuer) {
                    let given =
                        table.layer.issuer.as_ref().map_or(Origin::File(table.at.clone()), |i| i.origin.clone());
                    return Err(given.error(format!(
                        "{} is already configured at line {first}; list each issuer once",
                        issuer.issuer
                    )));
                }
                issuers.push((issuer, table.line));
            }
            if issuers.is_empty() {
                return Err(ConfigError::new(
                    file.path.display().to_string(),
                    "the config file lists no issuer; add an [[issuers]] table with issuer = \"https://clerk.<your-domain>\"",
                ));
            }
            issuers.into_iter().map(|(c, _)| c).collect()
        }
    };

    server_config(&server, issuers)
}

/// The server-level part of the configuration, around `issuers`.
fn server_config(server: &Layer, issuers: Vec<IssuerConfig>) -> Result<Config, ConfigError> {
    Ok(Config {
        issuers,
        listen: value(&server.listen, Setting::Listen)?,
        shutdown_grace: value(&server.shutdown_grace, Setting::ShutdownGrace)?,
        watch_interval: watch_interval(server)?,
        tls: tls_files(server)?,
        connections: connection_settings(server)?,
        token_cache_size: token_cache_size(server)?,
        authz: authz(server)?,
        metrics_listen: value(&server.metrics_listen, Setting::MetricsListenAddr)?,
        webhook: webhook(server)?,
        revocation: revocation(server)?,
    })
}

/// Largest `--revocation-store-password-file` read.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;
/// Shortest `--revocation-retention` (a session token lives 60 s).
pub const MIN_REVOCATION_RETENTION: Duration = Duration::from_secs(60);
/// Longest `--revocation-retention`.
pub const MAX_REVOCATION_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest `--revocation-max-entries`.
pub const MAX_REVOCATION_MAX_ENTRIES: usize = 100_000_000;

/// Revocation: the store URL (redis:// or rediss://), its password, the
/// retention, the bound and the readiness policy.
fn revocation(server: &Layer) -> Result<RevocationConfig, ConfigError> {
    let store = match &server.revocation_store {
        None => None,
        Some(given) => {
            let url = given.value.trim();
            let address = crate::revocation::store::redis::check_url(url).map_err(|e| given.error(e.to_string()))?;
            Some(StoreUrl { url: url.to_owned(), address })
        }
    };
    let password = match (&server.revocation_store_password, &server.revocation_store_password_file) {
        (Some(_), Some(file)) => {
            return Err(file.error(
                "give the Redis password once: INTROSPECT_REVOCATION_STORE_PASSWORD or --revocation-store-password-file",
            ));
        }
        (Some(p), None) => Some(Secret(p.value.trim().to_owned())),
        (None, Some(file)) => {
            let text = read_text(&file.value, MAX_PASSWORD_FILE_BYTES).map_err(|p| file.error(p))?;
            Some(Secret(text.trim().to_owned()))
        }
        (None, None) => None,
    };
    if let Some(p) = &password
        && p.0.is_empty()
    {
        let origin = server
            .revocation_store_password_file
            .as_ref()
            .map(|f| f.origin.clone())
            .or_else(|| server.revocation_store_password.as_ref().map(|p| p.origin.clone()))
            .unwrap_or(Origin::Default(Setting::RevocationStorePassword));
        return Err(origin.error("the Redis password is empty"));
    }
    if store.is_none() {
        let orphan = [
            (Setting::RevocationStorePassword, server.revocation_store_password.as_ref().map(|s| &s.origin)),
            (Setting::RevocationStorePasswordFile, server.revocation_store_password_file.as_ref().map(|s| &s.origin)),
        ];
        for (_, origin) in orphan {
            if let Some(origin) = origin {
                return Err(origin.error("a Redis password without --revocation-store; give the store's URL too"));
            }
        }
    }
    let retention = sourced(&server.revocation_retention, Setting::RevocationRetention)?;
    if retention.value < MIN_REVOCATION_RETENTION || retention.value > MAX_REVOCATION_RETENTION {
        return Err(retention.error(
            "must be from 1m to 30 days: at least the longest life of a token this server accepts (session tokens: 60 s)",
        ));
    }
    let max_entries = sourced(&server.revocation_max_entries, Setting::RevocationMaxEntries)?;
    in_range(max_entries, 1, MAX_REVOCATION_MAX_ENTRIES, Setting::RevocationMaxEntries)?;
    let required = sourced(&server.revocation_store_required, Setting::RevocationStoreRequired)?;
    if required.value && store.is_none() {
        return Err(required
            .error("requires a shared store (--revocation-store redis://...); the in-process store cannot be down"));
    }
    let limit = sourced(&server.revocation_store_outage_limit, Setting::RevocationStoreOutageLimit)?;
    if limit.value < Duration::from_secs(1) {
        return Err(limit.error(format!(
            "must be at least 1s (the default is {})",
            default_of(Setting::RevocationStoreOutageLimit)
        )));
    }
    Ok(RevocationConfig {
        store,
        password,
        settings: crate::revocation::service::Settings {
            retention: retention.value,
            max_entries: max_entries.value,
            store_required: required.value,
            outage_limit: limit.value,
        },
    })
}

/// The webhook endpoint: where it listens (not where gRPC or metrics do),
/// its signing secrets (at least one when it listens; each `whsec_` and
/// base64; errors never quote a secret), its body cap.
fn webhook(server: &Layer) -> Result<WebhookConfig, ConfigError> {
    let listen_given = sourced(&server.webhook_listen, Setting::WebhookListenAddr)?;
    let listen = match listen_given.value {
        MetricsListen::Off => None,
        MetricsListen::Addr(addr) => Some(addr),
    };
    if let Some(addr) = listen {
        let listen_grpc = value(&server.listen, Setting::Listen)?;
        let metrics = value(&server.metrics_listen, Setting::MetricsListenAddr)?;
        let clash = |other: std::net::SocketAddr| {
            other.port() == addr.port()
                && other.port() != 0
                && (other.ip() == addr.ip() || other.ip().is_unspecified() || addr.ip().is_unspecified())
        };
        if clash(listen_grpc) {
            return Err(listen_given.error(format!(
                "{addr} is the gRPC listener's address (--listen); give the webhook endpoint its own port"
            )));
        }
        if let MetricsListen::Addr(m) = metrics
            && clash(m)
        {
            return Err(listen_given.error(format!(
                "{addr} is the metrics port's address (--metrics-listen); the webhook endpoint faces the internet and needs its own port"
            )));
        }
    }

    let mut signing_secrets = Vec::new();
    if let Some(given) = &server.webhook_signing_secrets {
        let items: Vec<&str> = given.value.0.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
        for (i, item) in items.iter().enumerate() {
            let secret = SigningSecret::parse(item)
                .map_err(|e| given.error(format!("signing secret {} of {}: {e}", i + 1, items.len())))?;
            signing_secrets.push(secret);
        }
    }
    if let Some(file) = &server.webhook_signing_secret_file {
        let path = &file.value;
        let text = read_text(path, MAX_WEBHOOK_SECRET_FILE_BYTES).map_err(|p| file.error(p))?;
        let before = signing_secrets.len();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let secret = SigningSecret::parse(line)
                .map_err(|e| file.error(format!("{} line {}: {e}", path.display(), n + 1)))?;
            signing_secrets.push(secret);
        }
        if signing_secrets.len() == before {
            return Err(file.error(format!("{} holds no signing secret (one whsec_… per line)", path.display())));
        }
    }
    if signing_secrets.len() > MAX_SECRETS {
        return Err(ConfigError::new(
            Setting::WebhookSigningSecrets.flag_name(),
            format!("{} signing secrets; at most {MAX_SECRETS} (two are enough to rotate)", signing_secrets.len()),
        ));
    }
    if listen.is_some() && signing_secrets.is_empty() {
        return Err(listen_given.error(
            "the webhook endpoint needs its signing secret: pass --webhook-signing-secret-file FILE or --webhook-signing-secret (or set CLERK_WEBHOOK_SIGNING_SECRET), the endpoint's Signing Secret from the Clerk dashboard",
        ));
    }

    let cap = sourced(&server.webhook_max_body_bytes, Setting::WebhookMaxBodyBytes)?;
    if !(MIN_WEBHOOK_BODY_BYTES..=MAX_WEBHOOK_BODY_BYTES).contains(&cap.value.0) {
        return Err(cap.error(format!(
            "{} bytes is outside 1KiB..16MiB; the default is {}",
            cap.value.0,
            default_of(Setting::WebhookMaxBodyBytes)
        )));
    }
    Ok(WebhookConfig { listen, signing_secrets, max_body_bytes: cap.value.0 })
}

/// A setting that has a default, so is always set once the defaults are in.
fn sourced<T>(v: &Option<Sourced<T>>, setting: Setting) -> Result<&Sourced<T>, ConfigError> {
    v.as_ref().ok_or_else(|| ConfigError::new(setting.flag_name(), "has no value (and no default)"))
}

fn value<T: Clone>(v: &Option<Sourced<T>>, setting: Setting) -> Result<T, ConfigError> {
    sourced(v, setting).map(|s| s.value.clone())
}

/// "the default is X", from the settings table.
fn default_of(setting: Setting) -> &'static str {
    setting.meta().default.unwrap_or("none")
}

fn issuers_from_flags(server: &Layer) -> Result<Vec<IssuerConfig>, ConfigError> {
    let given = match &server.issuers {
        Some(list) if !list.value.is_empty() => list,
        _ => {
            return Err(ConfigError::new(
                Setting::Issuers.flag_name(),
                "no issuer configured; pass --issuer https://<your Clerk Frontend API host> (or set CLERK_ISSUER)",
            ));
        }
    };
    let policy = policy(server)?;
    let refresh = refresh(server)?;
    let mut issuers: Vec<IssuerConfig> = Vec::with_capacity(given.value.len());
    for raw in &given.value {
        let issuer = raw.trim().to_owned();
        validate_issuer(&issuer).map_err(|p| given.error(p))?;
        if issuers.iter().any(|i| i.issuer == issuer) {
            return Err(given.error(format!("{issuer} is already configured; list each issuer once")));
        }
        issuers.push(IssuerConfig { issuer, source: KeySource::Discovery, policy: policy.clone(), refresh });
    }
    Ok(issuers)
}

fn issuer_from_file(table: &IssuerTable, layer: &Layer) -> Result<IssuerConfig, ConfigError> {
    let Some(given) = &table.layer.issuer else {
        return Err(ConfigError::new(table.at.clone(), "missing field `issuer`"));
    };
    let issuer = given.value.trim().to_owned();
    validate_issuer(&issuer).map_err(|p| given.error(p))?;
    Ok(IssuerConfig { issuer, source: key_source(&table.layer)?, policy: policy(layer)?, refresh: refresh(layer)? })
}

/// Checks an issuer URL: https (http only on a loopback host), a host, no
/// query or fragment.
pub fn validate_issuer(issuer: &str) -> Result<(), String> {
    let uri: http::Uri =
        issuer.parse().map_err(|_| format!("{issuer:?} is not a URL; use e.g. https://clerk.example.com"))?;
    let host = uri.host().ok_or_else(|| format!("{issuer:?} has no host; use e.g. https://clerk.example.com"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback_host(host) => {}
        Some("http") => {
            return Err(format!(
                "{issuer} uses plain http, which is allowed only on a loopback host (127.0.0.0/8, ::1, localhost); use https://{}",
                uri.authority().map_or(host, |a| a.as_str())
            ));
        }
        _ => return Err(format!("{issuer:?} must start with https://")),
    }
    if uri.query().is_some() || issuer.contains('#') {
        return Err(format!("{issuer} has a query or fragment; an issuer identifier has neither"));
    }
    check_key_url(issuer).map_err(|why| format!("{issuer}: {why}"))?;
    Ok(())
}

/// Checks that each authorized party that looks like a URL is an origin:
/// Clerk copies the browser's `Origin` header (scheme, host and port; no
/// path, no trailing slash) into `azp`, so `https://app.example.com/` could
/// never match. Returns the problem, for the caller to place.
pub fn check_origins(values: &[String]) -> Result<(), String> {
    for v in values {
        if let Some((scheme, rest)) = v.split_once("://")
            && let Some(slash) = rest.find('/')
        {
            let origin = format!("{scheme}://{}", &rest[..slash]);
            return Err(format!(
                "{v:?} is not an origin: Clerk sets azp to the browser's Origin (scheme://host[:port], no path or trailing slash), so it could never match; use {origin:?}"
            ));
        }
    }
    Ok(())
}

/// A list whose items are trimmed and none empty.
fn non_empty_items(list: &Sourced<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    list.value
        .iter()
        .map(|v| {
            let v = v.trim();
            if v.is_empty() {
                Err(list.error("an empty value was given; remove it (or the stray comma)"))
            } else {
                Ok(v.to_owned())
            }
        })
        .collect()
}

fn optional_list(v: &Option<Sourced<Vec<String>>>) -> Result<Vec<String>, ConfigError> {
    v.as_ref().map_or(Ok(Vec::new()), non_empty_items)
}

fn policy(layer: &Layer) -> Result<Policy, ConfigError> {
    let roles_given = sourced(&layer.roles, Setting::Roles)?;
    let roles = non_empty_items(roles_given)?;
    if roles.is_empty() {
        return Err(roles_given.error("at least one role must be allowed (usually authenticated)"));
    }
    let skew = sourced(&layer.clock_skew, Setting::ClockSkew)?;
    if skew.value.0.subsec_nanos() != 0 {
        return Err(skew.error("must be a whole number of seconds"));
    }
    if skew.value.0.as_secs() > MAX_CLOCK_SKEW_SECS {
        return Err(skew.error(format!(
            "{} s is more than the {MAX_CLOCK_SKEW_SECS} s allowed; Clerk session tokens live 60 s, so fix the host clock (NTP) instead",
            skew.value.0.as_secs()
        )));
    }
    let algorithms_given = sourced(&layer.algorithms, Setting::Algorithms)?;
    if algorithms_given.value.is_empty() {
        return Err(algorithms_given.error("at least one algorithm must be allowed (Clerk signs with RS256)"));
    }
    let algorithms: AlgorithmSet = algorithms_given.value.iter().copied().collect();
    let kinds = sourced(&layer.token_kinds, Setting::TokenKinds)?;
    if kinds.value == TokenKinds::empty() {
        return Err(kinds.error("at least one token kind must be accepted (usually session)"));
    }
    let authorized_parties = optional_list(&layer.authorized_parties)?;
    if let Err(problem) = check_origins(&authorized_parties)
        && let Some(given) = &layer.authorized_parties
    {
        return Err(given.error(problem));
    }
    Ok(Policy {
        algorithms,
        audiences: optional_list(&layer.audiences)?,
        authorized_parties,
        require_azp: value(&layer.require_azp, Setting::RequireAzp)?,
        roles,
        token_kinds: kinds.value,
        accept_pending_sessions: value(&layer.accept_pending_sessions, Setting::AcceptPendingSessions)?,
        clock_skew: skew.value.0,
    })
}

fn refresh(layer: &Layer) -> Result<RefreshSettings, ConfigError> {
    let interval = sourced(&layer.refresh_interval, Setting::RefreshInterval)?;
    if interval.value < MIN_REFRESH_INTERVAL {
        return Err(
            interval.error(format!("must be at least 10s (the default is {})", default_of(Setting::RefreshInterval)))
        );
    }
    let cooldown = sourced(&layer.unknown_kid_cooldown, Setting::UnknownKidCooldown)?;
    if cooldown.value < MIN_UNKNOWN_KID_COOLDOWN {
        return Err(cooldown.error(
            "must be at least 1s, or a flood of tokens with random kids becomes a flood of requests to the issuer",
        ));
    }
    let staleness = sourced(&layer.max_key_staleness, Setting::MaxKeyStaleness)?;
    if staleness.value < interval.value {
        return Err(staleness.error("must be at least the refresh interval, or keys go stale between two refreshes"));
    }
    Ok(RefreshSettings {
        interval: interval.value,
        unknown_kid_cooldown: cooldown.value,
        max_staleness: staleness.value,
        ..RefreshSettings::default()
    })
}

/// The issuer's key source: discovery, or the one of `jwks_uri`,
/// `jwks_file`, `public_key_pem`, `public_key_file` its table gives.
fn key_source(table: &Layer) -> Result<KeySource, ConfigError> {
    let given: Vec<(&str, &Origin)> = [
        ("jwks_uri", table.origin(Setting::JwksUri)),
        ("jwks_file", table.origin(Setting::JwksFile)),
        ("public_key_pem", table.origin(Setting::PublicKeyPem)),
        ("public_key_file", table.origin(Setting::PublicKeyFile)),
    ]
    .into_iter()
    .filter_map(|(k, o)| o.map(|o| (k, o)))
    .collect();
    if let [(first, _), (_, second), ..] = given[..] {
        return Err(second.error(format!(
            "give one key source per issuer (jwks_uri, jwks_file, public_key_pem or public_key_file); {first} is set too"
        )));
    }
    if let Some(kid) = &table.public_key_kid
        && table.public_key_pem.is_none()
        && table.public_key_file.is_none()
    {
        return Err(kid.error("public_key_kid names the kid of public_key_pem or public_key_file, and neither is set"));
    }
    let kid = table.public_key_kid.as_ref().map(|k| k.value.trim()).filter(|k| !k.is_empty());
    if let Some(uri) = &table.jwks_uri {
        let u = uri.value.trim();
        check_key_url(u).map_err(|why| uri.error(format!("{u:?}: {why}")))?;
        return Ok(KeySource::JwksUri(u.to_owned()));
    }
    if let Some(file) = &table.jwks_file {
        let path = &file.value;
        let text = read_text(path, MAX_BODY_BYTES as u64).map_err(|p| file.error(p))?;
        let parsed = jwk::parse_jwks(text.as_bytes(), &[]).map_err(|e| {
            let why = first_unusable_key(&text).map_or(String::new(), |w| format!(" ({w})"));
            file.error(format!("{}: {e}{why}", path.display()))
        })?;
        if let Some(skipped) = parsed.skipped.first() {
            return Err(file.error(format!(
                "{}: key {} cannot be used ({}); remove it from the file",
                path.display(),
                skipped.kid.as_deref().map_or("without kid".to_owned(), |kid| format!("{kid:?}")),
                skipped.reason
            )));
        }
        return Ok(KeySource::Static(parsed.keys));
    }
    if let Some(pem) = &table.public_key_pem {
        let key = VerificationKey::from_public_key_pem(&pem.value, kid).map_err(|e| pem.error(e.to_string()))?;
        return Ok(KeySource::Static(vec![Arc::new(key)]));
    }
    if let Some(file) = &table.public_key_file {
        let path = &file.value;
        let text = read_text(path, MAX_PUBLIC_KEY_FILE_BYTES).map_err(|p| file.error(p))?;
        let key = VerificationKey::from_public_key_pem(&text, kid)
            .map_err(|e| file.error(format!("{}: {e}", path.display())))?;
        return Ok(KeySource::Static(vec![Arc::new(key)]));
    }
    Ok(KeySource::Discovery)
}

/// Why the first unusable key of a JWKS text cannot be used.
fn first_unusable_key(text: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_str(text).ok()?;
    doc.get("keys")?.as_array()?.iter().find_map(|k| {
        jwk::key_from_jwk_json(k).err().map(|reason| {
            let kid = k.get("kid").and_then(serde_json::Value::as_str).map(|kid| jwk::truncate(kid, 64));
            format!("key {}: {reason}", kid.map_or("without kid".to_owned(), |kid| format!("{kid:?}")))
        })
    })
}

fn watch_interval(server: &Layer) -> Result<Duration, ConfigError> {
    let d = sourced(&server.watch_interval, Setting::WatchInterval)?;
    if !d.value.is_zero() && d.value < MIN_WATCH_INTERVAL {
        return Err(d.error("must be 0 (no checks) or at least 100ms"));
    }
    Ok(d.value)
}

/// TLS files, given as a pair (with an optional client CA), that load.
fn tls_files(server: &Layer) -> Result<Option<TlsFiles>, ConfigError> {
    let (cert, key, ca) = (&server.tls_cert, &server.tls_key, &server.tls_client_ca);
    let files = match (cert, key) {
        (None, None) => {
            if let Some(ca) = ca {
                return Err(ca.error("mTLS needs TLS: give the certificate and key as well (--tls-cert and --tls-key)"));
            }
            return Ok(None);
        }
        (Some(cert), None) => {
            return Err(cert.error("TLS needs the private key of this certificate as well (--tls-key)"));
        }
        (None, Some(key)) => return Err(key.error("TLS needs the certificate of this key as well (--tls-cert)")),
        (Some(cert), Some(key)) => TlsFiles {
            cert: cert.value.clone(),
            key: key.value.clone(),
            client_ca: ca.as_ref().map(|c| c.value.clone()),
        },
    };
    if let Err(e) = tls::check(&files) {
        let at = match tls_file_at_fault(&e, &files) {
            Setting::TlsClientCa => ca.as_ref(),
            Setting::TlsKey => key.as_ref(),
            _ => cert.as_ref(),
        };
        let origin = at.map_or_else(|| Origin::Default(Setting::TlsCert), |s| s.origin.clone());
        return Err(origin.error(e.to_string()));
    }
    Ok(Some(files))
}

fn tls_file_at_fault(e: &tls::TlsError, files: &TlsFiles) -> Setting {
    match e {
        tls::TlsError::Read { path, .. } | tls::TlsError::TooLarge { path } | tls::TlsError::NoCertificate { path }
            if Some(path) == files.client_ca.as_ref() =>
        {
            Setting::TlsClientCa
        }
        tls::TlsError::BadClientCa { .. } => Setting::TlsClientCa,
        tls::TlsError::Read { path, .. } | tls::TlsError::TooLarge { path } if *path == files.key => Setting::TlsKey,
        tls::TlsError::NoKey { .. } => Setting::TlsKey,
        _ => Setting::TlsCert,
    }
}

/// Connection and call housekeeping (flags and environment only).
pub fn connection_settings(server: &Layer) -> Result<ConnectionSettings, ConfigError> {
    let age = sourced(&server.max_connection_age, Setting::MaxConnectionAge)?;
    if age.value.0 == Some(Duration::ZERO) {
        return Err(
            age.error("0s would close every connection as it opens; give an age such as 10m, or off for no limit")
        );
    }
    let handshake = sourced(&server.handshake_timeout, Setting::HandshakeTimeout)?;
    if handshake.value.is_zero() {
        return Err(handshake.error(format!(
            "0s would close every connection before it could say anything; the default is {}",
            default_of(Setting::HandshakeTimeout)
        )));
    }
    let connections = sourced(&server.max_connections, Setting::MaxConnections)?;
    let call_timeout = sourced(&server.call_timeout, Setting::CallTimeout)?;
    let idle = sourced(&server.max_connection_idle, Setting::MaxConnectionIdle)?;
    let calls = sourced(&server.max_calls_in_flight, Setting::MaxCallsInFlight)?;
    let bytes = sourced(&server.max_request_bytes, Setting::MaxRequestBytes)?;
    let request_timeout = sourced(&server.request_timeout, Setting::RequestTimeout)?;
    let streams = sourced(&server.max_streams_per_connection, Setting::MaxStreamsPerConnection)?;
    in_range(connections, 1, MAX_MAX_CONNECTIONS, Setting::MaxConnections)?;
    if call_timeout.value < Duration::from_secs(1) {
        return Err(call_timeout.error(format!(
            "under 1s would cancel calls that wait for a key refetch; the default is {}",
            default_of(Setting::CallTimeout)
        )));
    }
    if idle.value.0 == Some(Duration::ZERO) {
        return Err(idle.error("0s would close every connection between two calls; give a time such as 5m, or off"));
    }
    in_range(calls, 1, MAX_MAX_CALLS, Setting::MaxCallsInFlight)?;
    if !(MIN_MAX_REQUEST_BYTES..=MAX_MAX_REQUEST_BYTES).contains(&bytes.value.0) {
        return Err(bytes.error(format!(
            "{} is not between {MIN_MAX_REQUEST_BYTES} (one request of the largest size) and {MAX_MAX_REQUEST_BYTES}; the default is {}",
            bytes.value.0,
            default_of(Setting::MaxRequestBytes)
        )));
    }
    if request_timeout.value < Duration::from_millis(100) || request_timeout.value > call_timeout.value {
        return Err(request_timeout.error(format!(
            "{} is not between 100ms and --call-timeout ({}); the default is {}",
            humantime::format_duration(request_timeout.value),
            humantime::format_duration(call_timeout.value),
            default_of(Setting::RequestTimeout)
        )));
    }
    let streams_n = Sourced { value: streams.value as usize, origin: streams.origin.clone() };
    in_range(&streams_n, 1, MAX_MAX_CALLS, Setting::MaxStreamsPerConnection)?;
    Ok(ConnectionSettings {
        max_age: age.value.0,
        max_age_grace: value(&server.max_connection_age_grace, Setting::MaxConnectionAgeGrace)?,
        handshake_timeout: handshake.value,
        max_connections: connections.value,
        call_timeout: call_timeout.value,
        max_idle: idle.value.0,
        max_calls: calls.value,
        max_request_bytes: bytes.value.0,
        request_timeout: request_timeout.value,
        max_streams_per_connection: streams.value,
    })
}

fn in_range(v: &Sourced<usize>, min: usize, max: usize, setting: Setting) -> Result<(), ConfigError> {
    if (min..=max).contains(&v.value) {
        return Ok(());
    }
    Err(v.error(format!("{} is not between {min} and {max}; the default is {}", v.value, default_of(setting))))
}

fn token_cache_size(server: &Layer) -> Result<usize, ConfigError> {
    let size = sourced(&server.token_cache_size, Setting::TokenCacheSize)?;
    if size.value > MAX_TOKEN_CACHE_SIZE {
        return Err(size.error(format!(
            "{} is more than the {MAX_TOKEN_CACHE_SIZE} allowed; {} (the default) covers 100k distinct tokens a minute, and 0 disables the cache",
            size.value,
            default_of(Setting::TokenCacheSize)
        )));
    }
    Ok(size.value)
}

fn authz(server: &Layer) -> Result<AuthzConfig, ConfigError> {
    AuthzConfig::from_settings(&AuthzSettings {
        token_header: value(&server.authz_token_header, Setting::AuthzTokenHeader)?,
        session_cookie: value(&server.authz_session_cookie, Setting::AuthzSessionCookie)?,
        no_cookie: value(&server.authz_no_cookie, Setting::AuthzNoCookie)?,
        identity_headers: server.authz_identity_headers.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
        claim_headers: server.authz_claim_headers.as_ref().map(|v| v.value.clone()).unwrap_or_default(),
        bypass_cors_preflight: value(&server.authz_bypass_cors_preflight, Setting::AuthzBypassCorsPreflight)?,
        unavailable: value(&server.authz_unavailable, Setting::AuthzUnavailable)?,
    })
}

impl Default for AuthzConfig {
    fn default() -> Self {
        Self::from_settings(&AuthzSettings::default()).expect("the default ext_authz settings are valid")
    }
}

impl AuthzConfig {
    /// Validates the ext_authz settings: header and cookie names are tokens, identity
    /// headers are distinct and never a header that carries credentials or
    /// that a proxy owns.
    pub fn from_settings(args: &AuthzSettings) -> Result<AuthzConfig, ConfigError> {
        let token_header = header_name(&Setting::AuthzTokenHeader.flag_name(), &args.token_header)?;
        if matches!(token_header.as_str(), "cookie" | "host" | "content-length" | "content-type") {
            return Err(ConfigError::new(
                Setting::AuthzTokenHeader.flag_name(),
                format!("{token_header} cannot carry a token; use authorization (the default) or a custom header"),
            ));
        }
        let session_cookie = if args.no_cookie {
            None
        } else {
            Some(cookie_name(&Setting::AuthzSessionCookie.flag_name(), &args.session_cookie)?)
        };

        let mut identity_headers = Vec::new();
        if args.identity_headers.is_empty() {
            identity_headers.extend(IdentityField::DEFAULTS.map(|f| (f, f.default_header())));
        }
        for raw in &args.identity_headers {
            let flag = &Setting::AuthzIdentityHeaders.flag_name();
            let (field, header) = match raw.split_once('=') {
                Some((field, header)) => (field.trim(), Some(header)),
                None => (raw.trim(), None),
            };
            let field = IdentityField::parse(field).ok_or_else(|| {
                let known: Vec<_> = IdentityField::ALL.iter().map(|f| f.name()).collect();
                ConfigError::new(flag, format!("unknown field {field:?}; use one of {}", known.join(", ")))
            })?;
            if identity_headers.iter().any(|(f, _)| *f == field) {
                return Err(ConfigError::new(flag, format!("{} is given twice; list each field once", field.name())));
            }
            let header = match header {
                Some(h) => header_name(flag, h)?,
                None => field.default_header(),
            };
            identity_headers.push((field, header));
        }

        let mut claim_headers = Vec::new();
        for raw in &args.claim_headers {
            let flag = &Setting::AuthzClaimHeaders.flag_name();
            let (claim, header) = raw.split_once('=').ok_or_else(|| {
                ConfigError::new(flag, format!("{raw:?} is not CLAIM=HEADER, e.g. email=x-user-email"))
            })?;
            let claim = claim.trim();
            if claim.is_empty() || claim.len() > MAX_NAME || claim.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    flag,
                    format!("{claim:?} is not a claim name (1 to {MAX_NAME} characters)"),
                ));
            }
            claim_headers.push((claim.to_owned(), header_name(flag, header)?));
        }
        if claim_headers.len() > MAX_CLAIM_HEADERS {
            return Err(ConfigError::new(
                Setting::AuthzClaimHeaders.flag_name(),
                format!("at most {MAX_CLAIM_HEADERS} mappings"),
            ));
        }

        let (identity_flag, claim_flag) =
            (Setting::AuthzIdentityHeaders.flag_name(), Setting::AuthzClaimHeaders.flag_name());
        let all = identity_headers.iter().map(|(_, h)| (identity_flag.as_str(), h));
        let all = all.chain(claim_headers.iter().map(|(_, h)| (claim_flag.as_str(), h)));
        let mut seen: Vec<&str> = Vec::new();
        for (flag, header) in all {
            if *header == token_header {
                return Err(ConfigError::new(
                    flag,
                    format!("{header} is the header the token is read from; it goes upstream untouched"),
                ));
            }
            if seen.contains(&header.as_str()) {
                return Err(ConfigError::new(
                    flag,
                    format!("the header {header} is set twice; give each its own name"),
                ));
            }
            reserved(flag, header)?;
            seen.push(header);
        }

        Ok(AuthzConfig {
            token_header,
            session_cookie,
            identity_headers,
            claim_headers,
            bypass_cors_preflight: args.bypass_cors_preflight,
            unavailable: args.unavailable,
        })
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A header name: an RFC 9110 token, lower-cased as Envoy sends it.
fn header_name(flag: &str, raw: &str) -> Result<String, ConfigError> {
    let name = raw.trim().to_ascii_lowercase();
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(is_tchar) {
        return Err(ConfigError::new(
            flag,
            format!("{raw:?} is not a header name (1 to {MAX_NAME} letters, digits or !#$%&'*+-.^_`|~)"),
        ));
    }
    Ok(name)
}

/// A cookie name: an RFC 6265 token.
fn cookie_name(flag: &str, raw: &str) -> Result<String, ConfigError> {
    let name = raw.trim();
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(is_tchar) {
        return Err(ConfigError::new(flag, format!("{raw:?} is not a cookie name (1 to {MAX_NAME} token characters)")));
    }
    Ok(name.to_owned())
}

/// Headers that carry credentials, frame the message, or belong to the proxy.
fn reserved(flag: &str, header: &str) -> Result<(), ConfigError> {
    const RESERVED: &[&str] = &[
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "x-request-id",
        "x-introspect-reason",
    ];
    if RESERVED.contains(&header) || header.starts_with("x-envoy-") || header.starts_with("x-forwarded-") {
        return Err(ConfigError::new(
            flag,
            format!(
                "{header} cannot be an identity header: it carries credentials, frames the request or belongs to the proxy"
            ),
        ));
    }
    Ok(())
}

/// The configuration the settings table's defaults give, without issuers
/// (for [`Config::new`]).
pub(super) fn defaults() -> Result<Config, ConfigError> {
    server_config(&Layer::defaults(), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_defaults_are_valid_and_match_the_types_defaults() {
        let defaults = Layer::defaults();
        let config = super::defaults().unwrap();
        assert_eq!(policy(&defaults).unwrap(), Policy::default());
        assert_eq!(refresh(&defaults).unwrap(), RefreshSettings::default());
        assert_eq!(config.authz, AuthzConfig::default());
        assert_eq!(config.connections.max_connections, 4096);
        // The default call timeout outlasts the slowest call that can
        // succeed: one waiting for discovery, then the JWKS.
        assert!(config.connections.call_timeout > 2 * crate::keys::fetch::REQUEST_TIMEOUT);
        assert_eq!(config.revocation, RevocationConfig::default());
    }

    #[test]
    fn revocation_rules_and_messages() {
        let with = |pairs: &[(Setting, &str)]| {
            let mut layer = Layer::defaults();
            for (s, v) in pairs {
                layer.set_strs(*s, &[(*v).to_owned()], Origin::CommandLine(*s)).unwrap();
            }
            revocation(&layer).map_err(|e| e.to_string())
        };
        use Setting::*;
        let r = with(&[(RevocationStore, "redis://:hunter2@redis.example:6380")]).unwrap();
        assert_eq!(r.store.as_ref().unwrap().address, "redis.example:6380");
        assert!(!format!("{r:?}").contains("hunter2"), "the Debug of the config hides the password");
        let e = with(&[(RevocationStore, "http://:hunter2@redis.example")]).unwrap_err();
        assert!(
            e.contains("--revocation-store") && e.contains("redis:// or rediss://") && !e.contains("hunter2"),
            "{e}"
        );
        let e = with(&[(RevocationStoreRequired, "true")]).unwrap_err();
        assert!(e.contains("--revocation-store-required") && e.contains("requires a shared store"), "{e}");
        let e = with(&[(RevocationStorePassword, "p")]).unwrap_err();
        assert!(e.contains("without --revocation-store") && !e.contains(": p"), "{e}");
        let e = with(&[(RevocationRetention, "30s")]).unwrap_err();
        assert!(e.contains("--revocation-retention"), "{e}");
        let e = with(&[(RevocationMaxEntries, "0")]).unwrap_err();
        assert!(e.contains("--revocation-max-entries"), "{e}");
        let e = with(&[(RevocationStore, "redis://r"), (RevocationStoreOutageLimit, "500ms")]).unwrap_err();
        assert!(e.contains("at least 1s"), "{e}");
        let r = with(&[
            (RevocationStore, "rediss://r"),
            (RevocationStoreRequired, "true"),
            (RevocationStorePassword, " s3 "),
        ])
        .unwrap();
        assert!(r.settings.store_required && r.password == Some(Secret("s3".into())));
        assert_eq!(format!("{:?}", r.password), "Some(Secret(..))");
    }
}
