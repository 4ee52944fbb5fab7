//! The `clerk-introspect` binary: parse the command line, validate the
//! configuration before binding anything, then run the chosen command.

use std::process::ExitCode;

use clap::Parser;
use clerk_introspect::config::{Cli, Command, Config};
use tokio::net::TcpListener;

/// Exit code for bad configuration (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;
/// Exit code when the service cannot run (BSD `EX_UNAVAILABLE`).
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints a table on stdout; keep its log quiet unless asked.
    let default_level = if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info" };
    clerk_introspect::telemetry::init_logging(default_level);
    let runtime = match clerk_introspect::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clerk-introspect: cannot start the async runtime: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let config = match Config::from_args(&args) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("clerk-introspect: invalid configuration: {e}");
                        return ExitCode::from(EX_USAGE);
                    }
                };
                let listener = match TcpListener::bind(args.listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("clerk-introspect: cannot listen on {} (--listen): {e}", args.listen);
                        return ExitCode::from(EX_UNAVAILABLE);
                    }
                };
                match clerk_introspect::run(listener, config, clerk_introspect::shutdown::signal()).await {
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
