use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::cli::serve::{ServeArgs, parse as cli_parse};
use crate::config::settings::Scope;
use crate::config::{Config, Loader, validate};
use crate::keys::jwk::{Algorithm, AlgorithmSet, KeyFamily, to_pem};
use crate::keys::{KeySource, RefreshSettings};
use crate::tls::TlsFiles;
use crate::verify::{Policy, TokenKind, TokenKinds};

const EXAMPLE: &str = include_str!("../../../examples/config.toml");
const FIXTURES: &str = include_str!("../../../tests/data/clerk-js-fixtures.json");

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "clerk-introspect-config-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, a server certificate signed by it, and the server key (PEM).
fn pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn rsa_pem() -> String {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    to_pem("PUBLIC KEY", pair.public_key().as_der().unwrap().as_ref())
}

fn fixture_jwks() -> String {
    let v: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
    v["jwks"].to_string()
}

/// The example's referenced files, written next to a copy of it.
fn example_dir() -> (Scratch, PathBuf) {
    let dir = Scratch::new();
    let (ca, cert, key) = pki();
    dir.write("tls/server.crt", &cert);
    dir.write("tls/server.key", &key);
    dir.write("tls/clients-ca.crt", &ca);
    dir.write("keys/tenant-b.pem", &rsa_pem());
    dir.write("keys/tenant-c.jwks.json", &fixture_jwks());
    dir.write("secrets/clerk-webhook-signing-secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
    let path = dir.write("config.toml", EXAMPLE);
    (dir, path)
}

fn cli(args: &[&str]) -> ServeArgs {
    cli_parse(args).unwrap()
}

fn parse_in(dir: &Scratch, text: &str, cli: &ServeArgs) -> Result<Config, ConfigError> {
    let path = dir.write("config.toml", text);
    validate(&Layer::defaults(), &cli.env, Some(&parse(text, &path)?), &cli.command_line)
}

fn parse_text(text: &str) -> Result<Config, ConfigError> {
    parse_in(&Scratch::new(), text, &cli(&[]))
}

#[test]
fn the_example_file_loads() {
    let (dir, path) = example_dir();
    let config = cli(&["--config", path.to_str().unwrap()]).loader().load().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.listen, "0.0.0.0:50051".parse().unwrap());
    assert_eq!(config.shutdown_grace, Duration::from_secs(20));
    assert_eq!(config.watch_interval, Duration::from_secs(5));
    assert_eq!(config.webhook.listen, Some("0.0.0.0:8080".parse().unwrap()));
    assert_eq!(config.webhook.signing_secrets.len(), 1, "from the file");
    assert_eq!(config.webhook.max_body_bytes, 256 * 1024);
    let tls = config.tls.as_ref().unwrap();
    assert_eq!(tls.cert, dir.0.join("tls/server.crt"), "relative to the file's directory");
    assert_eq!(tls.client_ca.as_deref(), Some(dir.0.join("tls/clients-ca.crt").as_path()));

    let names: Vec<&str> = config.issuers.iter().map(|i| i.issuer.as_str()).collect();
    assert_eq!(
        names,
        [
            "https://clerk.example.com",
            "https://example-dev.clerk.accounts.dev",
            "https://clerk.tenant-a.example.com",
            "https://clerk.tenant-b.example.com",
            "https://clerk.tenant-c.example.com"
        ]
    );
    let prod = &config.issuers[0];
    assert!(matches!(prod.source, KeySource::Discovery));
    assert_eq!(prod.policy.algorithms.to_string(), "RS256");
    assert_eq!(prod.policy.authorized_parties, ["https://app.example.com", "https://admin.example.com"]);
    assert!(prod.policy.require_azp);
    assert_eq!(prod.policy.token_kinds, TokenKinds::SESSION_ONLY);
    assert_eq!(prod.refresh, RefreshSettings::default());

    let dev = &config.issuers[1];
    assert!(matches!(&dev.source, KeySource::JwksUri(u) if u.ends_with("/.well-known/jwks.json")));
    assert!(dev.policy.token_kinds.contains(TokenKind::Machine));
    assert_eq!(dev.policy.clock_skew, Duration::from_secs(30));
    assert_eq!(dev.policy.algorithms, AlgorithmSet::all());

    let KeySource::Static(pem) = &config.issuers[2].source else { panic!("static") };
    assert_eq!(pem[0].kid(), Some("ins_2GIoQhbUpy0hX7B2cVkuTMinXoD"));
    assert_eq!(pem[0].rsa_bits(), 2048);
    let KeySource::Static(file) = &config.issuers[3].source else { panic!("static") };
    assert_eq!(file[0].family(), KeyFamily::Rsa);
    let KeySource::Static(jwks) = &config.issuers[4].source else { panic!("static") };
    // The inline PEM and the fixture JWKS are the same key: both verify the
    // signature of the token Clerk issued.
    let fixtures: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
    let token = fixtures["tokens"]["issued_by_clerk"].as_str().unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
    for key in [&pem[0], &jwks[0]] {
        assert!(key.verify(Algorithm::RS256, input.as_bytes(), &sig));
    }
}

#[test]
fn the_example_file_shows_every_key_of_the_settings_table() {
    let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
    let keys = |t: &toml::Table| t.keys().cloned().collect::<BTreeSet<String>>();
    let server: Vec<&str> = Setting::file_keys(&[Scope::Server]).collect();
    let mut top: BTreeSet<String> = server.iter().filter(|k| !k.starts_with("tls.")).map(|k| (*k).to_owned()).collect();
    top.extend(["tls".to_owned(), "issuers".to_owned()]);
    assert_eq!(keys(&table), top, "top-level keys");
    let tls: BTreeSet<String> = server.iter().filter_map(|k| k.strip_prefix("tls.")).map(str::to_owned).collect();
    assert_eq!(keys(table["tls"].as_table().unwrap()), tls, "[tls] keys");
    let mut issuer_keys = BTreeSet::new();
    for entry in table["issuers"].as_array().unwrap() {
        issuer_keys.extend(keys(entry.as_table().unwrap()));
    }
    let want: BTreeSet<String> = Setting::file_keys(&[Scope::Issuer, Scope::FileIssuer]).map(str::to_owned).collect();
    assert_eq!(issuer_keys, want, "[[issuers]] keys");
    assert!(want.contains("max_key_staleness"));
}

#[test]
fn every_key_is_read() {
    let dir = Scratch::new();
    let (ca, cert, key) = pki();
    dir.write("c.pem", &cert);
    dir.write("k.pem", &key);
    dir.write("ca.pem", &ca);
    dir.write("webhook-secrets", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n");
    let text = r#"
listen = "127.0.0.1:7000"
shutdown_grace = 3
watch_interval = "250ms"
webhook_listen = "127.0.0.1:7080"
webhook_signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
webhook_signing_secret_file = "webhook-secrets"
webhook_max_body_bytes = "64KiB"
[tls]
cert = "c.pem"
key = "k.pem"
client_ca = "ca.pem"
[[issuers]]
issuer = "https://clerk.example.com"
jwks_uri = "https://keys.example.com/jwks.json"
algorithms = ["RS256", "ES256"]
audiences = ["api", "db"]
authorized_parties = ["https://app.example.com"]
require_azp = true
roles = ["authenticated", "editor"]
token_kinds = ["machine", "oauth", "jwt-template"]
accept_pending_sessions = true
clock_skew = "7s"
refresh_interval = "2m"
unknown_kid_cooldown = "30s"
max_key_staleness = "1h"
"#;
    let config = parse_in(&dir, text, &cli(&[])).unwrap();
    assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(config.shutdown_grace, Duration::from_secs(3));
    assert_eq!(config.watch_interval, Duration::from_millis(250));
    assert_eq!(config.webhook.listen, Some("127.0.0.1:7080".parse().unwrap()));
    assert_eq!(config.webhook.signing_secrets.len(), 2, "the inline one and the file's");
    assert_eq!(config.webhook.max_body_bytes, 64 * 1024);
    assert_eq!(
        config.tls,
        Some(TlsFiles { cert: dir.0.join("c.pem"), key: dir.0.join("k.pem"), client_ca: Some(dir.0.join("ca.pem")) })
    );
    let i = &config.issuers[0];
    assert!(matches!(&i.source, KeySource::JwksUri(u) if u == "https://keys.example.com/jwks.json"));
    let p = &i.policy;
    assert_eq!(p.algorithms.to_string(), "RS256, ES256");
    assert_eq!(p.audiences, ["api", "db"]);
    assert_eq!(p.authorized_parties, ["https://app.example.com"]);
    assert!(p.require_azp);
    assert_eq!(p.roles, ["authenticated", "editor"]);
    assert!(!p.token_kinds.contains(TokenKind::Session));
    assert!(p.token_kinds.contains(TokenKind::Machine) && p.token_kinds.contains(TokenKind::OAuth));
    assert!(p.token_kinds.contains(TokenKind::JwtTemplate));
    assert!(p.accept_pending_sessions);
    assert_eq!(p.clock_skew, Duration::from_secs(7));
    assert_eq!(i.refresh.interval, Duration::from_secs(120));
    assert_eq!(i.refresh.unknown_kid_cooldown, Duration::from_secs(30));
    assert_eq!(i.refresh.max_staleness, Duration::from_secs(3600));
}

#[test]
fn webhook_secrets_are_checked_without_being_quoted_and_their_file_is_watched() {
    let dir = Scratch::new();
    let issuer = "[[issuers]]\nissuer = \"https://clerk.example.com\"\n";
    // Listening needs a secret.
    let err = parse_in(&dir, &format!("webhook_listen = \"127.0.0.1:7080\"\n{issuer}"), &cli(&[])).unwrap_err();
    assert!(err.to_string().contains("config.toml:1: webhook_listen"), "{err}");
    assert!(err.to_string().contains("signing secret"), "{err}");
    // A bad secret inline, or in the file: named by place, never quoted.
    for (text, at) in [
        ("webhook_signing_secrets = [\"whsec_Mf!KQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n", "webhook_signing_secrets"),
        ("webhook_signing_secrets = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n", "webhook_signing_secrets"),
        ("webhook_signing_secret_file = \"secrets\"\n", "secrets line 2"),
    ] {
        dir.write("secrets", "# rotated 2025-01\nMfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
        let err = parse_in(&dir, &format!("{text}{issuer}"), &cli(&[])).unwrap_err().to_string();
        assert!(err.contains(at), "{err}");
        assert!(!err.contains("MfKQ9r8"), "the secret leaked: {err}");
    }
    dir.write("empty", "# nothing yet\n");
    let err = parse_in(&dir, &format!("webhook_signing_secret_file = \"empty\"\n{issuer}"), &cli(&[])).unwrap_err();
    assert!(err.to_string().contains("holds no signing secret"), "{err}");

    // The secret file a config file names is watched: a new secret there
    // is a change the reload loop notices.
    dir.write("secrets", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
    let path = dir.write("watched.toml", &format!("webhook_signing_secret_file = \"secrets\"\n{issuer}"));
    let loader = Loader::for_file(&path, Layer::default());
    assert_eq!(loader.load().unwrap().webhook.signing_secrets.len(), 1);
    assert!(!loader.changed());
    dir.write("secrets", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nwhsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n");
    assert!(loader.changed());
    assert_eq!(loader.load().unwrap().webhook.signing_secrets.len(), 2);
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let config = parse_text("[[issuers]]\nissuer = \"https://clerk.example.com\"\n").unwrap();
    assert_eq!(config.listen, "0.0.0.0:50051".parse().unwrap());
    assert_eq!(config.tls, None);
    let i = &config.issuers[0];
    assert!(matches!(i.source, KeySource::Discovery));
    assert_eq!(i.policy, Policy::default());
    assert_eq!(i.refresh, RefreshSettings::default());
}

/// Parses `text` and returns the error's display, checking it names
/// `key` at `line` on one line.
#[track_caller]
fn error(text: &str, key: &str, line: usize, needle: &str) {
    let dir = Scratch::new();
    let (ca, cert, tls_key) = pki();
    dir.write("ca.pem", &ca);
    dir.write("cert.pem", &cert);
    dir.write("key.pem", &tls_key);
    dir.write("other-key.pem", &rcgen::KeyPair::generate().unwrap().serialize_pem());
    dir.write("enc.jwks.json", r#"{"keys":[{"kty":"RSA","use":"enc","kid":"e","n":"AQAB","e":"AQAB"}]}"#);
    let fixture: serde_json::Value = serde_json::from_str(&fixture_jwks()).unwrap();
    let mixed = serde_json::json!({"keys": [fixture["keys"][0], {"kty":"oct","kid":"hmac","k":"c2VjcmV0"}]});
    dir.write("mixed.jwks.json", &mixed.to_string());
    dir.write("private.pem", &tls_key);
    let err = parse_in(&dir, text, &cli(&[])).expect_err(text);
    let shown = err.to_string();
    assert!(!shown.contains('\n'), "one line: {shown}");
    assert!(err.flag.ends_with(&format!("config.toml:{line}: {key}")), "want line {line} key {key}, got: {shown}");
    assert!(shown.contains(needle), "want {needle:?} in: {shown}");
}

const ISSUER: &str = "[[issuers]]\nissuer = \"https://clerk.example.com\"\n";

#[test]
fn every_error_names_the_key_and_the_line() {
    error("foo = 1\n[[issuers]]\nissuer = \"https://a.example.com\"\n", "foo", 1, "unknown field `foo`");
    error(&format!("{ISSUER}clock_skw = 5\n"), "clock_skw", 3, "unknown field `clock_skw`, expected one of");
    error("[[issuer]]\nissuer = \"https://a.example.com\"\n", "issuer", 1, "unknown field `issuer`");
    error(&format!("{ISSUER}require_azp = \"yes\"\n"), "issuers[0].require_azp", 3, "invalid type");
    error(&format!("{ISSUER}roles = \"authenticated\"\n"), "issuers[0].roles", 3, "invalid type");
    error(&format!("{ISSUER}clock_skew = \"5 parsecs\"\n"), "issuers[0].clock_skew", 3, "invalid duration");
    error(&format!("{ISSUER}refresh_interval = -5\n"), "issuers[0].refresh_interval", 3, "cannot be negative");
    error("[[issuers]]\njwks_uri = \"https://a.example.com/jwks\"\n", "issuers[0]", 1, "missing field `issuer`");
    error("[[issuers]]\nissuer = \n", "issuer", 2, "");
    error(&format!("[tls]\ncert = \"cert.pem\"\nbogus = 1\n{ISSUER}"), "bogus", 3, "unknown field `bogus`");

    error("[[issuers]]\nissuer = \"http://clerk.example.com\"\n", "issuers[0].issuer", 2, "loopback");
    error("[[issuers]]\nissuer = \"clerk.example.com\"\n", "issuers[0].issuer", 2, "https");
    error(&format!("{ISSUER}\n{ISSUER}"), "issuers[1].issuer", 5, "already configured at line 2");
    error(&format!("{ISSUER}clock_skew = 3600\n"), "issuers[0].clock_skew", 3, "more than the 300 s");
    error(&format!("{ISSUER}clock_skew = \"1500ms\"\n"), "issuers[0].clock_skew", 3, "whole number of seconds");
    error(&format!("{ISSUER}refresh_interval = \"5s\"\n"), "issuers[0].refresh_interval", 3, "at least 10s");
    error(&format!("{ISSUER}unknown_kid_cooldown = 0\n"), "issuers[0].unknown_kid_cooldown", 3, "at least 1s");
    error(&format!("{ISSUER}max_key_staleness = \"1m\"\n"), "issuers[0].max_key_staleness", 3, "refresh interval");
    error(&format!("{ISSUER}roles = []\n"), "issuers[0].roles", 3, "at least one role");
    error(&format!("{ISSUER}roles = [\"authenticated\", \" \"]\n"), "issuers[0].roles", 3, "empty value");
    error(&format!("{ISSUER}authorized_parties = [\"\"]\n"), "issuers[0].authorized_parties", 3, "empty value");
    error(&format!("{ISSUER}audiences = [\"\"]\n"), "issuers[0].audiences", 3, "empty value");
    error(&format!("{ISSUER}algorithms = [\"RS256\", \"HS256\"]\n"), "issuers[0].algorithms", 3, "shared-secret");
    error(&format!("{ISSUER}algorithms = [\"none\"]\n"), "issuers[0].algorithms", 3, "unsigned");
    error(&format!("{ISSUER}algorithms = []\n"), "issuers[0].algorithms", 3, "at least one algorithm");
    error(
        &format!("{ISSUER}token_kinds = [\"session\", \"pigeon\"]\n"),
        "issuers[0].token_kinds",
        3,
        "unknown token kind",
    );
    error(&format!("{ISSUER}token_kinds = []\n"), "issuers[0].token_kinds", 3, "at least one token kind");

    error(
        &format!("{ISSUER}jwks_uri = \"https://a.example.com/jwks\"\npublic_key_file = \"k.pem\"\n"),
        "issuers[0].public_key_file",
        4,
        "one key source per issuer",
    );
    error(&format!("{ISSUER}jwks_uri = \"http://keys.example.com/jwks\"\n"), "issuers[0].jwks_uri", 3, "loopback");
    error(&format!("{ISSUER}public_key_kid = \"ins_1\"\n"), "issuers[0].public_key_kid", 3, "neither is set");
    error(&format!("{ISSUER}public_key_pem = \"not a key\"\n"), "issuers[0].public_key_pem", 3, "no PEM block");
    error(&format!("{ISSUER}public_key_file = \"private.pem\"\n"), "issuers[0].public_key_file", 3, "PRIVATE key");
    error(&format!("{ISSUER}public_key_file = \"missing.pem\"\n"), "issuers[0].public_key_file", 3, "cannot read");
    error(&format!("{ISSUER}jwks_file = \"enc.jwks.json\"\n"), "issuers[0].jwks_file", 3, "key \"e\": use is \"enc\"");
    error(
        &format!("{ISSUER}jwks_file = \"mixed.jwks.json\"\n"),
        "issuers[0].jwks_file",
        3,
        "key \"hmac\" cannot be used",
    );
    error(&format!("{ISSUER}jwks_file = \"cert.pem\"\n"), "issuers[0].jwks_file", 3, "not a JWKS document");

    error(&format!("listen = \"localhost\"\n{ISSUER}"), "listen", 1, "not an address");
    error(&format!("watch_interval = \"10ms\"\n{ISSUER}"), "watch_interval", 1, "at least 100ms");
    error(&format!("[tls]\ncert = \"cert.pem\"\n{ISSUER}"), "tls.cert", 2, "private key");
    error(&format!("[tls]\nkey = \"key.pem\"\n{ISSUER}"), "tls.key", 2, "certificate");
    error(&format!("[tls]\nclient_ca = \"ca.pem\"\n{ISSUER}"), "tls.client_ca", 2, "mTLS needs TLS");
    error(&format!("[tls]\ncert = \"nope.pem\"\nkey = \"key.pem\"\n{ISSUER}"), "tls.cert", 2, "cannot read");
    error(
        &format!("[tls]\ncert = \"cert.pem\"\nkey = \"ca.pem\"\n{ISSUER}"),
        "tls.key",
        3,
        "no unencrypted PEM private key",
    );
    error(&format!("[tls]\ncert = \"cert.pem\"\nkey = \"other-key.pem\"\n{ISSUER}"), "tls.cert", 2, "");
    error(
        &format!("[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\nclient_ca = \"key.pem\"\n{ISSUER}"),
        "tls.client_ca",
        4,
        "no PEM certificate",
    );
}

#[test]
fn a_file_without_issuers_is_refused() {
    let err = parse_text("listen = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(err.to_string().contains("no issuer"), "{err}");
}

#[test]
fn a_flag_on_the_command_line_wins_over_the_file() {
    let dir = Scratch::new();
    let text = format!(
        "listen = \"127.0.0.1:7000\"\n{ISSUER}clock_skew = 30\nroles = [\"editor\"]\n\n[[issuers]]\nissuer = \"https://b.example.com\"\n"
    );
    let config = parse_in(
        &dir,
        &text,
        &cli(&["--clock-skew", "10", "--listen", "127.0.0.1:9000", "--accept-token-kind", "machine"]),
    )
    .unwrap();
    assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
    for issuer in &config.issuers {
        assert_eq!(issuer.policy.clock_skew, Duration::from_secs(10), "{}", issuer.issuer);
        assert!(
            issuer.policy.token_kinds.contains(TokenKind::Machine)
                && issuer.policy.token_kinds.contains(TokenKind::Session)
        );
    }
    // What the command line did not give comes from the file.
    assert_eq!(config.issuers[0].policy.roles, ["editor"]);
    assert_eq!(config.issuers[1].policy.roles, ["authenticated"]);
    // A bad value on the command line names the flag.
    let err = parse_in(&dir, &text, &cli(&["--clock-skew", "900"])).unwrap_err();
    assert_eq!(err.flag, "--clock-skew");
}

#[test]
fn the_file_wins_over_environment_variables_which_fill_the_rest() {
    let dir = Scratch::new();
    // As if INTROSPECT_CLOCK_SKEW=20 and INTROSPECT_ROLES=a,b were set.
    let mut line = cli(&[]);
    line.env.set_strs(Setting::ClockSkew, &["20".into()], Origin::Env(Setting::ClockSkew)).unwrap();
    line.env.set_strs(Setting::Roles, &["a".into(), "b".into()], Origin::Env(Setting::Roles)).unwrap();
    let config = parse_in(&dir, &format!("{ISSUER}clock_skew = 30\n"), &line).unwrap();
    assert_eq!(config.issuers[0].policy.clock_skew, Duration::from_secs(30), "the file wins over the env");
    assert_eq!(config.issuers[0].policy.roles, ["a", "b"], "the env fills what the file leaves out");
}

#[test]
fn command_line_tls_flags_win_over_the_file() {
    let dir = Scratch::new();
    let (ca, cert, key) = pki();
    dir.write("cert.pem", &cert);
    dir.write("key.pem", &key);
    dir.write("ca.pem", &ca);
    let text = format!("[tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n{ISSUER}");
    let cert_flag = dir.0.join("cert.pem");
    let key_flag = dir.0.join("key.pem");
    let config = parse_in(
        &dir,
        &text,
        &cli(&["--tls-cert", cert_flag.to_str().unwrap(), "--tls-key", key_flag.to_str().unwrap()]),
    )
    .unwrap();
    let tls = config.tls.unwrap();
    assert_eq!((tls.cert, tls.key, tls.client_ca), (cert_flag, key_flag, None));
}

#[test]
fn issuers_come_from_the_file_only() {
    let dir = Scratch::new();
    let path = dir.write("config.toml", ISSUER);
    let config_flag = path.to_str().unwrap();
    let err = cli(&["--config", config_flag, "--issuer", "https://other.example.com"]).loader().load().unwrap_err();
    assert_eq!(err.flag, "--issuer");
    let loader = cli(&["--config", config_flag]).loader();
    assert_eq!(loader.load().unwrap().issuers.len(), 1);
    assert_eq!(loader.file(), Some(path.as_path()));
}

#[test]
fn flags_alone_still_work_without_a_file() {
    let loader = cli(&["--issuer", "https://clerk.example.com", "--clock-skew", "9"]).loader();
    assert!(loader.file().is_none());
    assert_eq!(loader.load().unwrap().issuers[0].policy.clock_skew, Duration::from_secs(9));
    let err =
        cli(&["--issuer", "https://clerk.example.com", "--tls-cert", "/nonexistent"]).loader().load().unwrap_err();
    assert_eq!(err.flag, "--tls-cert");
    assert!(err.problem.contains("--tls-key"), "{err}");
}

#[test]
fn a_source_notices_changes_to_the_file_and_the_key_files_it_names() {
    let dir = Scratch::new();
    let key = dir.write("k.pem", &rsa_pem());
    let path = dir.write("config.toml", &format!("{ISSUER}public_key_file = \"k.pem\"\n"));
    let source = Loader::for_file(&path, Layer::default());
    assert!(source.changed(), "never loaded");
    source.load().unwrap();
    assert!(!source.changed());
    std::fs::write(&key, rsa_pem()).unwrap();
    assert!(source.changed(), "the key file changed");
    source.load().unwrap();
    assert!(!source.changed());
    // A broken file is refused, and is not reported again until it changes.
    std::fs::write(&path, "broken = [").unwrap();
    assert!(source.changed());
    assert!(source.load().is_err());
    assert!(!source.changed(), "the failed attempt is remembered");
    std::fs::write(&path, ISSUER).unwrap();
    assert!(source.changed());
    assert_eq!(source.load().unwrap().issuers.len(), 1);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Whatever the file holds, the answer is a config or a one-line error.
    #[test]
    fn any_text_is_a_config_or_a_one_line_error(
        text in r#"(\[\[issuers\]\]\n|\[tls\]\n|[a-z_]{1,20} = ("[^"\n]{0,40}"|-?[0-9]{1,6}|\[("[^"\n]{0,20}",? ?){0,3}\]|true)\n|[^\n]{0,30}\n){0,8}"#
    ) {
        let line = cli(&[]);
        let loaded = parse(&text, std::path::Path::new("/nonexistent/config.toml"))
            .and_then(|file| validate(&Layer::defaults(), &line.env, Some(&file), &line.command_line));
        match loaded {
            Ok(config) => proptest::prop_assert!(!config.issuers.is_empty()),
            Err(e) => proptest::prop_assert!(!e.to_string().contains('\n'), "{}", e),
        }
    }
}

/// A key or config file that states no size (a device, a file in /proc)
/// is still read only up to the limit: `jwks_file = "/dev/zero"` was read
/// until memory ran out, as its size reads 0.
#[test]
fn files_are_read_up_to_the_limit_whatever_size_they_state() {
    let err = read_text(Path::new("/dev/zero"), 1024).unwrap_err();
    assert!(err.contains("larger than 1024 bytes"), "{err}");
    let dir = std::env::temp_dir().join(format!("clerk-introspect-read-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("exact.txt");
    std::fs::write(&file, "x".repeat(1024)).unwrap();
    assert_eq!(read_text(&file, 1024).unwrap().len(), 1024);
    assert!(read_text(&file, 1023).unwrap_err().contains("larger than 1023 bytes"));
    std::fs::remove_dir_all(&dir).unwrap();
}
