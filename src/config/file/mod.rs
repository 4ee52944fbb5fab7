//! The `--config` file: TOML, one `[[issuers]]` table per trusted issuer
//! with its own policy and key source, plus server-level keys. Every key is
//! documented in `examples/config.toml` (a test parses it, and checks that
//! it shows every key of the settings table).
//!
//! The file is read into [`Layer`]s (one for the top level, one per
//! issuer), each value remembered as `file:line: key` so that an error
//! names it there. Merging and validation are [`super::validate()`]'s.
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

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::ConfigError;
use super::settings::{Layer, Origin, Scope, Setting};

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A config file, read into layers.
#[derive(Debug)]
pub struct FileLayers {
    /// The file.
    pub path: PathBuf,
    /// Its top-level keys (and `[tls]`).
    pub server: Layer,
    /// Its `[[issuers]]` tables, in order.
    pub issuers: Vec<IssuerTable>,
}

/// One `[[issuers]]` table.
#[derive(Debug)]
pub struct IssuerTable {
    /// Its keys.
    pub layer: Layer,
    /// The line of its `issuer` key (or of the table, without one).
    pub line: usize,
    /// How an error about the table as a whole names it: `file:line: issuers[i]`.
    pub at: String,
}

/// Reads `path` into layers (it must be UTF-8 TOML of at most
/// [`MAX_CONFIG_BYTES`]).
pub fn read(path: &Path) -> Result<FileLayers, ConfigError> {
    let text = read_text(path, MAX_CONFIG_BYTES).map_err(|p| ConfigError::new(Setting::ConfigFile.flag_name(), p))?;
    parse(&text, path)
}

/// Reads a text file of at most `max` bytes. The bound holds while
/// reading, not only from the file's stated size: a device such as
/// `/dev/zero`, a file in `/proc` (size 0) or a file that grows meanwhile
/// is refused after `max + 1` bytes.
pub fn read_text(path: &Path, max: u64) -> Result<String, String> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// Parses config `text`, read from `path` (which names it in errors and
/// anchors relative paths).
pub fn parse(text: &str, path: &Path) -> Result<FileLayers, ConfigError> {
    let ctx = Ctx { path, src: text, base: path.parent().map(Path::to_path_buf).unwrap_or_default() };
    let doc = DeTable::parse(text).map_err(|e| ctx.syntax_error(&e))?;
    let mut server = Layer::default();
    let mut issuers = Vec::new();
    for (key, value) in doc.get_ref() {
        let name: &str = key.get_ref();
        match name {
            "issuers" => {
                let Some(tables) = value.get_ref().as_array() else {
                    return Err(ctx
                        .at(name, key.span().start)
                        .error("invalid type, expected an array of [[issuers]] tables"));
                };
                for (i, table) in tables.iter().enumerate() {
                    issuers.push(ctx.issuer(i, table)?);
                }
            }
            "tls" => {
                let Some(table) = value.get_ref().as_table() else {
                    return Err(ctx.at(name, key.span().start).error("invalid type, expected a [tls] table"));
                };
                for (k, v) in table {
                    let full = format!("tls.{}", k.get_ref());
                    ctx.set(&mut server, &full, k, v, &[Scope::Server], &full, "cert`, `key`, `client_ca")?;
                }
            }
            _ => ctx.set(&mut server, name, key, value, &[Scope::Server], name, &top_level_keys())?,
        }
    }
    Ok(FileLayers { path: path.to_owned(), server, issuers })
}

/// The top-level keys, for "expected one of" messages.
fn top_level_keys() -> String {
    let keys: Vec<&str> =
        Setting::file_keys(&[Scope::Server]).filter(|k| !k.starts_with("tls.")).chain(["tls", "issuers"]).collect();
    keys.join("`, `")
}

struct Ctx<'a> {
    path: &'a Path,
    src: &'a str,
    base: PathBuf,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        let offset = offset.min(self.src.len());
        self.src.as_bytes()[..offset].iter().filter(|b| **b == b'\n').count() + 1
    }

    /// `file:line: key`, for the value at `offset`.
    fn at(&self, key: &str, offset: usize) -> Origin {
        Origin::File(format!("{}:{}: {key}", self.path.display(), self.line(offset)))
    }

    /// Sets the setting of `scopes` named `name` from `value`, or says it
    /// is unknown (naming the key as written, `expected` listing the keys).
    #[allow(clippy::too_many_arguments)]
    fn set(
        &self,
        layer: &mut Layer,
        name: &str,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
        scopes: &[Scope],
        qualified: &str,
        expected: &str,
    ) -> Result<(), ConfigError> {
        let Some(setting) = Setting::by_file_key(name, scopes) else {
            let bare: &str = key.get_ref();
            return Err(self
                .at(bare, key.span().start)
                .error(format!("unknown field `{bare}`, expected one of `{expected}`")));
        };
        let origin = self.at(qualified, value.span().start);
        layer.set_toml(setting, value.get_ref(), &self.base, origin)
    }

    fn issuer(&self, i: usize, table: &Spanned<DeValue<'_>>) -> Result<IssuerTable, ConfigError> {
        let at = || self.at(&format!("issuers[{i}]"), table.span().start);
        let Some(entries) = table.get_ref().as_table() else {
            return Err(at().error("invalid type, expected an [[issuers]] table"));
        };
        let scopes = [Scope::Issuer, Scope::FileIssuer];
        let expected: Vec<&str> = Setting::file_keys(&scopes).collect();
        let mut layer = Layer::default();
        let mut line = self.line(table.span().start);
        for (k, v) in entries {
            let name: &str = k.get_ref();
            if name == "issuer" {
                line = self.line(v.span().start);
            }
            self.set(&mut layer, name, k, v, &scopes, &format!("issuers[{i}].{name}"), &expected.join("`, `"))?;
        }
        let Origin::File(at) = at() else { unreachable!("at() is a file origin") };
        Ok(IssuerTable { layer, line, at })
    }

    /// A TOML syntax error: the key of the line (if any) and the line, on
    /// one line.
    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        let Some(span) = e.span() else {
            return ConfigError::new(self.path.display().to_string(), message);
        };
        let line = self.line(span.start);
        match self.key_at(span.start) {
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
}

/// The config file a loader reads, and what its last load read (the file
/// and the files it names), so that a change is noticed without parsing.
#[derive(Debug)]
pub struct Watched {
    path: PathBuf,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    files: Vec<PathBuf>,
    fingerprint: u64,
}

impl Watched {
    /// Watches `path`.
    pub fn new(path: PathBuf) -> Self {
        let seen = Seen { files: vec![path.clone()], fingerprint: 0 };
        Self { path, seen: Mutex::new(seen) }
    }

    /// The config file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file into layers and records what it names (the files of
    /// its path settings), success or not, so that [`Watched::changed`]
    /// compares against this attempt. On a failed read, the files the last
    /// good read named stay watched too.
    pub fn read(&self) -> Result<FileLayers, ConfigError> {
        let result = read(&self.path);
        let mut files = vec![self.path.clone()];
        if let Ok(layers) = &result {
            files.extend(layers.paths());
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if result.is_err() {
            for f in std::mem::take(&mut seen.files) {
                if !files.contains(&f) {
                    files.push(f);
                }
            }
        }
        seen.fingerprint = fingerprint(&files);
        seen.files = files;
        result
    }

    /// Whether any file the last read named has changed since.
    pub fn changed(&self) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        fingerprint(&seen.files) != seen.fingerprint
    }
}

impl FileLayers {
    /// The files the config names (TLS files, key files, the webhook
    /// signing secret file).
    fn paths(&self) -> Vec<PathBuf> {
        let server = &self.server;
        let mut out: Vec<PathBuf> = [&server.tls_cert, &server.tls_key, &server.tls_client_ca]
            .into_iter()
            .flatten()
            .map(|p| p.value.clone())
            .collect();
        out.extend(server.webhook_signing_secret_file.iter().map(|p| p.value.clone()));
        for table in &self.issuers {
            let l = &table.layer;
            out.extend([&l.jwks_file, &l.public_key_file].into_iter().flatten().map(|p| p.value.clone()));
        }
        out
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

#[cfg(test)]
mod tests;
