//! OpenTelemetry: OTLP/gRPC export of traces and metrics, configured by the
//! standard environment variables and off when no endpoint is set.
//!
//! | variable | meaning |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | collector for traces and metrics, e.g. `http://otel-collector:4317`; unset: no export |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` | per-signal collector (wins over the generic one) |
//! | `OTEL_SERVICE_NAME` | `service.name` (default `clerk-introspect`) |
//! | `OTEL_RESOURCE_ATTRIBUTES` | `key=value,...` resource attributes (values percent-decoded) |
//! | `OTEL_SDK_DISABLED` | `true`: no export at all |
//! | `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` | `otlp` (default) or `none` |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` (and per signal) | only `grpc` is supported |
//!
//! The exporter and SDK also read, themselves, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `..._TIMEOUT`, `..._COMPRESSION`, `..._INSECURE`, `OTEL_BSP_*`,
//! `OTEL_METRIC_EXPORT_INTERVAL` and `OTEL_TRACES_SAMPLER`.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;

use crate::config::ConfigError;

/// `service.name` when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "clerk-introspect";
/// The instrumentation scope of our spans and metrics.
pub const SCOPE: &str = "clerk-introspect";
/// Longest wait for the final export at shutdown, per signal.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What to export, read from the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtelConfig {
    /// Collector for traces; `None`: traces are not exported.
    pub traces_endpoint: Option<String>,
    /// Collector for metrics; `None`: metrics are not exported over OTLP.
    pub metrics_endpoint: Option<String>,
    /// `service.name`.
    pub service_name: String,
    /// Other resource attributes, in order.
    pub resource_attributes: Vec<(String, String)>,
}

impl OtelConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `var` (tests pass a map).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let disabled = match get("OTEL_SDK_DISABLED").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ConfigError::new("OTEL_SDK_DISABLED", format!("{other:?} is neither true nor false")));
            }
        };
        let mut resource_attributes = match get("OTEL_RESOURCE_ATTRIBUTES") {
            Some(raw) => {
                parse_resource_attributes(&raw).map_err(|p| ConfigError::new("OTEL_RESOURCE_ATTRIBUTES", p))?
            }
            None => Vec::new(),
        };
        let named =
            resource_attributes.iter().position(|(k, _)| k == "service.name").map(|i| resource_attributes.remove(i).1);
        let service_name = get("OTEL_SERVICE_NAME").or(named).unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
        for var_name in
            ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"]
        {
            if let Some(p) = get(var_name)
                && p != "grpc"
            {
                return Err(ConfigError::new(
                    var_name,
                    format!(
                        "{p:?} is not supported; this build exports OTLP over gRPC only (set it to grpc, or unset it)"
                    ),
                ));
            }
        }
        let signal = |exporter_var: &str, endpoint_var: &str| -> Result<Option<String>, ConfigError> {
            match get(exporter_var).as_deref() {
                None | Some("otlp") => {}
                Some("none") => return Ok(None),
                Some(other) => {
                    return Err(ConfigError::new(
                        exporter_var,
                        format!("{other:?} is not supported; use otlp or none"),
                    ));
                }
            }
            let (var_name, endpoint) = match get(endpoint_var) {
                Some(e) => (endpoint_var, e),
                None => match get("OTEL_EXPORTER_OTLP_ENDPOINT") {
                    Some(e) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
                    None => return Ok(None),
                },
            };
            check_endpoint(&endpoint).map_err(|p| ConfigError::new(var_name, p))?;
            Ok(Some(endpoint))
        };
        let traces_endpoint = signal("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")?;
        let metrics_endpoint = signal("OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")?;
        if disabled {
            return Ok(Self { traces_endpoint: None, metrics_endpoint: None, service_name, resource_attributes });
        }
        Ok(Self { traces_endpoint, metrics_endpoint, service_name, resource_attributes })
    }

    /// Whether anything is exported.
    pub fn enabled(&self) -> bool {
        self.traces_endpoint.is_some() || self.metrics_endpoint.is_some()
    }

    /// The resource: service name and version, the SDK's own attributes,
    /// then `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn resource(&self) -> Resource {
        let mut builder = Resource::builder_empty()
            .with_detector(Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        builder =
            builder.with_attributes(self.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
        builder.with_service_name(self.service_name.clone()).build()
    }
}

/// An endpoint must be an absolute http(s) URL.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri =
        endpoint.parse().map_err(|_| format!("{endpoint:?} is not a URL; use e.g. http://otel-collector:4317"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => {
            Err(format!("{endpoint:?} must be an http:// or https:// URL with a host, e.g. http://otel-collector:4317"))
        }
    }
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas,
/// values percent-decoded (W3C Baggage octet rules).
pub fn parse_resource_attributes(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        let v = percent_decode(v.trim()).ok_or_else(|| format!("the value of {k} has a bad percent escape"))?;
        out.push((k.to_owned(), v));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What the OpenTelemetry layer exports: the RPC server spans (DEBUG, see
/// [`super::RPC_TARGET`]), our other spans and events at INFO and above,
/// and nothing from the HTTP/gRPC stack or the SDK itself (whose own export
/// calls would otherwise be traced and exported, without end).
pub fn layer_filter() -> Targets {
    Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target(super::RPC_TARGET, LevelFilter::DEBUG)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("reqwest", LevelFilter::OFF)
        .with_target("rustls", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF)
}

/// Why the exporters could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP {signal} exporter: {source}")]
pub struct OtelError {
    signal: &'static str,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The running exporters. Keep it until the server has stopped, then call
/// [`OtelPipeline::shutdown`] to flush.
#[derive(Debug, Default)]
pub struct OtelPipeline {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl OtelPipeline {
    /// Builds the exporters for `config` (nothing when it exports nothing).
    /// Must run inside a Tokio runtime.
    pub fn start(config: &OtelConfig) -> Result<Self, OtelError> {
        let resource = config.resource();
        let tracer_provider = match &config.traces_endpoint {
            None => None,
            Some(endpoint) => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .build()
                    .map_err(|source| OtelError { signal: "trace", source })?;
                Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.clone()).build())
            }
        };
        let meter_provider = match &config.metrics_endpoint {
            None => None,
            Some(endpoint) => {
                let exporter = opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .build()
                    .map_err(|source| OtelError { signal: "metrics", source })?;
                Some(SdkMeterProvider::builder().with_periodic_exporter(exporter).with_resource(resource).build())
            }
        };
        Ok(Self { tracer_provider, meter_provider })
    }

    /// The tracer for the `tracing` bridge, when traces are exported.
    pub fn tracer(&self) -> Option<opentelemetry_sdk::trace::Tracer> {
        self.tracer_provider.as_ref().map(|p| p.tracer(SCOPE))
    }

    /// The meter for our instruments, when metrics are exported.
    pub fn meter(&self) -> Option<opentelemetry::metrics::Meter> {
        use opentelemetry::metrics::MeterProvider as _;
        self.meter_provider.as_ref().map(|p| p.meter(SCOPE))
    }

    /// Whether anything is exported.
    pub fn is_active(&self) -> bool {
        self.tracer_provider.is_some() || self.meter_provider.is_some()
    }

    /// Flushes and stops the exporters (at most [`SHUTDOWN_TIMEOUT`] each).
    /// Blocking: call it outside async code, or through `spawn_blocking`.
    /// Returns the errors, one line each.
    pub fn shutdown(self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(p) = self.tracer_provider
            && let Err(e) = p.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            errors.push(format!("traces: {e}"));
        }
        if let Some(p) = self.meter_provider
            && let Err(e) = p.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            errors.push(format!("metrics: {e}"));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<OtelConfig, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        OtelConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn off_without_an_endpoint() {
        let c = config(&[("OTEL_SERVICE_NAME", "x")]).unwrap();
        assert!(!c.enabled());
        assert_eq!(c.service_name, "x");
        assert_eq!(config(&[]).unwrap().service_name, DEFAULT_SERVICE_NAME);
    }

    #[test]
    fn the_generic_endpoint_serves_both_signals_and_signal_endpoints_win() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).unwrap();
        assert_eq!(c.traces_endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(c.metrics_endpoint.as_deref(), Some("http://collector:4317"));
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces.example.com:4317"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ])
        .unwrap();
        assert_eq!(c.traces_endpoint.as_deref(), Some("https://traces.example.com:4317"));
        assert_eq!(c.metrics_endpoint, None);
        let c = config(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317")]).unwrap();
        assert!(c.traces_endpoint.is_some() && c.metrics_endpoint.is_none());
    }

    #[test]
    fn sdk_disabled_turns_everything_off() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SDK_DISABLED", "true")]).unwrap();
        assert!(!c.enabled());
    }

    #[test]
    fn resource_attributes_are_parsed_and_service_name_taken_from_them() {
        let c = config(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=auth, deployment.environment=prod,team=a%2Cb")])
            .unwrap();
        assert_eq!(c.service_name, "auth");
        assert_eq!(
            c.resource_attributes,
            vec![("deployment.environment".into(), "prod".into()), ("team".into(), "a,b".into())]
        );
        let c =
            config(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=auth"), ("OTEL_SERVICE_NAME", "override")]).unwrap();
        assert_eq!(c.service_name, "override");
        let r = c.resource();
        assert_eq!(r.get(&"service.name".into()).map(|v| v.to_string()), Some("override".into()));
        assert!(r.get(&"telemetry.sdk.name".into()).is_some());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")], "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            (&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")], "OTEL_EXPORTER_OTLP_PROTOCOL"),
            (&[("OTEL_TRACES_EXPORTER", "zipkin")], "OTEL_TRACES_EXPORTER"),
            (&[("OTEL_RESOURCE_ATTRIBUTES", "novalue")], "OTEL_RESOURCE_ATTRIBUTES"),
            (&[("OTEL_RESOURCE_ATTRIBUTES", "a=%zz")], "OTEL_RESOURCE_ATTRIBUTES"),
            (&[("OTEL_SDK_DISABLED", "yes")], "OTEL_SDK_DISABLED"),
        ];
        for (vars, flag) in cases {
            let err = config(vars).unwrap_err();
            assert_eq!(err.flag, *flag, "{vars:?}: {err}");
        }
        assert!(config(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).is_ok());
    }

    #[test]
    fn the_layer_filter_drops_the_transport_stack() {
        let f = layer_filter();
        let enabled = |target: &str, level: tracing::Level| f.would_enable(target, &level);
        assert!(enabled("clerk_introspect::rpc", tracing::Level::DEBUG));
        assert!(!enabled("clerk_introspect::rpc", tracing::Level::TRACE));
        assert!(enabled("clerk_introspect::keys", tracing::Level::INFO));
        assert!(!enabled("clerk_introspect::telemetry", tracing::Level::DEBUG));
        for t in ["h2::proto", "hyper_util::client", "tonic::transport", "opentelemetry_sdk", "reqwest::connect"] {
            assert!(!enabled(t, tracing::Level::ERROR), "{t}");
        }
    }
}
