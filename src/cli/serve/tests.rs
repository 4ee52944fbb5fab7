use std::time::Duration;

use clap::{CommandFactory, Parser};

use super::*;
use crate::cli::Cli;
use crate::config::{Config, ConfigError, ConnectionSettings, MetricsListen};
use crate::keys::RefreshSettings;
use crate::keys::jwk::Algorithm;
use crate::telemetry::LogFormat;
use crate::verify::{Policy, TokenKind};

/// `serve` with `args` on the command line (and this process's environment).
fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
    let mut full = vec!["clerk-introspect", "serve"];
    full.extend_from_slice(args);
    match Cli::try_parse_from(full)?.command {
        crate::cli::Command::Serve(a) => Ok(*a),
        _ => unreachable!(),
    }
}

fn config(args: &[&str]) -> Result<Config, ConfigError> {
    serve(args).unwrap_or_else(|e| panic!("{args:?}: {e}")).loader().load()
}

#[test]
fn cli_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn every_setting_with_a_flag_is_a_flag_with_its_env_and_default() {
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").unwrap();
    for &setting in Setting::ALL {
        let meta = setting.meta();
        let arg = serve.get_arguments().find(|a| a.get_long() == Some(meta.flag));
        if meta.flag.is_empty() {
            continue;
        }
        let arg = arg.unwrap_or_else(|| panic!("no flag --{}", meta.flag));
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(meta.env), "{setting:?}");
        let defaults: Vec<_> = arg.get_default_values().iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        match (meta.kind, meta.default) {
            (Kind::Switch, _) => {}
            (_, Some(d)) => assert_eq!(defaults.join(","), d, "{setting:?}"),
            (_, None) => assert!(defaults.is_empty(), "{setting:?}"),
        }
    }
}

#[test]
fn defaults_follow_the_contract() {
    let config = config(&["--issuer", "https://clerk.example.com"]).unwrap();
    assert_eq!(config.listen, "0.0.0.0:50051".parse().unwrap());
    let issuer = &config.issuers[0];
    assert_eq!(issuer.issuer, "https://clerk.example.com");
    assert_eq!(issuer.policy, Policy::default());
    assert_eq!(issuer.policy.roles, vec!["authenticated"]);
    assert_eq!(issuer.policy.clock_skew, Duration::from_secs(5));
    assert_eq!(issuer.refresh, RefreshSettings::default());
    assert_eq!(config.token_cache_size, 100_000);
    assert_eq!(config.metrics_listen, MetricsListen::Addr("0.0.0.0:9464".parse().unwrap()));
}

#[test]
fn token_cache_size_is_bounded_and_can_be_disabled() {
    assert_eq!(config(&["--issuer", "https://a.example.com", "--token-cache-size", "0"]).unwrap().token_cache_size, 0);
    let huge = config(&["--issuer", "https://a.example.com", "--token-cache-size", "100000000"]).unwrap_err();
    assert_eq!(huge.flag, "--token-cache-size");
    assert!(serve(&["--issuer", "https://a.example.com", "--token-cache-size", "-1"]).is_err());
}

#[test]
fn repeatable_flags() {
    let config = config(&[
        "--issuer",
        "https://a.example.com",
        "--issuer",
        "http://127.0.0.1:8080",
        "--role",
        "authenticated",
        "--role",
        "admin",
        "--authorized-party",
        "https://app.example.com",
        "--audience",
        "api",
        "--clock-skew",
        "0",
        "--algorithm",
        "RS256",
        "--accept-token-kind",
        "machine",
    ])
    .unwrap();
    assert_eq!(config.issuers.len(), 2);
    let p = &config.issuers[1].policy;
    assert_eq!(p.roles, vec!["authenticated", "admin"]);
    assert_eq!(p.authorized_parties, vec!["https://app.example.com"]);
    assert_eq!(p.audiences, vec!["api"]);
    assert_eq!(p.clock_skew, Duration::ZERO);
    assert!(p.algorithms.contains(Algorithm::RS256) && !p.algorithms.contains(Algorithm::ES256));
    assert!(p.token_kinds.contains(TokenKind::Machine) && p.token_kinds.contains(TokenKind::Session));
    let listed = self::config(&["--issuer", "https://a.example.com,https://b.example.com"]).unwrap();
    assert_eq!(listed.issuers.len(), 2, "comma-separated, as in the environment");
}

#[test]
fn bad_configuration_names_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "--issuer"),
        (&["--issuer", "http://clerk.example.com"], "--issuer"),
        (&["--issuer", "clerk.example.com"], "--issuer"),
        (&["--issuer", "https://a.example.com", "--issuer", "https://a.example.com"], "--issuer"),
        (&["--issuer", "https://a.example.com?x=1"], "--issuer"),
        (&["--issuer", "https://a.example.com", "--clock-skew", "3600"], "--clock-skew"),
        (&["--issuer", "https://a.example.com", "--unknown-kid-cooldown", "0s"], "--unknown-kid-cooldown"),
        (&["--issuer", "https://a.example.com", "--role", ""], "--role"),
        (&["--issuer", "https://a.example.com", "--max-key-staleness", "1m"], "--max-key-staleness"),
        (&["--issuer", "https://a.example.com", "--watch-interval", "10ms"], "--watch-interval"),
        (&["--issuer", "https://a.example.com", "--tls-client-ca", "/ca.pem"], "--tls-client-ca"),
        (&["--issuer", "https://a.example.com", "--authz-identity-header", "user-id=host"], "--authz-identity-header"),
    ];
    for (args, flag) in cases {
        let err = config(args).unwrap_err();
        assert_eq!(err.flag, *flag, "{args:?}: {err}");
        assert!(!err.to_string().contains('\n'), "one line: {err}");
    }
    let http = config(&["--issuer", "http://clerk.example.com"]).unwrap_err();
    assert!(http.problem.contains("loopback"), "{http}");
}

#[test]
fn connection_settings_default_parse_and_are_checked() {
    let config = |extra: &[&str]| {
        let mut args = vec!["--issuer", "https://a.example.com"];
        args.extend_from_slice(extra);
        self::config(&args)
    };
    let default = config(&[]).unwrap().connections;
    assert_eq!(
        default,
        ConnectionSettings {
            max_age: None,
            max_age_grace: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            call_timeout: Duration::from_secs(30),
            max_idle: Some(Duration::from_secs(300)),
            max_calls: 2048,
            max_request_bytes: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(5),
            max_streams_per_connection: 100,
        }
    );
    assert_eq!(default, ConnectionSettings::default());
    let set = config(&[
        "--max-connection-age",
        "10m",
        "--max-connection-age-grace",
        "30s",
        "--handshake-timeout",
        "3s",
        "--max-connections",
        "100",
        "--call-timeout",
        "1m",
        "--max-connection-idle",
        "off",
        "--max-calls-in-flight",
        "50",
        "--max-request-bytes",
        "512KiB",
        "--request-timeout",
        "2s",
        "--max-streams-per-connection",
        "16",
    ])
    .unwrap()
    .connections;
    assert_eq!(
        set,
        ConnectionSettings {
            max_age: Some(Duration::from_secs(600)),
            max_age_grace: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(3),
            max_connections: 100,
            call_timeout: Duration::from_secs(60),
            max_idle: None,
            max_calls: 50,
            max_request_bytes: 512 * 1024,
            request_timeout: Duration::from_secs(2),
            max_streams_per_connection: 16,
        }
    );
    for (flag, value) in [
        ("--max-connection-idle", "0s"),
        ("--max-calls-in-flight", "0"),
        ("--max-request-bytes", "64KiB"),
        ("--max-request-bytes", "2GiB"),
        ("--request-timeout", "50ms"),
        ("--request-timeout", "31s"),
        ("--max-streams-per-connection", "0"),
        ("--handshake-timeout", "0s"),
        ("--call-timeout", "500ms"),
        ("--max-connections", "0"),
        ("--max-connections", "1000001"),
    ] {
        assert_eq!(config(&[flag, value]).unwrap_err().flag, flag, "{flag} {value}");
    }
    assert_eq!(config(&["--max-connection-age", "OFF"]).unwrap().connections.max_age, None);
    let zero = config(&["--max-connection-age", "0s"]).unwrap_err();
    assert_eq!(zero.flag, "--max-connection-age");
    assert!(zero.problem.contains("off for no limit"), "{zero}");
    let bad = serve(&["--issuer", "https://a.example.com", "--max-connection-age", "soon"]).unwrap_err();
    assert!(bad.to_string().contains("or off"), "{bad}");
}

#[test]
fn metrics_listen_and_log_format() {
    let listen = |extra: &[&str]| {
        let mut args = vec!["--issuer", "https://a.example.com"];
        args.extend_from_slice(extra);
        config(&args).unwrap().metrics_listen
    };
    assert_eq!(listen(&["--metrics-listen", "off"]), MetricsListen::Off);
    assert_eq!(listen(&["--metrics-listen", "127.0.0.1:0"]), MetricsListen::Addr("127.0.0.1:0".parse().unwrap()));
    let err = serve(&["--issuer", "https://a.example.com", "--metrics-listen", "9464"]).unwrap_err();
    assert!(err.to_string().contains("--metrics-listen"), "{err}");
    let cli = Cli::try_parse_from(["clerk-introspect", "demo", "--log-format", "json"]).unwrap();
    assert_eq!(cli.log_format, LogFormat::Json);
    assert!(Cli::try_parse_from(["clerk-introspect", "--log-format", "xml", "demo"]).is_err());
}

#[test]
fn authorized_parties_must_be_origins() {
    let config = |party: &str| self::config(&["--issuer", "https://a.example.com", "--authorized-party", party]);
    for origin in ["https://app.example.com", "http://localhost:3000", "my-native-app"] {
        assert!(config(origin).is_ok(), "{origin}");
    }
    for (bad, fix) in [
        ("https://app.example.com/", "\"https://app.example.com\""),
        ("http://localhost:3000/app", "\"http://localhost:3000\""),
    ] {
        let err = config(bad).unwrap_err().to_string();
        assert!(err.starts_with("--authorized-party: "), "{err}");
        assert!(err.contains(&format!("use {fix}")), "{err}");
    }
}

#[test]
fn symmetric_algorithms_cannot_be_configured() {
    let err = serve(&["--issuer", "https://a.example.com", "--algorithm", "HS256"]).unwrap_err();
    assert!(err.to_string().contains("shared-secret"), "{err}");
    assert!(serve(&["--issuer", "https://a.example.com", "--algorithm", "none"]).is_err());
}

#[test]
fn ext_authz_flags_reach_the_config() {
    let c = config(&[
        "--issuer",
        "https://clerk.example.com",
        "--authz-token-header",
        "X-Clerk-Token",
        "--authz-session-cookie",
        "session",
        "--authz-identity-header",
        "user-id",
        "--authz-identity-header",
        "org-id=x-tenant",
        "--authz-claim-header",
        "email=x-user-email",
        "--authz-bypass-cors-preflight",
        "false",
        "--authz-unavailable",
        "error-response",
    ])
    .unwrap()
    .authz;
    assert_eq!(c.token_header, "x-clerk-token");
    assert_eq!(c.session_cookie.as_deref(), Some("session"));
    assert_eq!(c.managed_headers().collect::<Vec<_>>(), ["x-clerk-user-id", "x-tenant", "x-user-email"]);
    assert!(!c.bypass_cors_preflight);
    assert_eq!(c.unavailable, crate::config::authz::UnavailableMode::ErrorResponse);
    let no_cookie = config(&["--issuer", "https://clerk.example.com", "--authz-no-cookie"]).unwrap();
    assert_eq!(no_cookie.authz.session_cookie, None);
    let defaults = config(&["--issuer", "https://clerk.example.com"]).unwrap();
    assert_eq!(defaults.authz, crate::config::authz::AuthzConfig::default());
}

#[test]
fn the_command_line_wins_over_the_environment_layer() {
    let mut args = parse(["--clock-skew", "9", "--issuer", "https://a.example.com"]).unwrap();
    args.env.set_strs(Setting::ClockSkew, &["20".into()], Origin::Env(Setting::ClockSkew)).unwrap();
    args.env.set_strs(Setting::Roles, &["a".into()], Origin::Env(Setting::Roles)).unwrap();
    let config = args.loader().load().unwrap();
    assert_eq!(config.issuers[0].policy.clock_skew, Duration::from_secs(9));
    assert_eq!(config.issuers[0].policy.roles, ["a"], "the environment fills what the command line leaves out");
}
