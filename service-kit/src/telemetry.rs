//! OpenTelemetry: traces and metrics over OTLP/HTTP (protobuf), configured by
//! the standard `OTEL_*` variables, never on the request path.
//!
//! The two spans of every request (the SERVER span of the hoop, the CLIENT
//! span of service-b's call) are made with the OpenTelemetry API on
//! [`tracer`]: they are the hot path, and the `tracing` bridge costs a
//! subscriber lookup per attribute and per poll. The rare lifecycle
//! operations (a reload) are `tracing` spans that tracing-opentelemetry
//! bridges, and `tracing` stays the way to log. A batch processor on its own
//! thread exports spans, and a periodic reader exports cumulative metrics. A
//! collector that is down, refuses or never answers only costs that thread
//! its export timeout: the bounded queue drops what does not fit and
//! requests never wait. On exit both are flushed within a bound shorter than
//! the unit's `TimeoutStopSec=`.
//!
//! This file starts and stops the providers; recording durations is
//! [`crate::durations`]'s, trace ids and `traceparent` [`crate::trace_id`]'s.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use opentelemetry::metrics::ObservableGauge;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_semantic_conventions::resource::{
    HOST_NAME, SERVICE_INSTANCE_ID, SERVICE_VERSION,
};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterFn, LevelFilter};

use crate::logging::BoxedLayer;

/// Where OTLP goes when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset (the spec's
/// default, and where the bundled compose stack listens).
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";

/// Longest a flush on exit may take: below `TimeoutStopSec=` minus the drain.
pub const FLUSH_BOUND: Duration = Duration::from_secs(3);

/// The tracer of the request spans, once traces are on.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer for spans made with the OpenTelemetry API; `None` when traces
/// are off (or telemetry has not started), and then no span is made at all.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Which signals are on, from `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`,
/// `OTEL_METRICS_EXPORTER` and the protocol variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// Export spans.
    pub traces: bool,
    /// Export metrics.
    pub metrics: bool,
    /// Where spans go, as opentelemetry-otlp resolves it (see [`endpoint`]).
    pub traces_to: String,
    /// Where metrics go.
    pub metrics_to: String,
}

impl TelemetrySettings {
    /// Reads and checks the variables; an error names the variable.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let disabled = match var("OTEL_SDK_DISABLED").as_deref().map(str::trim) {
            None | Some("") => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => return Err(format!("OTEL_SDK_DISABLED={v:?}: expected true or false")),
        };
        let exporter = |name: &str| match var(name).as_deref().map(str::trim) {
            None | Some("") | Some("otlp") => Ok(true),
            Some("none") => Ok(false),
            Some(v) => Err(format!(
                "{name}={v:?}: this build supports \"otlp\" or \"none\""
            )),
        };
        let traces = exporter("OTEL_TRACES_EXPORTER")? && !disabled;
        let metrics = exporter("OTEL_METRICS_EXPORTER")? && !disabled;
        for name in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ] {
            match var(name).as_deref().map(str::trim) {
                None | Some("") | Some("http/protobuf") => {}
                Some(v) => {
                    return Err(format!(
                        "{name}={v:?}: this build speaks OTLP over http/protobuf only (port 4318)"
                    ));
                }
            }
        }
        Ok(Self {
            traces,
            metrics,
            traces_to: endpoint(&var, "TRACES"),
            metrics_to: endpoint(&var, "METRICS"),
        })
    }

    /// One line for `systemctl status` and `--check-config`: what is
    /// exported, and where each signal really goes.
    pub fn summary(&self) -> String {
        match (self.traces, self.metrics) {
            (false, false) => "telemetry off".to_owned(),
            (true, true) if self.traces_to == self.metrics_to => {
                format!("OTLP traces and metrics to {}", self.traces_to)
            }
            (true, true) => format!(
                "OTLP traces to {}, metrics to {}",
                self.traces_to, self.metrics_to
            ),
            (true, false) => format!("OTLP traces to {}", self.traces_to),
            (false, true) => format!("OTLP metrics to {}", self.metrics_to),
        }
    }
}

/// The running providers, kept to flush them on exit.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    /// `process.uptime`, exported at every interval even when no request
    /// comes: the heartbeat a "no data from this daemon" alert watches.
    _uptime: Option<ObservableGauge<f64>>,
    /// Where each signal goes, to check before the last flush.
    traces_to: String,
    metrics_to: String,
}

impl Telemetry {
    /// Starts the exporters `settings` asks for, installs the global meter
    /// provider and [`tracer`], and returns the layer that turns
    /// `tracing` spans (the lifecycle's) into OpenTelemetry spans. Call before creating any instrument:
    /// a meter taken earlier stays a no-op.
    pub fn start(
        settings: &TelemetrySettings,
        service: &str,
        version: &str,
    ) -> Result<(Self, Option<BoxedLayer>), String> {
        let resource = resource(service, version);
        let mut telemetry = Self {
            traces_to: settings.traces_to.clone(),
            metrics_to: settings.metrics_to.clone(),
            ..Self::default()
        };
        let mut layer = None;
        if settings.traces {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| format!("cannot set up OTLP trace export: {e}"))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource.clone())
                .build();
            let tracer = provider.tracer(service.to_owned());
            // Once per process; a second start (none happens) keeps the first.
            let _ = TRACER.set(tracer.clone());
            // Only our own spans, never events: the exporter's HTTP client
            // must not trace itself, and logs stay logs (the facts they
            // carry are the spans' attributes already).
            let ours = FilterFn::new(|meta| {
                meta.is_span()
                    && meta.target().starts_with("service_")
                    && LevelFilter::INFO >= *meta.level()
            })
            .with_max_level_hint(LevelFilter::INFO);
            layer = Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_location(false)
                    .with_threads(false)
                    .with_target(false)
                    .with_level(false)
                    // Neither busy/idle timing (two clock reads per poll) nor
                    // an active OTel context per poll: contexts are passed
                    // explicitly (span.context()), nothing reads the ambient one.
                    .with_tracked_inactivity(false)
                    .with_context_activation(false)
                    .with_filter(ours)
                    .boxed(),
            );
            telemetry.tracer = Some(provider);
        }
        if settings.metrics {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build()
                .map_err(|e| format!("cannot set up OTLP metric export: {e}"))?;
            let provider = SdkMeterProvider::builder()
                .with_periodic_exporter(exporter)
                .with_resource(resource)
                .build();
            global::set_meter_provider(provider.clone());
            let started = Instant::now();
            telemetry._uptime = Some(
                global::meter("service-kit")
                    .f64_observable_gauge("process.uptime")
                    .with_unit("s")
                    .with_description("The time the process has been running.")
                    .with_callback(move |gauge| gauge.observe(started.elapsed().as_secs_f64(), &[]))
                    .build(),
            );
            telemetry.meter = Some(provider);
        }
        Ok((telemetry, layer))
    }

    /// Drops the providers without flushing or waiting: for a daemon that
    /// never served (dropping them normally would try a last export).
    pub fn abandon(self) {
        std::mem::forget(self);
    }

    /// Flushes and stops both providers, giving up after `bound`. A signal
    /// whose collector refuses connections is not flushed at all: retrying
    /// an export nobody can receive would only hold up the exit (and, under
    /// socket activation, the connections queued for the next process).
    pub async fn shutdown(self, bound: Duration) {
        let tracer = match self.tracer {
            Some(t) if reachable("traces", &self.traces_to).await => Some(t),
            _ => None,
        };
        let meter = match self.meter {
            Some(m) if reachable("metrics", &self.metrics_to).await => Some(m),
            _ => None,
        };
        if tracer.is_none() && meter.is_none() {
            return;
        }
        let flush = tokio::task::spawn_blocking(move || {
            if let Some(tracer) = tracer
                && let Err(e) = tracer.shutdown_with_timeout(bound)
            {
                tracing::warn!("flushing traces on exit failed: {e}");
            }
            if let Some(meter) = meter
                && let Err(e) = meter.shutdown()
            {
                tracing::warn!("flushing metrics on exit failed: {e}");
            }
        });
        if tokio::time::timeout(bound, flush).await.is_err() {
            tracing::warn!(
                "telemetry not flushed within {}s; exiting anyway",
                bound.as_secs_f32()
            );
        }
    }
}

/// Where a signal's exports go, as opentelemetry-otlp resolves it: the
/// per-signal variable as given, else the base endpoint (to which it adds
/// `/v1/<signal>`), else the default.
fn endpoint(var: impl Fn(&str) -> Option<String>, signal: &str) -> String {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
        .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
}

/// Whether something accepts connections at a signal's collector,
/// `endpoint` (within 250 ms). Says so in the log when not.
async fn reachable(signal: &str, endpoint: &str) -> bool {
    let Some((host, port)) = url::Url::parse(endpoint).ok().and_then(|u| {
        Some((
            u.host_str()?.trim_matches(['[', ']']).to_owned(),
            u.port_or_known_default()?,
        ))
    }) else {
        return true; // Let the exporter report what it makes of it.
    };
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    match tokio::time::timeout(Duration::from_millis(250), connect).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(
                "OTLP collector at {endpoint} unreachable ({e}): {signal} not flushed on exit"
            );
            false
        }
        Err(_) => true, // Slow, not refused: the flush has its own bound.
    }
}

/// `service.name` (unless the variables set it), `service.version`,
/// `service.instance.id`, `host.name`, plus `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(service: &str, version: &str) -> Resource {
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim_start().starts_with("service.name="))
        });
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new(SERVICE_VERSION, version.to_owned()),
        KeyValue::new(SERVICE_INSTANCE_ID, instance_id()),
        KeyValue::new(HOST_NAME, host_name()),
    ]);
    if !named_by_env {
        builder = builder.with_service_name(service.to_owned());
    }
    builder.build()
}

/// A fresh id per process (a random UUID): tells two runs of the same
/// daemon apart.
fn instance_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The host's name, from the system call: the units' `ProcSubset=pid`
/// hides `/proc/sys/kernel/hostname`, and a name read from there would be
/// missing on every installed daemon.
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<TelemetrySettings, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TelemetrySettings::from_lookup(|k| vars.get(k).cloned())
    }

    /// Which signals are on.
    fn on(vars: &[(&str, &str)]) -> (bool, bool) {
        let s = settings(vars).unwrap();
        (s.traces, s.metrics)
    }

    #[test]
    fn both_signals_on_by_default() {
        assert_eq!(on(&[]), (true, true));
        assert_eq!(
            settings(&[]).unwrap().summary(),
            "OTLP traces and metrics to http://localhost:4318"
        );
    }

    #[test]
    fn each_signal_can_be_turned_off() {
        assert_eq!(on(&[("OTEL_SDK_DISABLED", "true")]), (false, false));
        assert_eq!(on(&[("OTEL_SDK_DISABLED", "TRUE")]), (false, false));
        assert_eq!(on(&[("OTEL_TRACES_EXPORTER", "none")]), (false, true));
        assert_eq!(on(&[("OTEL_METRICS_EXPORTER", "none")]), (true, false));
        assert_eq!(on(&[("OTEL_SDK_DISABLED", "false")]), (true, true));
        let summary = |vars: &[(&str, &str)]| settings(vars).unwrap().summary();
        assert_eq!(summary(&[("OTEL_SDK_DISABLED", "true")]), "telemetry off");
        assert_eq!(
            summary(&[("OTEL_TRACES_EXPORTER", "none")]),
            "OTLP metrics to http://localhost:4318"
        );
        assert_eq!(
            summary(&[("OTEL_METRICS_EXPORTER", "none")]),
            "OTLP traces to http://localhost:4318"
        );
    }

    #[test]
    fn each_signal_goes_to_its_own_endpoint_or_the_base() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://t:4318/v1/traces",
            ),
        ])
        .unwrap();
        assert_eq!(s.traces_to, "http://t:4318/v1/traces");
        assert_eq!(s.metrics_to, "http://base:4318");
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", " "),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://m:4318/v1/metrics",
            ),
        ])
        .unwrap();
        assert_eq!(s.traces_to, DEFAULT_ENDPOINT, "a blank variable is unset");
        assert_eq!(
            s.summary(),
            "OTLP traces to http://localhost:4318, metrics to http://m:4318/v1/metrics"
        );
    }

    #[test]
    fn the_host_is_named_and_each_process_is_an_instance() {
        let uname = std::process::Command::new("uname")
            .arg("-n")
            .output()
            .unwrap();
        assert_eq!(host_name(), String::from_utf8_lossy(&uname.stdout).trim());
        let (a, b) = (instance_id(), instance_id());
        assert_ne!(a, b);
        assert_eq!(
            uuid::Uuid::parse_str(&a).map(|u| u.get_version_num()),
            Ok(4)
        );
    }

    #[test]
    fn unsupported_values_name_the_variable() {
        for (k, v) in [
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_TRACES_EXPORTER", "jaeger"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ] {
            let err = settings(&[(k, v)]).unwrap_err();
            assert!(err.starts_with(k), "{err}");
        }
        assert!(settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).is_ok());
    }
}
