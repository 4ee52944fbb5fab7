//! The `clerk-introspect` binary: parse the command line, validate the
//! configuration before binding anything, then run the chosen command.

use std::process::ExitCode;

use std::sync::Arc;

use clap::Parser;
use clerk_introspect::app::{App, Deps};
use clerk_introspect::cli::serve::ServeArgs;
use clerk_introspect::cli::{Cli, Command};
use clerk_introspect::config::{self, MetricsListen};
use clerk_introspect::revocation::Record;
use clerk_introspect::server::webhook::WebhookListener;
use clerk_introspect::server::{Reloading, ServeOptions};
use clerk_introspect::telemetry::otel::{OtelConfig, OtelPipeline};
use clerk_introspect::telemetry::{self, LogFormat};
use tokio::net::TcpListener;

/// Exit code for bad configuration (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;
/// Exit code when the service cannot run (BSD `EX_UNAVAILABLE`).
const EX_UNAVAILABLE: u8 = 69;

/// jemalloc instead of the system allocator: a call allocates and frees
/// dozens of small buffers (HTTP/2 frames, headers, the answer), and glibc's
/// malloc was a tenth of the server's time under load. jemalloc rather than
/// mimalloc (used before) because, with its background thread on
/// ([`return_freed_memory`]), it gives memory freed after a burst back to
/// the OS within seconds; mimalloc kept it (docs/operations.md, "Memory").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Turns on jemalloc's background thread, which purges freed pages after
/// `dirty_decay_ms` (10 s) even while the server is idle; without it,
/// purging only happens inside later allocations.
fn return_freed_memory() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "cannot start the allocator's background thread; memory freed after a burst may stay with the process");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only serve logs at info by default; the other commands print to stdout.
    let default_level = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    let runtime = match clerk_introspect::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            telemetry::init(cli.log_format, default_level, None);
            eprintln!("clerk-introspect: cannot start the async runtime: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args, cli.log_format, default_level).await,
            command => {
                telemetry::init(cli.log_format, default_level, None);
                match command {
                    Command::Demo(args) => {
                        return_freed_memory();
                        match clerk_introspect::demo::run(args.listen, args.once).await {
                            Ok(()) => ExitCode::SUCCESS,
                            Err(e) => {
                                eprintln!("clerk-introspect demo: {e}");
                                ExitCode::from(EX_UNAVAILABLE)
                            }
                        }
                    }
                    Command::Verify(args) => ExitCode::from(clerk_introspect::cli::verify::run(&args).await),
                    Command::Inspect(args) => ExitCode::from(clerk_introspect::cli::inspect::run(&args)),
                    Command::CheckIssuer(args) => ExitCode::from(clerk_introspect::cli::check_issuer::run(&args).await),
                    Command::Revoke(args) => ExitCode::from(clerk_introspect::cli::revoke::run(&args).await),
                    Command::Serve(_) => unreachable!("handled above"),
                }
            }
        }
    })
}

/// `serve`: OpenTelemetry and logs first (the exporters need the runtime,
/// the log subscriber needs the tracer), then the configuration, then the
/// listeners, then serving with reload; buffered telemetry is flushed last.
async fn serve(args: ServeArgs, log_format: LogFormat, default_level: &str) -> ExitCode {
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
            eprintln!("clerk-introspect: invalid configuration: {}", clerk_introspect::error_chain(&e));
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            telemetry::init(log_format, default_level, None);
            eprintln!("clerk-introspect: invalid configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    return_freed_memory();
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

/// Where the webhook endpoint's events go: the revocation service (applied
/// on this replica at once, appended to the store for the others).
fn webhook_record(app: &App) -> Option<Arc<dyn Record>> {
    Some(app.revocation.clone())
}

async fn serve_with_telemetry(args: &ServeArgs, meter: Option<opentelemetry::metrics::Meter>) -> ExitCode {
    let loader = args.loader();
    let config = match loader.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("clerk-introspect: invalid configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if args.check_config {
        print!("{}", config::summary(&config));
        return ExitCode::SUCCESS;
    }
    let (overriding, issuer_env_ignored) = loader.overrides();
    if issuer_env_ignored {
        tracing::warn!("CLERK_ISSUER is set but ignored: with --config the issuers come from the config file");
    }
    for flag in overriding {
        tracing::info!(flag, "a flag on the command line overrides this setting for every issuer in the config file");
    }
    let admin_listener = match config.metrics_listen {
        MetricsListen::Off => None,
        MetricsListen::Addr(addr) => match TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("clerk-introspect: cannot listen on {addr} (--metrics-listen): {e}");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        },
    };
    let webhook_listener = match config.webhook.listen {
        None => None,
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                eprintln!("clerk-introspect: cannot listen on {addr} (--webhook-listen): {e}");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        },
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("clerk-introspect: cannot listen on {} (--listen): {e}", config.listen);
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let app = match App::start(&config, Deps { meter, ..Deps::default() }) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("clerk-introspect: {}", clerk_introspect::error_chain(&e));
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let webhook = match (webhook_listener, webhook_record(&app)) {
        (None, _) => None,
        (Some(listener), Some(record)) => Some(WebhookListener { listener, record }),
        (Some(listener), None) => {
            let addr = listener.local_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
            eprintln!(
                "clerk-introspect: --webhook-listen {addr}: this build has no revocation store to record webhook events in yet; leave --webhook-listen off"
            );
            return ExitCode::from(EX_USAGE);
        }
    };
    let reload =
        Reloading { loader: loader.file().is_some().then(|| Arc::new(loader)), watch_interval: config.watch_interval };
    let options = ServeOptions { admin_listener, reload: Some(reload), webhook };
    let shutdown = clerk_introspect::shutdown::signal();
    match clerk_introspect::serve(listener, app, options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clerk-introspect: {}", clerk_introspect::error_chain(&e));
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}
