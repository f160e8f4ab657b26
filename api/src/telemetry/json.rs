//! `STRATA_LOG_FORMAT=json`: one JSON object per line, the layout of
//! `tracing-subscriber`'s JSON format (`timestamp`, `level`, `target`,
//! `fields`, `span`, `spans`) plus `trace_id` and `span_id` of the
//! OpenTelemetry span the event was written in (absent when traces are not
//! exported), so a log line finds its trace.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON event format.
pub(super) struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        line.insert("level".into(), metadata.level().as_str().into());
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        line.insert("fields".into(), Value::Object(fields.0));
        line.insert("target".into(), metadata.target().into());
        if let Some(current) = ctx.lookup_current() {
            let spans: Vec<Value> = current.scope().from_root().map(|span| span_object(&span)).collect();
            line.insert("span".into(), span_object(&current));
            line.insert("spans".into(), Value::Array(spans));
            let id = current.id();
            drop(current);
            // No span extension is held here, as `get_otel_context` requires.
            let context = tracing::dispatcher::get_default(|dispatch| tracing_opentelemetry::get_otel_context(&id, dispatch));
            if let Some(context) = context {
                let span = context.span();
                let span_context = span.span_context();
                if span_context.is_valid() {
                    line.insert("trace_id".into(), span_context.trace_id().to_string().into());
                    line.insert("span_id".into(), span_context.span_id().to_string().into());
                }
            }
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// A span as `{"name", <its fields as the fmt layer recorded them>}`.
fn span_object<'a, R: LookupSpan<'a>>(span: &tracing_subscriber::registry::SpanRef<'a, R>) -> Value {
    let mut object = Map::new();
    object.insert("name".into(), span.name().into());
    let extensions = span.extensions();
    if let Some(fields) = extensions.get::<FormattedFields<tracing_subscriber::fmt::format::DefaultFields>>() {
        if !fields.fields.is_empty() {
            object.insert("fields".into(), fields.fields.as_str().into());
        }
    }
    Value::Object(object)
}

/// Collects an event's fields as JSON values.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}
