//! Logs and traces of the `strata` process (README "Observability").
//!
//! - Logs go to stderr: `STRATA_LOG_FORMAT=text` (the default; colour codes
//!   only on a terminal) or `json` (one JSON object per line, with the
//!   OpenTelemetry `trace_id` and `span_id` of the span it was written in);
//!   `RUST_LOG` filters them (default `info,sqlx=warn`).
//! - Traces are exported over OTLP (http/protobuf) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//!   set and `OTEL_SDK_DISABLED` is not `true`; nothing is exported (or
//!   stamped into events) otherwise. The standard variables apply:
//!   `OTEL_SERVICE_NAME` (default `strata`), `OTEL_RESOURCE_ATTRIBUTES`,
//!   `OTEL_TRACES_SAMPLER`/`_ARG`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `OTEL_EXPORTER_OTLP_TIMEOUT`. Only `http/protobuf` is built in: another
//!   `OTEL_EXPORTER_OTLP_PROTOCOL` is refused at start.
//!   `STRATA_TRACE_FILTER` chooses the spans exported (default
//!   `info,sqlx=warn`, directives as in `RUST_LOG`).
//!
//! The spans that make one trace per order are written by the libraries
//! (`http`, `command` with `load`/`append`, `relay.publish`, `saga.trigger`,
//! `saga.step`, `service.command`, `projection.apply` linked to each event's
//! trace); [`strata_store::trace`] carries their context across processes.

use std::io::IsTerminal;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

mod json;

/// The environment variables read here (besides the `strata` flags' own,
/// [`crate::config::Overrides`]); the compose test checks against both.
pub const ENVIRONMENT: &[&str] = &[
    "RUST_LOG",
    "STRATA_LOG_FORMAT",
    "STRATA_TRACE_FILTER",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
];

/// Flushes and stops the trace exporter when dropped (at the end of `main`).
#[must_use = "dropping it stops the exporter"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: flushing the last spans failed: {error}");
            }
        }
    }
}

/// Installs the global subscriber: the log layer and, when configured, the
/// OpenTelemetry layer. Call once, before the runtime starts.
pub fn init() -> anyhow::Result<Telemetry> {
    let log_filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let format = std::env::var("STRATA_LOG_FORMAT").unwrap_or_default();
    let logs = match format.as_str() {
        "" | "text" => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(log_filter())
            .boxed(),
        "json" => tracing_subscriber::fmt::layer().event_format(json::Json).with_writer(std::io::stderr).with_filter(log_filter()).boxed(),
        other => anyhow::bail!("STRATA_LOG_FORMAT: unsupported log format {other:?}; expected text or json"),
    };
    let provider = provider()?;
    let traces = match &provider {
        Some(provider) => {
            let directives = std::env::var("STRATA_TRACE_FILTER").unwrap_or_else(|_| "info,sqlx=warn".into());
            let filter = EnvFilter::try_new(&directives).with_context(|| format!("STRATA_TRACE_FILTER={directives:?}"))?;
            Some(tracing_opentelemetry::layer().with_tracer(provider.tracer("strata")).with_filter(filter))
        }
        None => None,
    };
    tracing_subscriber::registry().with(logs).with(traces).try_init().context("installing the tracing subscriber")?;
    strata_store::trace::set_exporting(provider.is_some());
    Ok(Telemetry { provider })
}

/// The tracer provider the `OTEL_*` variables ask for, if any.
fn provider() -> anyhow::Result<Option<SdkTracerProvider>> {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"));
    if disabled || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        return Ok(None);
    }
    for name in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] {
        if let Ok(protocol) = std::env::var(name) {
            if protocol.trim() != "http/protobuf" {
                anyhow::bail!(
                    "{name}={protocol:?}: this build exports OTLP over http/protobuf only (point it at the collector's HTTP port, 4318)"
                );
            }
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build().context("building the OTLP span exporter")?;
    let service = std::env::var("OTEL_SERVICE_NAME").ok().filter(|name| !name.trim().is_empty()).unwrap_or_else(|| "strata".into());
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(opentelemetry::KeyValue::new("process.pid", i64::from(std::process::id())))
        .build();
    Ok(Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build()))
}
