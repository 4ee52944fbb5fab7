//! The configuration: settings given in layers, merged and validated once
//! into a [`Config`] of plain data, before any port is bound.
//!
//! - [`settings`]: the table of every setting (file key, flag, environment
//!   variable, default, help) and [`Layer`], a partial set of settings each
//!   remembered with where it was given.
//! - [`mod@file`]: the `--config` TOML file, read into layers.
//! - [`validate()`]: merges defaults < environment < file < command line, in
//!   one place, and turns the result into a [`Config`]; the only place each
//!   rule and its message exist.
//! - [`authz`]: the Envoy ext_authz server's settings.
//! - [`mod@error`]: [`ConfigError`], which imports nothing.
//!
//! The command line itself (clap) is the binary's edge: `cli::serve`
//! builds the flags from the table and hands this module two layers (the
//! command line and the environment). A [`Loader`] keeps them, with the
//! file's path, for reloads.

pub mod authz;
pub mod error;
pub mod file;
pub mod settings;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::ConfigError;
pub use settings::{Layer, MetricsListen, Origin, Setting, parse_duration, parse_size};
pub use validate::{check_origins, validate, validate_issuer};

use crate::keys::{KeySource, RefreshSettings};
use crate::tls::TlsFiles;
use crate::verify::Policy;
use crate::webhook::svix::SigningSecret;
use authz::AuthzConfig;

/// Largest accepted clock skew.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Least time allowed between unknown-kid refetches.
pub const MIN_UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(1);
/// Shortest refresh interval that may be configured.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest non-zero `watch_interval`.
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Largest `--max-connections`.
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// Largest `--max-calls-in-flight` and `--max-streams-per-connection`.
pub const MAX_MAX_CALLS: usize = 1_000_000;
/// Smallest `--max-request-bytes`: one request of the largest size accepted
/// (64 KiB) and its gRPC prefix must fit.
pub const MIN_MAX_REQUEST_BYTES: usize = 64 * 1024 + 5;
/// Largest `--max-request-bytes`.
pub const MAX_MAX_REQUEST_BYTES: usize = 1 << 30;
pub use crate::verify::cache::MAX_TOKEN_CACHE_SIZE;
/// Smallest `--webhook-max-body-bytes` (Clerk's smallest events are a few
/// hundred bytes).
pub const MIN_WEBHOOK_BODY_BYTES: usize = 1024;
/// Largest `--webhook-max-body-bytes`.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 16 << 20;
/// Largest `--webhook-signing-secret-file` read.
pub const MAX_WEBHOOK_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// One trusted issuer: where its keys come from, its policy, its timing.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    /// The issuer identifier, compared exactly with `iss`.
    pub issuer: String,
    /// Where its keys come from.
    pub source: KeySource,
    /// What its tokens must satisfy.
    pub policy: Policy,
    /// Refresh timing.
    pub refresh: RefreshSettings,
}

impl IssuerConfig {
    /// An issuer with discovery, the default policy and default timing.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            source: KeySource::Discovery,
            policy: Policy::default(),
            refresh: RefreshSettings::default(),
        }
    }
}

/// Housekeeping of client connections and calls on the gRPC listener
/// (flags and environment only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// Age at which a connection gets GOAWAY; `None`: no limit.
    pub max_age: Option<Duration>,
    /// Time left to calls in progress after that GOAWAY.
    pub max_age_grace: Duration,
    /// Time from accept to a completed TLS handshake and HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Longest a call may take when its client set no shorter deadline.
    pub call_timeout: Duration,
    /// GOAWAY after this long without a call; `None`: no limit.
    pub max_idle: Option<Duration>,
    /// Most calls in progress at once across all connections.
    pub max_calls: usize,
    /// Most request bytes held at once across all calls.
    pub max_request_bytes: usize,
    /// Time a call's request has, from its headers, to arrive whole.
    pub request_timeout: Duration,
    /// Most concurrent streams per connection.
    pub max_streams_per_connection: u32,
}

impl Default for ConnectionSettings {
    /// The settings table's defaults.
    fn default() -> Self {
        Config::new(Vec::new()).connections
    }
}

/// The Clerk webhook endpoint's settings.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Where `POST /webhooks/clerk` is served; `None`: not served.
    pub listen: Option<SocketAddr>,
    /// The signing secrets (any one matching passes); their `Debug` shows
    /// nothing of them.
    pub signing_secrets: Vec<SigningSecret>,
    /// Largest body read.
    pub max_body_bytes: usize,
}

/// Everything `serve` needs, validated: plain data (the runtime parts, a
/// clock or an OpenTelemetry meter, are given to `App::start` beside it).
#[derive(Clone, Debug)]
pub struct Config {
    /// Trusted issuers.
    pub issuers: Vec<IssuerConfig>,
    /// gRPC listen address (bound by the binary; a reload cannot change it).
    pub listen: SocketAddr,
    /// Longest drain after shutdown starts.
    pub shutdown_grace: Duration,
    /// Interval between checks of the config and TLS files for changes
    /// (zero: no checks; SIGHUP still reloads).
    pub watch_interval: Duration,
    /// TLS for the listener; `None` serves plaintext.
    pub tls: Option<TlsFiles>,
    /// Client connection and call housekeeping.
    pub connections: ConnectionSettings,
    /// Most verified tokens remembered (0: no token cache).
    pub token_cache_size: usize,
    /// The Envoy ext_authz server's settings.
    pub authz: AuthzConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_listen: MetricsListen,
    /// The Clerk webhook endpoint.
    pub webhook: WebhookConfig,
    /// Revocation: the store, retention, bound and readiness policy.
    pub revocation: RevocationConfig,
}

/// Revocation settings (flags and environment only; fixed at start).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationConfig {
    /// The shared store (`None`: in-process, this replica only).
    pub store: Option<StoreUrl>,
    /// The store's password when its URL has none.
    pub password: Option<Secret>,
    /// Retention, bound and readiness policy.
    pub settings: crate::revocation::service::Settings,
}

/// A store URL: shown as its `host:port` only (it may hold a password).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// The URL, as given.
    pub url: String,
    /// `host:port`, for logs and summaries.
    pub address: String,
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreUrl({})", self.address)
    }
}

/// A secret value, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Config {
    /// A configuration trusting `issuers`, with the settings table's
    /// defaults elsewhere.
    pub fn new(issuers: Vec<IssuerConfig>) -> Self {
        // The table's defaults are valid: a unit test checks them.
        let mut config = validate::defaults().expect("the settings table's defaults are valid");
        config.issuers = issuers;
        config
    }
}

/// The layers `serve` was started with, and the config file they name:
/// what a load reads, and a reload reads again. It remembers the files the
/// last load read (the config file and the files it names) and a hash of
/// their contents, so that a change can be noticed without parsing.
#[derive(Debug)]
pub struct Loader {
    env: Layer,
    command_line: Layer,
    file: Option<file::Watched>,
}

impl Loader {
    /// Settings from the environment and the command line (the `cli`
    /// module reads them); the config file is the one they name, if any.
    pub fn new(env: Layer, command_line: Layer) -> Self {
        let mut merged = env.clone();
        merged.overlay(&command_line);
        let file = merged.config.map(|path| file::Watched::new(path.value));
        Self { env, command_line, file }
    }

    /// A loader for the config file at `path` with the settings `env`
    /// gives, and no command line: `check-issuer --config`, tests.
    pub fn for_file(path: &Path, env: Layer) -> Self {
        Self { env, command_line: Layer::default(), file: Some(file::Watched::new(path.to_owned())) }
    }

    /// The config file, if one is used.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_ref().map(file::Watched::path)
    }

    /// Reads the config file (if any) and validates every layer into a
    /// [`Config`].
    pub fn load(&self) -> Result<Config, ConfigError> {
        let file = match &self.file {
            Some(watched) => Some(watched.read()?),
            None => None,
        };
        validate(&Layer::defaults(), &self.env, file.as_ref(), &self.command_line)
    }

    /// Whether a file the last load read has changed since.
    pub fn changed(&self) -> bool {
        self.file.as_ref().is_some_and(file::Watched::changed)
    }

    /// The settings given on the command line that apply to every issuer of
    /// the config file (and override it), for a start-up note; and whether
    /// `CLERK_ISSUER` is set but ignored because the file lists the issuers.
    pub fn overrides(&self) -> (Vec<String>, bool) {
        if self.file.is_none() {
            return (Vec::new(), false);
        }
        let overriding = Setting::ALL
            .iter()
            .filter(|s| s.meta().scope == settings::Scope::Issuer && self.command_line.origin(**s).is_some())
            .map(|s| s.flag_name())
            .collect();
        (overriding, self.env.issuers.is_some())
    }
}

/// Where the config file a [`Loader`] reads is, for the reload loop.
pub fn config_path(loader: &Loader) -> Option<PathBuf> {
    loader.file().map(Path::to_path_buf)
}

/// A human summary of a validated configuration (for `serve --check-config`).
pub fn summary(config: &Config) -> String {
    let mut out = format!("configuration OK: listen {}", config.listen);
    match &config.tls {
        None => out.push_str(", plaintext"),
        Some(t) if t.client_ca.is_some() => out.push_str(", TLS with client certificates (mTLS)"),
        Some(_) => out.push_str(", TLS"),
    }
    out.push_str(&format!(", {} issuer(s)\n", config.issuers.len()));
    let c = &config.connections;
    out.push_str(&format!(
        "  connections: at most {}, handshake within {} s, calls within {} s, max age {}\n",
        c.max_connections,
        c.handshake_timeout.as_secs_f64(),
        c.call_timeout.as_secs_f64(),
        c.max_age.map_or("off".to_owned(), |age| format!(
            "{} s (then {} s for calls in progress)",
            age.as_secs_f64(),
            c.max_age_grace.as_secs_f64()
        )),
    ));
    out.push_str(&format!(
        "  calls: at most {} in flight ({} per connection), {} request bytes held, requests within {} s; idle connections closed after {}\n",
        c.max_calls,
        c.max_streams_per_connection,
        c.max_request_bytes,
        c.request_timeout.as_secs_f64(),
        c.max_idle.map_or("never".to_owned(), |idle| format!("{} s", idle.as_secs_f64())),
    ));
    let r = &config.revocation;
    out.push_str(&format!(
        "  revocation: {}, kept {} after the event, at most {} entries{}\n",
        r.store.as_ref().map_or("in-process (this replica only)".to_owned(), |s| format!("redis {}", s.address)),
        humantime::format_duration(r.settings.retention),
        r.settings.max_entries,
        if r.settings.store_required {
            format!("; NOT_SERVING after {} of store outage", humantime::format_duration(r.settings.outage_limit))
        } else {
            String::new()
        },
    ));
    if let Some(addr) = config.webhook.listen {
        out.push_str(&format!(
            "  webhooks: POST {} on {addr}, {} signing secret(s), bodies of at most {} bytes\n",
            crate::webhook::PATH,
            config.webhook.signing_secrets.len(),
            config.webhook.max_body_bytes,
        ));
    }
    for i in &config.issuers {
        let source = match &i.source {
            KeySource::Discovery => "keys by discovery".to_owned(),
            KeySource::JwksUri(u) => format!("keys from {u}"),
            KeySource::Static(keys) => format!("{} static key(s), no network", keys.len()),
        };
        let p = &i.policy;
        out.push_str(&format!(
            "  {}: {source}; algorithms {}; roles {}; authorized parties {}{}; clock skew {} s\n",
            i.issuer,
            p.algorithms,
            p.roles.join(", "),
            if p.authorized_parties.is_empty() { "any".to_owned() } else { p.authorized_parties.join(", ") },
            if p.require_azp { " (azp required)" } else { "" },
            p.clock_skew.as_secs()
        ));
    }
    out
}
