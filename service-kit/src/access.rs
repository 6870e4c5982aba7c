//! The access line: one log line per request, written by the hoop
//! ([`crate::observe`]) once the answer is decided. Its message reads on its
//! own (`journalctl` shows only it by default); its fields are for filtering.
//! Latency and trace id are formatted by hand, and only if the line is
//! written: this runs for every request.

use std::time::Duration;

use opentelemetry::trace::SpanContext;

use crate::trace_id::hex_into;

/// A latency, shown in milliseconds with three decimals; integer arithmetic,
/// because a float's formatting costs more than the rest of the line.
#[derive(Clone, Copy)]
struct Micros(u64);

impl std::fmt::Display for Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Right to left into a buffer: the three decimals, the point, the
        // whole milliseconds.
        let mut buf = [0u8; 24];
        let mut at = buf.len();
        let mut put = |digit: u64| {
            at -= 1;
            buf[at] = b'0' + (digit % 10) as u8;
        };
        let (mut whole, frac) = (self.0 / 1000, self.0 % 1000);
        put(frac);
        put(frac / 10);
        put(frac / 100);
        at -= 1;
        buf[at] = b'.';
        loop {
            at -= 1;
            buf[at] = b'0' + (whole % 10) as u8;
            whole /= 10;
            if whole == 0 {
                break;
            }
        }
        f.write_str(std::str::from_utf8(&buf[at..]).unwrap_or("?"))
    }
}

/// The trace id of a span, worked out only if a log line is written.
struct TraceId<'a>(&'a SpanContext);

impl std::fmt::Display for TraceId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.0.is_valid() {
            return f.write_str("-");
        }
        let mut out = [0u8; 32];
        hex_into(&mut out, &self.0.trace_id().to_bytes());
        f.write_str(std::str::from_utf8(&out).unwrap_or("-"))
    }
}

/// Whether the span's trace is sampled (exported), worked out only if a log
/// line is written: with head sampling below 100 %, a trace id in a log line
/// may name a trace that Jaeger never receives.
struct Sampled<'a>(&'a SpanContext);

impl std::fmt::Display for Sampled<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sc = self.0;
        match sc.is_valid() {
            true => write!(f, "{}", sc.is_sampled()),
            false => f.write_str("-"),
        }
    }
}

/// One line per request: `method` and `endpoint` (the route template),
/// `status`, `latency`, the trace id of `span`, and for a degraded answer
/// its kind and the status it stands for (`degraded`).
pub(crate) fn log_access(
    method: &str,
    endpoint: &str,
    status: u16,
    latency: Duration,
    degraded: Option<(&str, u16)>,
    span: &SpanContext,
) {
    let latency = Micros(latency.as_micros() as u64);
    let trace_id = &TraceId(span);
    let latency_ms = format_args!("{latency}");
    // Field values are only evaluated when the line is written.
    match degraded {
        Some((kind, upstream_status)) => tracing::warn!(
            target: "access",
            method, endpoint, status, latency_ms = %latency_ms,
            kind, upstream_status, trace_id = %trace_id,
            trace_sampled = %Sampled(span),
            "{method} {endpoint} {status} degraded: {kind} (upstream {upstream_status}) in {latency} ms"
        ),
        None if status >= 500 => tracing::error!(
            target: "access",
            method, endpoint, status, latency_ms = %latency_ms, trace_id = %trace_id,
            trace_sampled = %Sampled(span),
            "{method} {endpoint} {status} in {latency} ms"
        ),
        None => tracing::info!(
            target: "access",
            method, endpoint, status, latency_ms = %latency_ms, trace_id = %trace_id,
            "{method} {endpoint} {status} in {latency} ms"
        ),
    }
}

/// The line of a request whose client closed the connection before the
/// answer (status 499, as nginx logs it). A WARN: a client that gives up is
/// often the first sign that answers have become slow.
pub(crate) fn log_client_closed(
    method: &str,
    endpoint: &str,
    latency: Duration,
    span: &SpanContext,
) {
    let latency = Micros(latency.as_micros() as u64);
    let status = crate::observe::CLIENT_CLOSED;
    tracing::warn!(
        target: "access",
        method, endpoint, status, latency_ms = %format_args!("{latency}"),
        trace_id = %TraceId(span), trace_sampled = %Sampled(span),
        "{method} {endpoint} {status} client closed the connection after {latency} ms, before the answer"
    );
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId as OtelTraceId, TraceState};

    use super::*;

    #[test]
    fn latencies_in_milliseconds_with_three_decimals() {
        for (micros, shown) in [
            (0, "0.000"),
            (7, "0.007"),
            (45, "0.045"),
            (1_000, "1.000"),
            (1_001_925, "1001.925"),
            (u64::MAX, "18446744073709551.615"),
        ] {
            assert_eq!(Micros(micros).to_string(), shown);
        }
    }

    #[test]
    fn trace_ids_as_32_hex_digits_or_a_dash() {
        let id = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
        let sc = SpanContext::new(
            OtelTraceId::from(id),
            SpanId::from(1),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        assert_eq!(TraceId(&sc).to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(TraceId(&sc).to_string(), format!("{:032x}", id));
        assert_eq!(TraceId(&SpanContext::NONE).to_string(), "-");
    }

    #[test]
    fn sampled_is_true_false_or_a_dash() {
        use crate::trace_id::span;
        assert_eq!(Sampled(&span(TraceFlags::SAMPLED)).to_string(), "true");
        assert_eq!(Sampled(&span(TraceFlags::NOT_SAMPLED)).to_string(), "false");
        assert_eq!(Sampled(&SpanContext::NONE).to_string(), "-");
    }
}
