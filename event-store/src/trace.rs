//! W3C trace context between processes: the `traceparent` an event is stored
//! with, a bus message travels under and a service request carries.
//!
//! Strata's spans are `tracing` spans; the composition root (the `strata`
//! binary) installs the OpenTelemetry layer when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set. Without that layer every function here is a no-op: [`current`]
//! returns `None` (nothing is stamped), [`follow`] and [`link`] change
//! nothing. So libraries only ever speak `tracing` and W3C strings; the
//! exporter stays in one place.
//!
//! A `traceparent` is `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`;
//! anything else is ignored (a consumer never fails on a foreign header).

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Says whether this process exports traces (the composition root sets it
/// with the OpenTelemetry layer); per-event trace work is skipped when not.
pub fn set_exporting(exporting: bool) {
    EXPORTING.store(exporting, Ordering::Relaxed);
}

/// True when this process exports traces.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The `traceparent` of the current span, when an OpenTelemetry layer records
/// it (otherwise `None`).
pub fn current() -> Option<String> {
    if !exporting() {
        return None;
    }
    of(&Span::current())
}

/// The `traceparent` of `span`, when an OpenTelemetry layer records it.
pub fn of(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| format(span_context))
}

/// Makes `span` a child of the remote span `traceparent` names (call it
/// before the span is entered or has children). Ignores a missing or
/// malformed value.
pub fn follow(span: &Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(parse) {
        let _ignored = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// Links `span` to the span `traceparent` names (a batch span linked to the
/// trace of each event in it). Ignores a missing or malformed value.
pub fn link(span: &Span, traceparent: Option<&str>) {
    if let Some(linked) = traceparent.and_then(parse) {
        span.add_link(linked);
    }
}

/// Parses a W3C `traceparent` (version 00) into a remote span context.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.split('-');
    let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |value: &str, len: usize| value.len() == len && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if parts.next().is_some() || version != "00" || !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// Writes a span context as a W3C `traceparent`.
pub fn format(context: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_anything_else_is_ignored() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse(value).expect("valid");
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(format(&context), value);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e47\u{0}6-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_stamped_or_followed() {
        let span = tracing::info_span!("x");
        follow(&span, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        link(&span, Some("garbage"));
        assert_eq!(of(&span), None);
        assert_eq!(current(), None);
    }
}
