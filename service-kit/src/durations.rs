//! `http.server.request.duration` and `http.client.request.duration` as the
//! semantic conventions define them, recorded cheaply: [`Durations`] binds
//! each attribute set once and records into the bound instrument after.

use std::sync::{PoisonError, RwLock};

use opentelemetry::metrics::{BoundHistogram, Histogram};
use opentelemetry::{KeyValue, global};

/// The semantic conventions' buckets for HTTP durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// An HTTP duration histogram as the semantic conventions define it
/// (seconds, [`DURATION_BUCKETS`]), recorded through the SDK's bound
/// instruments: each attribute set is bound once, under a small key `K` the
/// caller derives it from (route, status, error kind), and a record is then
/// a scan of the few keys seen so far, where an unbound record hashes every
/// attribute of every call. Takes the global meter provider: make it after
/// telemetry has started, or it stays a no-op.
#[derive(Debug)]
pub struct Durations<K> {
    /// The instrument.
    histogram: Histogram<f64>,
    /// The attribute sets bound so far, by key.
    bound: RwLock<Vec<(K, BoundHistogram<f64>)>>,
}

/// Most attribute sets bound per histogram. The keys are a small product
/// (routes, statuses, error kinds), so this is never reached in practice;
/// past it, records are unbound, as before.
const MAX_BOUND: usize = 256;

impl<K: Copy + PartialEq> Durations<K> {
    /// The histogram `name` of meter `meter`.
    pub fn new(meter: &'static str, name: &'static str, description: &'static str) -> Self {
        let histogram = global::meter(meter)
            .f64_histogram(name)
            .with_unit("s")
            .with_description(description)
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();
        Self {
            histogram,
            bound: RwLock::default(),
        }
    }

    /// Records `seconds` under the attribute set that `key` stands for;
    /// `attributes` makes that set, the first time `key` is seen only.
    pub fn record(&self, seconds: f64, key: K, attributes: impl FnOnce() -> Vec<KeyValue>) {
        let bound = self.bound.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, histogram)) = bound.iter().find(|(k, _)| *k == key) {
            return histogram.record(seconds);
        }
        let full = bound.len() >= MAX_BOUND;
        drop(bound);
        let attributes = attributes();
        if full {
            return self.histogram.record(seconds, &attributes);
        }
        let mut bound = self.bound.write().unwrap_or_else(PoisonError::into_inner);
        // Another request may have bound it meanwhile.
        let histogram = match bound.iter().find(|(k, _)| *k == key) {
            Some((_, histogram)) => histogram.clone(),
            None => {
                let histogram = self.histogram.bind(&attributes);
                bound.push((key, histogram.clone()));
                histogram
            }
        };
        drop(bound);
        histogram.record(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(d: &Durations<usize>) -> usize {
        d.bound.read().map_or(0, |b| b.len())
    }

    #[test]
    fn each_key_is_bound_once_and_its_attributes_made_once() {
        let d = Durations::new("test", "test.duration", "A test histogram.");
        d.record(0.1, 1, Vec::new);
        d.record(0.2, 2, Vec::new);
        assert_eq!(bound(&d), 2);
        d.record(0.3, 1, || {
            panic!("the attributes of a bound key made again")
        });
        assert_eq!(bound(&d), 2);
    }

    #[test]
    fn past_the_bound_records_are_unbound() {
        let d = Durations::new("test", "test.duration", "A test histogram.");
        for key in 0..MAX_BOUND + 10 {
            d.record(0.1, key, Vec::new);
        }
        assert_eq!(bound(&d), MAX_BOUND);
    }
}
