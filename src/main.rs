//! The `clerk-introspect` binary: parse the command line, validate the
//! configuration before binding anything, then run the chosen command.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use clerk_introspect::config::{Cli, Command};
use tokio::net::TcpListener;

/// Exit code for bad configuration (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;
/// Exit code when the service cannot run (BSD `EX_UNAVAILABLE`).
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    // The matches tell flags given on the command line from env vars and defaults.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Only serve logs at info by default; the other commands print to stdout.
    let default_level = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    clerk_introspect::telemetry::init_logging(default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clerk-introspect: cannot start the async runtime: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let serve_matches = matches.subcommand_matches("serve");
                let (config, source) = match clerk_introspect::config::file::resolve(&args, serve_matches) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("clerk-introspect: invalid configuration: {e}");
                        return ExitCode::from(EX_USAGE);
                    }
                };
                if args.check_config {
                    print!("{}", clerk_introspect::config::file::summary(&config));
                    return ExitCode::SUCCESS;
                }
                let listener = match TcpListener::bind(config.listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("clerk-introspect: cannot listen on {} (--listen): {e}", config.listen);
                        return ExitCode::from(EX_UNAVAILABLE);
                    }
                };
                let shutdown = clerk_introspect::shutdown::signal();
                match clerk_introspect::reload::run(listener, config, source, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("clerk-introspect: {}", error_chain(&e));
                        ExitCode::from(EX_UNAVAILABLE)
                    }
                }
            }
            Command::Demo(args) => match clerk_introspect::demo::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("clerk-introspect demo: {e}");
                    ExitCode::from(EX_UNAVAILABLE)
                }
            },
            Command::Verify(args) => ExitCode::from(clerk_introspect::cli::verify::run(&args).await),
            Command::Inspect(args) => ExitCode::from(clerk_introspect::cli::inspect::run(&args)),
            Command::CheckIssuer(args) => ExitCode::from(clerk_introspect::cli::check_issuer::run(&args).await),
        }
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
