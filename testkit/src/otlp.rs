//! A test OTLP/HTTP receiver: accepts `POST /v1/traces` and `/v1/metrics`,
//! decodes the real protobuf (opentelemetry-proto) and keeps what arrived,
//! flattened into spans and metric points that tests can query.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;
use salvo::http::StatusCode;
use salvo::{Depot, FlowCtrl, Handler, Request, Response, Router, Service, async_trait};

/// An attribute value, as far as these tests care.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A float.
    Double(f64),
    /// Anything else, rendered.
    Other(String),
}

impl Attr {
    /// The value as a string (integers and booleans rendered).
    pub fn as_string(&self) -> String {
        match self {
            Self::Str(s) | Self::Other(s) => s.clone(),
            Self::Int(i) => i.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::Double(d) => d.to_string(),
        }
    }
}

/// Attributes by key.
pub type Attrs = BTreeMap<String, Attr>;

/// One span as received.
#[derive(Debug, Clone)]
pub struct Span {
    /// The resource's attributes (`service.name`...).
    pub resource: Attrs,
    /// Span name.
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// 1 internal, 2 server, 3 client.
    pub kind: i32,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    /// The span's attributes.
    pub attrs: Attrs,
    /// Its events: name and attributes, in order.
    pub events: Vec<(String, Attrs)>,
}

impl Span {
    /// `service.name` of the daemon that sent it.
    pub fn service(&self) -> String {
        string(&self.resource, "service.name").unwrap_or_default()
    }

    /// An attribute as a string, if present.
    pub fn attr(&self, key: &str) -> Option<String> {
        string(&self.attrs, key)
    }
}

fn string(attrs: &Attrs, key: &str) -> Option<String> {
    attrs.get(key).map(Attr::as_string)
}

/// Span kinds, as OTLP numbers them.
pub const SPAN_KIND_SERVER: i32 = 2;
/// See [`SPAN_KIND_SERVER`].
pub const SPAN_KIND_CLIENT: i32 = 3;
/// Span status "error".
pub const STATUS_ERROR: i32 = 2;

/// One data point of one metric, as received.
#[derive(Debug, Clone)]
pub struct Point {
    /// The resource's attributes.
    pub resource: Attrs,
    /// Metric name.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// `histogram`, `sum` or `gauge`.
    pub kind: &'static str,
    /// 1 delta, 2 cumulative.
    pub temporality: i32,
    /// The point's attributes.
    pub attrs: Attrs,
    /// Histogram count, or the sum's value.
    pub count: f64,
    /// Histogram bucket boundaries.
    pub bounds: Vec<f64>,
    /// Start of the point's time window, ns.
    pub start_time: u64,
    /// End of the point's time window, ns.
    pub time: u64,
}

impl Point {
    /// `service.name` of the daemon that sent it.
    pub fn service(&self) -> String {
        string(&self.resource, "service.name").unwrap_or_default()
    }

    /// An attribute as a string, if present.
    pub fn attr(&self, key: &str) -> Option<String> {
        string(&self.attrs, key)
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<Span>,
    points: Vec<Point>,
    /// Raw request bodies that did not decode (should stay empty).
    undecodable: usize,
    /// `Content-Type` of every request.
    content_types: Vec<String>,
}

/// A running receiver.
#[derive(Debug, Clone)]
pub struct OtlpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Received>>,
}

impl OtlpReceiver {
    /// Starts a receiver on `127.0.0.1:0` for the rest of the test.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener)
    }

    /// Starts a receiver on `listener`, for the rest of the process.
    pub fn start_on(listener: tokio::net::TcpListener) -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let router = Router::new()
            .push(Router::with_path("v1/traces").post(Sink {
                received: received.clone(),
                traces: true,
            }))
            .push(Router::with_path("v1/metrics").post(Sink {
                received: received.clone(),
                traces: false,
            }));
        let addr = listener.local_addr().unwrap();
        let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(listener).unwrap();
        tokio::spawn(salvo::Server::new(acceptor).try_serve(Service::new(router)));
        Self { addr, received }
    }

    /// `http://ADDR`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Every metric point received so far (cumulative metrics repeat on
    /// each export; the newest comes last).
    pub fn points(&self) -> Vec<Point> {
        self.received.lock().unwrap().points.clone()
    }

    /// The newest point of `name` from `service` whose attributes include all of `attrs`.
    pub fn latest(&self, service: &str, name: &str, attrs: &[(&str, &str)]) -> Option<Point> {
        self.points().into_iter().rev().find(|p| {
            p.name == name
                && p.service() == service
                && attrs.iter().all(|(k, v)| p.attr(k).as_deref() == Some(*v))
        })
    }

    /// Requests whose body did not decode as OTLP protobuf.
    pub fn undecodable(&self) -> usize {
        self.received.lock().unwrap().undecodable
    }

    /// Content types of every request received.
    pub fn content_types(&self) -> Vec<String> {
        self.received.lock().unwrap().content_types.clone()
    }
}

struct Sink {
    received: Arc<Mutex<Received>>,
    traces: bool,
}

#[async_trait]
impl Handler for Sink {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = req.payload_with_max_size(64 << 20).await.cloned();
        let mut received = self.received.lock().unwrap();
        received.content_types.push(content_type);
        let decoded = match body {
            Ok(body) if self.traces => ExportTraceServiceRequest::decode(body.as_ref())
                .map(|r| received.spans.extend(flatten_spans(r))),
            Ok(body) => ExportMetricsServiceRequest::decode(body.as_ref())
                .map(|r| received.points.extend(flatten_points(r))),
            Err(_) => {
                received.undecodable += 1;
                return res.status_code(StatusCode::BAD_REQUEST).render("bad body");
            }
        };
        if decoded.is_err() {
            received.undecodable += 1;
            res.status_code(StatusCode::BAD_REQUEST);
        } else {
            res.headers_mut().insert(
                "content-type",
                salvo::http::HeaderValue::from_static("application/x-protobuf"),
            );
            let _ = res.write_body(Vec::new());
        }
    }
}

fn attrs(kvs: &[KeyValue]) -> Attrs {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect()
}

fn value(v: Option<&AnyValue>) -> Attr {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Attr::Str(s.clone()),
        Some(any_value::Value::IntValue(i)) => Attr::Int(*i),
        Some(any_value::Value::BoolValue(b)) => Attr::Bool(*b),
        Some(any_value::Value::DoubleValue(d)) => Attr::Double(*d),
        other => Attr::Other(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn flatten_spans(req: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let resource = rs
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    resource: resource.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    kind: s.kind,
                    status_code: s.status.map_or(0, |st| st.code),
                    attrs: attrs(&s.attributes),
                    events: s
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attrs(&e.attributes)))
                        .collect(),
                });
            }
        }
    }
    out
}

fn flatten_points(req: ExportMetricsServiceRequest) -> Vec<Point> {
    let mut out = Vec::new();
    for rm in req.resource_metrics {
        let resource = rm
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                let base =
                    |kind, temporality, a: &[KeyValue], count, bounds, start_time, time| Point {
                        resource: resource.clone(),
                        name: m.name.clone(),
                        unit: m.unit.clone(),
                        kind,
                        temporality,
                        attrs: attrs(a),
                        count,
                        bounds,
                        start_time,
                        time,
                    };
                match &m.data {
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            out.push(base(
                                "histogram",
                                h.aggregation_temporality,
                                &p.attributes,
                                p.count as f64,
                                p.explicit_bounds.clone(),
                                p.start_time_unix_nano,
                                p.time_unix_nano,
                            ));
                        }
                    }
                    Some(Data::Gauge(g)) => {
                        for p in &g.data_points {
                            out.push(base(
                                "gauge",
                                0,
                                &p.attributes,
                                number(p),
                                Vec::new(),
                                p.start_time_unix_nano,
                                p.time_unix_nano,
                            ));
                        }
                    }
                    Some(Data::Sum(s)) => {
                        for p in &s.data_points {
                            let v = number(p);
                            out.push(base(
                                "sum",
                                s.aggregation_temporality,
                                &p.attributes,
                                v,
                                Vec::new(),
                                p.start_time_unix_nano,
                                p.time_unix_nano,
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

fn number(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    match p.value {
        Some(Value::AsInt(i)) => i as f64,
        Some(Value::AsDouble(d)) => d,
        None => 0.0,
    }
}
