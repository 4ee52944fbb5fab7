//! The `clerk-introspect` binary: parse the command line, validate the
//! configuration before binding anything, then run the chosen command.

use std::process::ExitCode;

use clap::Parser;
use clerk_introspect::ServeOptions;
use clerk_introspect::config::{Cli, Command, Config, MetricsListen, ServeArgs};
use clerk_introspect::telemetry::otel::{OtelConfig, OtelPipeline};
use clerk_introspect::telemetry::{self, LogFormat};
use tokio::net::TcpListener;

/// Exit code for bad configuration (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;
/// Exit code when the service cannot run (BSD `EX_UNAVAILABLE`).
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints a table on stdout; keep its log quiet unless asked.
    let default_level = if matches!(cli.command, Command::Demo(_)) { "warn" } else { "info" };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            clerk_introspect::telemetry::init(cli.log_format, default_level, None);
            eprintln!("clerk-introspect: cannot start the async runtime: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args, cli.log_format, default_level).await,
            Command::Demo(args) => {
                clerk_introspect::telemetry::init(cli.log_format, default_level, None);
                match clerk_introspect::demo::run(args).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("clerk-introspect demo: {e}");
                        ExitCode::from(EX_UNAVAILABLE)
                    }
                }
            }
        }
    })
}

async fn serve(args: ServeArgs, log_format: LogFormat, default_level: &str) -> ExitCode {
    // OpenTelemetry first: the exporters need the runtime, and the log
    // subscriber needs the tracer.
    let otel = match OtelConfig::from_env().map(|c| (OtelPipeline::start(&c), c)) {
        Ok((Ok(p), c)) => {
            telemetry::init(log_format, default_level, p.tracer());
            if p.is_active() {
                tracing::info!(
                    traces = c.traces_endpoint.as_deref().unwrap_or("off"),
                    metrics = c.metrics_endpoint.as_deref().unwrap_or("off"),
                    service = %c.service_name,
                    "exporting OpenTelemetry over OTLP/gRPC"
                );
            }
            p
        }
        Ok((Err(e), _)) => {
            telemetry::init(log_format, default_level, None);
            eprintln!("clerk-introspect: invalid configuration: {}", error_chain(&e));
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            telemetry::init(log_format, default_level, None);
            eprintln!("clerk-introspect: invalid configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let code = serve_with_telemetry(&args, otel.meter()).await;
    // Flush what is buffered (spans, the last metric values) before exiting.
    match tokio::task::spawn_blocking(move || otel.shutdown()).await {
        Ok(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "OpenTelemetry export at shutdown failed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "OpenTelemetry shutdown failed"),
    }
    code
}

async fn serve_with_telemetry(args: &ServeArgs, meter: Option<opentelemetry::metrics::Meter>) -> ExitCode {
    let mut config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("clerk-introspect: invalid configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    config.telemetry.meter = meter;
    let metrics_listener = match args.metrics_listen {
        MetricsListen::Off => None,
        MetricsListen::Addr(addr) => match TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("clerk-introspect: cannot listen on {addr} (--metrics-listen): {e}");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        },
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("clerk-introspect: cannot listen on {} (--listen): {e}", args.listen);
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let options = ServeOptions { metrics_listener };
    match clerk_introspect::run_with(listener, config, options, clerk_introspect::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clerk-introspect: {}", error_chain(&e));
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
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
