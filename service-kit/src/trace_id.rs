//! Trace ids and the W3C `traceparent` header, written by hand: lower-case
//! hex without `core::fmt`, and the header without the propagator's
//! formatting and its empty `tracestate`. Cheap enough for every request.

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use salvo::http::{HeaderName, HeaderValue};

/// The W3C trace context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace id of the current request's span as 32 hex digits, if it is
/// traced.
pub fn current_trace_id() -> Option<String> {
    Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.trace_id().to_string())
    })
}

/// Lower-case hex of `bytes`, two digits a byte, into `out` (trace and span
/// ids, written without `core::fmt`).
pub fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// The W3C `traceparent` of a span: `00-<trace id>-<span id>-<flags>`, or
/// `None` for a span that is not valid (nothing to continue).
pub fn traceparent(sc: &SpanContext) -> Option<HeaderValue> {
    if !sc.is_valid() {
        return None;
    }
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&mut out[3..35], &sc.trace_id().to_bytes());
    hex_into(&mut out[36..52], &sc.span_id().to_bytes());
    hex_into(&mut out[53..55], &[sc.trace_flags().to_u8()]);
    HeaderValue::from_bytes(&out).ok()
}

/// A span context of the W3C example trace, with `flags`, for tests.
#[cfg(test)]
pub(crate) fn span(flags: opentelemetry::trace::TraceFlags) -> SpanContext {
    use opentelemetry::trace::{SpanId, TraceId, TraceState};
    SpanContext::new(
        TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
        SpanId::from(0x00f0_67aa_0ba9_02b7),
        flags,
        false,
        TraceState::NONE,
    )
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceFlags;

    use super::*;

    #[test]
    fn traceparent_is_the_w3c_header_of_a_valid_span_only() {
        assert_eq!(
            traceparent(&span(TraceFlags::SAMPLED)).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            traceparent(&span(TraceFlags::NOT_SAMPLED)).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
        assert_eq!(traceparent(&SpanContext::NONE), None);
        assert_eq!(TRACEPARENT.as_str(), "traceparent");
    }

    #[test]
    fn the_current_trace_id_is_that_of_the_current_span() {
        assert_eq!(current_trace_id(), None, "no span, no trace id");
        let cx = Context::new().with_remote_span_context(span(TraceFlags::SAMPLED));
        let _current = cx.attach();
        assert_eq!(
            current_trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn hex_digits() {
        let mut out = *b"----";
        hex_into(&mut out, &[0x0f, 0xa1]);
        assert_eq!(&out, b"0fa1");
    }
}
