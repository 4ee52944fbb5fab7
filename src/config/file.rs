//! The `--config` file: TOML, one `[[issuers]]` table per trusted issuer
//! with its own policy and key source, plus server-level keys. Every key is
//! documented in `examples/config.toml` (a test parses it, and checks that
//! it shows every key of the schema).
//!
//! # Precedence
//!
//! From highest to lowest: a flag given **on the command line**, the config
//! file, an **environment variable**, the built-in default. The file beats
//! environment variables because the file is what a reload re-reads: were
//! an environment variable to win, editing the file and sending SIGHUP would
//! silently change nothing. Environment variables still fill what the file
//! leaves out.
//!
//! With `--config`, the issuers come from the file only: `--issuer` on the
//! command line is refused, and `CLERK_ISSUER` is ignored with a warning. A
//! policy flag given on the command line (say `--clock-skew 10`) overrides
//! that setting for every issuer in the file.
//!
//! # Errors
//!
//! Unknown keys, values of the wrong type, invalid values, duplicate
//! issuers and unreadable key files are errors that name the file, the line
//! and the key, on one line: `config.toml:14: issuers[1].clock_skew: ...`.
//! Relative paths in the file are relative to the file's directory.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;
use toml::Spanned;
use tracing::{info, warn};

use super::{
    Config, ConfigError, IssuerConfig, MAX_CLOCK_SKEW_SECS, MIN_REFRESH_INTERVAL, MIN_UNKNOWN_KID_COOLDOWN, ServeArgs,
    validate_issuer,
};
use crate::clock::SystemClock;
use crate::keys::fetch::{MAX_BODY_BYTES, check_key_url};
use crate::keys::jwk::{self, Algorithm, AlgorithmSet, VerificationKey};
use crate::keys::{KeySource, RefreshSettings};
use crate::tls::{self, TlsFiles};
use crate::verify::{Policy, TokenKind, TokenKinds};

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Largest `public_key_file` read (a PEM public key is 0.5 to 1.5 KiB).
pub const MAX_PUBLIC_KEY_FILE_BYTES: u64 = 64 * 1024;
/// Shortest non-zero `watch_interval`.
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);

// === schema ===

/// The file's top level.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<DurationValue>>,
    watch_interval: Option<Spanned<DurationValue>>,
    tls: Option<Spanned<TlsEntry>>,
    #[serde(default)]
    issuers: Vec<Spanned<IssuerEntry>>,
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsEntry {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    client_ca: Option<Spanned<String>>,
}

/// One `[[issuers]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerEntry {
    issuer: Spanned<String>,
    jwks_uri: Option<Spanned<String>>,
    jwks_file: Option<Spanned<String>>,
    public_key_pem: Option<Spanned<String>>,
    public_key_file: Option<Spanned<String>>,
    public_key_kid: Option<Spanned<String>>,
    algorithms: Option<Spanned<Vec<String>>>,
    audiences: Option<Spanned<Vec<String>>>,
    authorized_parties: Option<Spanned<Vec<String>>>,
    require_azp: Option<Spanned<bool>>,
    roles: Option<Spanned<Vec<String>>>,
    token_kinds: Option<Spanned<Vec<String>>>,
    accept_pending_sessions: Option<Spanned<bool>>,
    clock_skew: Option<Spanned<DurationValue>>,
    refresh_interval: Option<Spanned<DurationValue>>,
    unknown_kid_cooldown: Option<Spanned<DurationValue>>,
    max_key_staleness: Option<Spanned<DurationValue>>,
}

/// A duration: a string such as `"5m"` or `"500ms"`, or an integer number
/// of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DurationValue(Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"5m\", \"24h\" or a whole number of seconds")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DurationValue, E> {
                Ok(DurationValue(Duration::from_secs(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DurationValue, E> {
                u64::try_from(v)
                    .map(|s| DurationValue(Duration::from_secs(s)))
                    .map_err(|_| E::custom(format!("a duration cannot be negative ({v})")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationValue, E> {
                super::parse_duration(v)
                    .map(DurationValue)
                    .map_err(|e| E::custom(format!("invalid duration {v:?}: {e}")))
            }
        }
        d.deserialize_any(Visitor)
    }
}

// === the command line on top of the file ===

/// The `serve` flags, and which of them were given on the command line
/// (those win over the file; the others, from the environment or
/// defaults, only fill what the file leaves out).
#[derive(Clone, Debug)]
pub struct CommandLine {
    args: ServeArgs,
    explicit: BTreeSet<String>,
    from_env: BTreeSet<String>,
}

impl CommandLine {
    /// `args` as parsed from `matches` (the `serve` subcommand's matches).
    /// Without matches, nothing counts as given on the command line.
    pub fn new(args: ServeArgs, matches: Option<&ArgMatches>) -> Self {
        let mut explicit = BTreeSet::new();
        let mut from_env = BTreeSet::new();
        if let Some(m) = matches {
            for id in m.ids() {
                match m.value_source(id.as_str()) {
                    Some(ValueSource::CommandLine) => {
                        explicit.insert(id.as_str().to_owned());
                    }
                    Some(ValueSource::EnvVariable) => {
                        from_env.insert(id.as_str().to_owned());
                    }
                    _ => {}
                }
            }
        }
        Self { args, explicit, from_env }
    }

    /// Parses `serve` arguments (without the program and subcommand names),
    /// as the binary would: for tests and tools.
    pub fn parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let argv = ["clerk-introspect".into(), "serve".into()].into_iter().chain(args.into_iter().map(Into::into));
        let matches = super::Cli::command().try_get_matches_from(argv.collect::<Vec<std::ffi::OsString>>())?;
        let cli = super::Cli::from_arg_matches(&matches)?;
        let serve = matches.subcommand_matches("serve").cloned();
        match cli.command {
            super::Command::Serve(args) => Ok(Self::new(*args, serve.as_ref())),
            _ => unreachable!("the serve subcommand was parsed"),
        }
    }

    /// The parsed flags.
    pub fn args(&self) -> &ServeArgs {
        &self.args
    }

    /// Whether the flag with this clap id (the field name, e.g.
    /// `clock_skew`) was given on the command line.
    pub fn is_explicit(&self, id: &str) -> bool {
        self.explicit.contains(id)
    }

    /// Whether the flag with this clap id was read from its environment variable.
    pub fn is_from_env(&self, id: &str) -> bool {
        self.from_env.contains(id)
    }
}

/// Builds `serve`'s configuration: from the flags alone, or, with
/// `--config`, from the file with the command line on top. Returns the
/// [`Source`] to reload from, when there is a file.
pub fn resolve(args: &ServeArgs, matches: Option<&ArgMatches>) -> Result<(Config, Option<Source>), ConfigError> {
    let Some(path) = args.config.clone() else {
        return Ok((Config::from_args(args)?, None));
    };
    let cli = CommandLine::new(args.clone(), matches);
    if cli.is_explicit("issuers") {
        return Err(ConfigError::new(
            "--issuer",
            "with --config the issuers come from the file; list each one there as an [[issuers]] table (or drop --config)",
        ));
    }
    if cli.is_from_env("issuers") {
        warn!("CLERK_ISSUER is set but ignored: with --config the issuers come from the config file");
    }
    for (id, flag) in POLICY_FLAGS {
        if cli.is_explicit(id) {
            info!(flag, "a flag on the command line overrides this setting for every issuer in the config file");
        }
    }
    let source = Source::new(path, cli);
    let config = source.load()?;
    Ok((config, Some(source)))
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

/// Policy and timing flags (clap id, flag) that apply to every issuer.
const POLICY_FLAGS: [(&str, &str); 11] = [
    ("authorized_parties", "--authorized-party"),
    ("audiences", "--audience"),
    ("roles", "--role"),
    ("clock_skew", "--clock-skew"),
    ("require_azp", "--require-azp"),
    ("algorithms", "--algorithm"),
    ("accept_token_kinds", "--accept-token-kind"),
    ("accept_pending_sessions", "--accept-pending-sessions"),
    ("refresh_interval", "--refresh-interval"),
    ("unknown_kid_cooldown", "--unknown-kid-cooldown"),
    ("max_key_staleness", "--max-key-staleness"),
];

/// Builds `--tls-*` flags into [`TlsFiles`], checking that the files load.
pub fn tls_from_flags(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    let files = match (cert, key) {
        (None, None) => {
            if client_ca.is_some() {
                return Err(ConfigError::new(
                    "--tls-client-ca",
                    "mTLS needs TLS: give --tls-cert and --tls-key as well",
                ));
            }
            return Ok(None);
        }
        (Some(_), None) => return Err(ConfigError::new("--tls-key", "--tls-cert needs --tls-key (its private key)")),
        (None, Some(_)) => return Err(ConfigError::new("--tls-cert", "--tls-key needs --tls-cert (its certificate)")),
        (Some(cert), Some(key)) => TlsFiles { cert, key, client_ca },
    };
    tls::check(&files).map_err(|e| ConfigError::new(tls_flag(&e, &files), e.to_string()))?;
    Ok(Some(files))
}

fn tls_flag(e: &tls::TlsError, files: &TlsFiles) -> &'static str {
    match e {
        tls::TlsError::Read { path, .. } | tls::TlsError::TooLarge { path } | tls::TlsError::NoCertificate { path }
            if Some(path) == files.client_ca.as_ref() =>
        {
            "--tls-client-ca"
        }
        tls::TlsError::BadClientCa { .. } => "--tls-client-ca",
        tls::TlsError::Read { path, .. } | tls::TlsError::TooLarge { path } if *path == files.key => "--tls-key",
        tls::TlsError::NoKey { .. } => "--tls-key",
        _ => "--tls-cert",
    }
}

// === the source a reload re-reads ===

/// A config file and the command line laid over it: what a reload reads
/// again. It remembers the files the last load read (the config file and
/// the key files it names) and a hash of their contents, so that a change
/// can be noticed without parsing.
#[derive(Debug)]
pub struct Source {
    path: PathBuf,
    cli: CommandLine,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    files: Vec<PathBuf>,
    fingerprint: u64,
}

impl Source {
    /// A source reading `path`, with `cli` on top.
    pub fn new(path: PathBuf, cli: CommandLine) -> Self {
        let seen = Seen { files: vec![path.clone()], fingerprint: 0 };
        Self { path, cli, seen: Mutex::new(seen) }
    }

    /// The config file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the file. Records what was read, success or not,
    /// so that [`Source::changed`] compares against this attempt.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut read = Vec::new();
        let result = self.load_inner(&mut read);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if result.is_ok() || seen.files.is_empty() {
            seen.files = read;
        } else {
            // Keep watching what the last good load read, plus the config file.
            for f in read {
                if !seen.files.contains(&f) {
                    seen.files.push(f);
                }
            }
        }
        seen.fingerprint = fingerprint(&seen.files);
        result
    }

    /// Whether any file the last load read has changed since.
    pub fn changed(&self) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        fingerprint(&seen.files) != seen.fingerprint
    }

    fn load_inner(&self, read: &mut Vec<PathBuf>) -> Result<Config, ConfigError> {
        read.push(self.path.clone());
        let text = read_text(&self.path, MAX_CONFIG_BYTES).map_err(|problem| ConfigError::new("--config", problem))?;
        parse(&text, &self.path, &self.cli, read)
    }
}

fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        match std::fs::read(f) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.kind().hash(&mut h),
        }
    }
    h.finish()
}

fn read_text(path: &Path, max: u64) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

// === parsing and validation ===

/// Parses config `text` (read from `path`, which names it in errors and
/// anchors relative paths) with `cli` on top. The paths of files it reads
/// (key files, TLS files) are appended to `read`.
pub fn parse(text: &str, path: &Path, cli: &CommandLine, read: &mut Vec<PathBuf>) -> Result<Config, ConfigError> {
    let ctx = Ctx { path, src: text, base: path.parent().map(Path::to_path_buf).unwrap_or_default(), cli };
    let file: FileConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;
    ctx.build(file, read)
}

struct Ctx<'a> {
    path: &'a Path,
    src: &'a str,
    base: PathBuf,
    cli: &'a CommandLine,
}

/// Where a value in use came from, for error messages.
enum Origin {
    /// A flag (given on the command line, or its env var or default).
    Flag(&'static str),
    /// A key of the file, and its span.
    Key(String, Range<usize>),
}

/// Where a setting's value comes from.
enum Choice<'e, T> {
    /// The flag (given on the command line, or its env var or default).
    Flag(&'static str),
    /// The file: the value, its key and its span.
    File(&'e T, String, Range<usize>),
}

impl<'a> Ctx<'a> {
    fn line(&self, offset: usize) -> usize {
        let offset = offset.min(self.src.len());
        self.src.as_bytes()[..offset].iter().filter(|b| **b == b'\n').count() + 1
    }

    fn fail(&self, origin: &Origin, problem: impl Into<String>) -> ConfigError {
        match origin {
            Origin::Flag(flag) => ConfigError::new(*flag, problem),
            Origin::Key(key, span) => self.err(key, span.clone(), problem),
        }
    }

    fn err(&self, key: &str, span: Range<usize>, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(format!("{}:{}: {key}", self.path.display(), self.line(span.start)), problem)
    }

    /// A TOML or schema error: the key (from the message or the line) and
    /// the line, on one line.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        let Some(span) = e.span() else {
            return ConfigError::new(self.path.display().to_string(), message);
        };
        let key = unknown_field(&message).or_else(|| self.key_at(span.start));
        let line = self.line(span.start);
        match key {
            Some(key) => ConfigError::new(format!("{}:{line}: {key}", self.path.display()), message),
            None => ConfigError::new(format!("{}:{line}", self.path.display()), message),
        }
    }

    /// The key of the `key = value` at `offset`, or of the multi-line value
    /// it is in; `None` on a table header.
    fn key_at(&self, offset: usize) -> Option<String> {
        let mut offset = offset.min(self.src.len());
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        let start_of_line = self.src[..offset].rfind('\n').map_or(0, |i| i + 1);
        let this_line = self.src[start_of_line..].lines().next().unwrap_or("");
        let earlier = self.src[..start_of_line].lines().rev();
        for line in std::iter::once(this_line).chain(earlier).take(200) {
            let l = line.trim();
            if l.starts_with('[') {
                return None;
            }
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if let Some((k, _)) = l.split_once('=') {
                let k = k.trim().trim_matches('"');
                if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
                    return Some(k.to_owned());
                }
            }
        }
        None
    }

    fn choose<'e, T>(&self, id: &str, flag: &'static str, file: Option<&'e Spanned<T>>, key: String) -> Choice<'e, T> {
        match file {
            Some(v) if !self.cli.is_explicit(id) => Choice::File(v.get_ref(), key, v.span()),
            _ => Choice::Flag(flag),
        }
    }

    fn resolve_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p.trim());
        if p.is_absolute() { p.to_owned() } else { self.base.join(p) }
    }

    fn build(&self, file: FileConfig, read: &mut Vec<PathBuf>) -> Result<Config, ConfigError> {
        let args = self.cli.args();
        let listen = match self.choose("listen", "--listen", file.listen.as_ref(), "listen".into()) {
            Choice::Flag(_) => args.listen,
            Choice::File(v, key, span) => v.trim().parse::<SocketAddr>().map_err(|_| {
                self.err(&key, span, format!("{v:?} is not an address; use e.g. \"0.0.0.0:50051\" or \"[::]:50051\""))
            })?,
        };
        let shutdown_grace = match self.choose(
            "shutdown_grace",
            "--shutdown-grace",
            file.shutdown_grace.as_ref(),
            "shutdown_grace".into(),
        ) {
            Choice::Flag(_) => args.shutdown_grace,
            Choice::File(v, ..) => v.0,
        };
        let watch_interval = match self.choose(
            "watch_interval",
            "--watch-interval",
            file.watch_interval.as_ref(),
            "watch_interval".into(),
        ) {
            Choice::Flag(flag) => check_watch_interval(args.watch_interval).map_err(|p| ConfigError::new(flag, p))?,
            Choice::File(v, key, span) => check_watch_interval(v.0).map_err(|p| self.err(&key, span, p))?,
        };
        let tls = self.tls(file.tls.as_ref(), read)?;

        if file.issuers.is_empty() {
            return Err(ConfigError::new(
                self.path.display().to_string(),
                "the config file lists no issuer; add an [[issuers]] table with issuer = \"https://clerk.<your-domain>\"",
            ));
        }
        let mut issuers: Vec<(IssuerConfig, Range<usize>)> = Vec::with_capacity(file.issuers.len());
        for (i, entry) in file.issuers.iter().enumerate() {
            let issuer = self.issuer(i, entry.get_ref(), read)?;
            let span = entry.get_ref().issuer.span();
            if let Some((_, first)) = issuers.iter().find(|(c, _)| c.issuer == issuer.issuer) {
                return Err(self.err(
                    &format!("issuers[{i}].issuer"),
                    span,
                    format!(
                        "{} is already configured at line {}; list each issuer once",
                        issuer.issuer,
                        self.line(first.start)
                    ),
                ));
            }
            issuers.push((issuer, span));
        }
        Ok(Config {
            issuers: issuers.into_iter().map(|(c, _)| c).collect(),
            shutdown_grace,
            // Connection housekeeping comes from flags and environment only.
            connections: super::ConnectionSettings::from_args(args)?,
            clock: Arc::new(SystemClock),
            listen,
            tls,
            watch_interval,
            // Envoy ext_authz settings come from flags and environment only.
            authz: crate::service::ext_authz::AuthzConfig::from_args(&args.authz)?,
            telemetry: Default::default(),
            // So is the token cache's size.
            token_cache_size: super::check_token_cache_size(args.token_cache_size)?,
        })
    }

    fn tls(&self, entry: Option<&Spanned<TlsEntry>>, read: &mut Vec<PathBuf>) -> Result<Option<TlsFiles>, ConfigError> {
        let args = self.cli.args();
        let table = entry.map(Spanned::get_ref);
        let pick = |id: &str,
                    flag: &'static str,
                    from_file: Option<&Spanned<String>>,
                    name: &str,
                    from_args: &Option<PathBuf>| {
            match self.choose(id, flag, from_file, format!("tls.{name}")) {
                Choice::Flag(flag) => (from_args.clone(), Origin::Flag(flag)),
                Choice::File(v, key, span) => (Some(self.resolve_path(v)), Origin::Key(key, span)),
            }
        };
        let (cert, cert_at) =
            pick("tls_cert", "--tls-cert", table.and_then(|t| t.cert.as_ref()), "cert", &args.tls_cert);
        let (key, key_at) = pick("tls_key", "--tls-key", table.and_then(|t| t.key.as_ref()), "key", &args.tls_key);
        let (client_ca, ca_at) = pick(
            "tls_client_ca",
            "--tls-client-ca",
            table.and_then(|t| t.client_ca.as_ref()),
            "client_ca",
            &args.tls_client_ca,
        );
        let files = match (cert, key) {
            (None, None) => {
                if client_ca.is_some() {
                    return Err(self.fail(&ca_at, "mTLS needs TLS: give the certificate and key as well"));
                }
                return Ok(None);
            }
            (Some(_), None) => return Err(self.fail(&cert_at, "TLS needs the private key of this certificate as well")),
            (None, Some(_)) => return Err(self.fail(&key_at, "TLS needs the certificate of this key as well")),
            (Some(cert), Some(key)) => TlsFiles { cert, key, client_ca },
        };
        read.extend([files.cert.clone(), files.key.clone()]);
        read.extend(files.client_ca.clone());
        if let Err(e) = tls::check(&files) {
            let at = match tls_flag(&e, &files) {
                "--tls-client-ca" => &ca_at,
                "--tls-key" => &key_at,
                _ => &cert_at,
            };
            return Err(self.fail(at, e.to_string()));
        }
        Ok(Some(files))
    }

    fn issuer(&self, i: usize, e: &IssuerEntry, read: &mut Vec<PathBuf>) -> Result<IssuerConfig, ConfigError> {
        let args = self.cli.args();
        let key = |name: &str| format!("issuers[{i}].{name}");
        let issuer = e.issuer.get_ref().trim().to_owned();
        validate_issuer(&issuer).map_err(|p| self.err(&key("issuer"), e.issuer.span(), p))?;
        let source = self.key_source(i, e, read)?;

        let algorithms = match self.choose("algorithms", "--algorithm", e.algorithms.as_ref(), key("algorithms")) {
            Choice::Flag(_) if args.algorithms.is_empty() => AlgorithmSet::all(),
            Choice::Flag(_) => args.algorithms.iter().copied().collect(),
            Choice::File(list, k, span) => {
                if list.is_empty() {
                    return Err(self.err(&k, span, "at least one algorithm must be allowed (Clerk signs with RS256)"));
                }
                let mut set = AlgorithmSet::EMPTY;
                for name in list {
                    set = set.with(name.parse::<Algorithm>().map_err(|p| self.err(&k, span.clone(), p))?);
                }
                set
            }
        };
        let audiences = self.string_list("audiences", "--audience", e.audiences.as_ref(), key("audiences"), || {
            args.audiences.clone()
        })?;
        let authorized_parties = self.string_list(
            "authorized_parties",
            "--authorized-party",
            e.authorized_parties.as_ref(),
            key("authorized_parties"),
            || args.authorized_parties.clone(),
        )?;
        if let Err(problem) = super::check_origins(&authorized_parties) {
            return Err(
                match self.choose(
                    "authorized_parties",
                    "--authorized-party",
                    e.authorized_parties.as_ref(),
                    key("authorized_parties"),
                ) {
                    Choice::File(_, k, span) => self.err(&k, span, problem),
                    Choice::Flag(flag) => ConfigError::new(flag, problem),
                },
            );
        }
        let roles = self.string_list("roles", "--role", e.roles.as_ref(), key("roles"), || args.roles.clone())?;
        if roles.is_empty() {
            let err = "at least one role must be allowed (usually authenticated)";
            return Err(match self.choose("roles", "--role", e.roles.as_ref(), key("roles")) {
                Choice::File(_, k, span) => self.err(&k, span, err),
                Choice::Flag(flag) => ConfigError::new(flag, err),
            });
        }
        let require_azp = match self.choose("require_azp", "--require-azp", e.require_azp.as_ref(), key("require_azp"))
        {
            Choice::Flag(_) => args.require_azp,
            Choice::File(v, ..) => *v,
        };
        let accept_pending_sessions = match self.choose(
            "accept_pending_sessions",
            "--accept-pending-sessions",
            e.accept_pending_sessions.as_ref(),
            key("accept_pending_sessions"),
        ) {
            Choice::Flag(_) => args.accept_pending_sessions,
            Choice::File(v, ..) => *v,
        };
        let token_kinds = match self.choose(
            "accept_token_kinds",
            "--accept-token-kind",
            e.token_kinds.as_ref(),
            key("token_kinds"),
        ) {
            Choice::Flag(_) => args.accept_token_kinds.iter().copied().fold(TokenKinds::SESSION_ONLY, TokenKinds::with),
            Choice::File(list, k, span) => {
                if list.is_empty() {
                    return Err(self.err(&k, span, "at least one token kind must be accepted (usually session)"));
                }
                let mut kinds = TokenKinds::empty();
                for name in list {
                    kinds = kinds.with(name.parse::<TokenKind>().map_err(|p| self.err(&k, span.clone(), p))?);
                }
                kinds
            }
        };
        let clock_skew = match self.choose("clock_skew", "--clock-skew", e.clock_skew.as_ref(), key("clock_skew")) {
            Choice::Flag(flag) => {
                check_clock_skew(Duration::from_secs(args.clock_skew)).map_err(|p| ConfigError::new(flag, p))?
            }
            Choice::File(v, k, span) => check_clock_skew(v.0).map_err(|p| self.err(&k, span, p))?,
        };

        let duration = |id: &str, flag: &'static str, v: Option<&Spanned<DurationValue>>, name: &str, from_args| {
            match self.choose(id, flag, v, key(name)) {
                Choice::Flag(flag) => (from_args, Origin::Flag(flag)),
                Choice::File(v, k, span) => (v.0, Origin::Key(k, span)),
            }
        };
        let err_at = |at: Origin, problem: &str| self.fail(&at, problem);
        let (interval, interval_at) = duration(
            "refresh_interval",
            "--refresh-interval",
            e.refresh_interval.as_ref(),
            "refresh_interval",
            args.refresh_interval,
        );
        if interval < MIN_REFRESH_INTERVAL {
            return Err(err_at(interval_at, "must be at least 10s (the default is 5m)"));
        }
        let (cooldown, cooldown_at) = duration(
            "unknown_kid_cooldown",
            "--unknown-kid-cooldown",
            e.unknown_kid_cooldown.as_ref(),
            "unknown_kid_cooldown",
            args.unknown_kid_cooldown,
        );
        if cooldown < MIN_UNKNOWN_KID_COOLDOWN {
            return Err(err_at(
                cooldown_at,
                "must be at least 1s, or a flood of tokens with random kids becomes a flood of requests to the issuer",
            ));
        }
        let (staleness, staleness_at) = duration(
            "max_key_staleness",
            "--max-key-staleness",
            e.max_key_staleness.as_ref(),
            "max_key_staleness",
            args.max_key_staleness,
        );
        if staleness < interval {
            return Err(err_at(
                staleness_at,
                "must be at least the refresh interval, or keys go stale between two refreshes",
            ));
        }

        Ok(IssuerConfig {
            issuer,
            source,
            policy: Policy {
                algorithms,
                audiences,
                authorized_parties,
                require_azp,
                roles,
                token_kinds,
                accept_pending_sessions,
                clock_skew,
            },
            refresh: RefreshSettings {
                interval,
                unknown_kid_cooldown: cooldown,
                max_staleness: staleness,
                ..RefreshSettings::default()
            },
        })
    }

    fn string_list(
        &self,
        id: &str,
        flag: &'static str,
        file: Option<&Spanned<Vec<String>>>,
        key: String,
        from_args: impl FnOnce() -> Vec<String>,
    ) -> Result<Vec<String>, ConfigError> {
        let (values, at) = match self.choose(id, flag, file, key) {
            Choice::Flag(flag) => (from_args(), Origin::Flag(flag)),
            Choice::File(v, k, span) => (v.clone(), Origin::Key(k, span)),
        };
        values
            .iter()
            .map(|v| {
                let v = v.trim();
                if v.is_empty() {
                    Err(self.fail(&at, "an empty value was given; remove it (or the stray comma)"))
                } else {
                    Ok(v.to_owned())
                }
            })
            .collect()
    }

    fn key_source(&self, i: usize, e: &IssuerEntry, read: &mut Vec<PathBuf>) -> Result<KeySource, ConfigError> {
        let key = |name: &str| format!("issuers[{i}].{name}");
        let given: Vec<(&str, &Spanned<String>)> = [
            ("jwks_uri", e.jwks_uri.as_ref()),
            ("jwks_file", e.jwks_file.as_ref()),
            ("public_key_pem", e.public_key_pem.as_ref()),
            ("public_key_file", e.public_key_file.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        if let [(first, _), (second, v), ..] = given[..] {
            return Err(self.err(
                &key(second),
                v.span(),
                format!(
                    "give one key source per issuer (jwks_uri, jwks_file, public_key_pem or public_key_file); {first} is set too"
                ),
            ));
        }
        if let Some(kid) = &e.public_key_kid
            && !matches!(given.first(), Some(("public_key_pem" | "public_key_file", _)))
        {
            return Err(self.err(
                &key("public_key_kid"),
                kid.span(),
                "public_key_kid names the kid of public_key_pem or public_key_file, and neither is set",
            ));
        }
        let kid = e.public_key_kid.as_ref().map(|k| k.get_ref().trim()).filter(|k| !k.is_empty());
        let Some((name, value)) = given.first().copied() else {
            return Ok(KeySource::Discovery);
        };
        let (k, span, v) = (key(name), value.span(), value.get_ref().as_str());
        match name {
            "jwks_uri" => {
                let uri = v.trim();
                check_key_url(uri).map_err(|why| self.err(&k, span, format!("{uri:?}: {why}")))?;
                Ok(KeySource::JwksUri(uri.to_owned()))
            }
            "jwks_file" => {
                let path = self.resolve_path(v);
                read.push(path.clone());
                let text = read_text(&path, MAX_BODY_BYTES as u64).map_err(|p| self.err(&k, span.clone(), p))?;
                let parsed = jwk::parse_jwks(text.as_bytes(), &[]).map_err(|e| {
                    let why = first_unusable_key(&text).map_or(String::new(), |w| format!(" ({w})"));
                    self.err(&k, span.clone(), format!("{}: {e}{why}", path.display()))
                })?;
                if let Some(skipped) = parsed.skipped.first() {
                    return Err(self.err(
                        &k,
                        span,
                        format!(
                            "{}: key {} cannot be used ({}); remove it from the file",
                            path.display(),
                            skipped.kid.as_deref().map_or("without kid".to_owned(), |kid| format!("{kid:?}")),
                            skipped.reason
                        ),
                    ));
                }
                Ok(KeySource::Static(parsed.keys))
            }
            "public_key_pem" => {
                let key =
                    VerificationKey::from_public_key_pem(v, kid).map_err(|e| self.err(&k, span, e.to_string()))?;
                Ok(KeySource::Static(vec![Arc::new(key)]))
            }
            _ => {
                let path = self.resolve_path(v);
                read.push(path.clone());
                let text = read_text(&path, MAX_PUBLIC_KEY_FILE_BYTES).map_err(|p| self.err(&k, span.clone(), p))?;
                let key = VerificationKey::from_public_key_pem(&text, kid)
                    .map_err(|e| self.err(&k, span, format!("{}: {e}", path.display())))?;
                Ok(KeySource::Static(vec![Arc::new(key)]))
            }
        }
    }
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

/// The field named in serde's "unknown field `x`" or "missing field `x`" message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("missing field `"))?;
    Some(rest.split('`').next()?.to_owned())
}

fn check_clock_skew(d: Duration) -> Result<Duration, String> {
    if d.subsec_nanos() != 0 {
        return Err("must be a whole number of seconds".into());
    }
    if d.as_secs() > MAX_CLOCK_SKEW_SECS {
        return Err(format!(
            "{} s is more than the {MAX_CLOCK_SKEW_SECS} s allowed; Clerk session tokens live 60 s, so fix the host clock (NTP) instead",
            d.as_secs()
        ));
    }
    Ok(d)
}

pub(super) fn check_watch_interval(d: Duration) -> Result<Duration, String> {
    if !d.is_zero() && d < MIN_WATCH_INTERVAL {
        return Err("must be 0 (no checks) or at least 100ms".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests;
