//! What keeps service-b standing when service-a is not: a bound on calls in
//! flight (past it, answer `overloaded` at once instead of queueing), and a
//! circuit breaker (after N consecutive failures, answer `circuit_open` at
//! once for a cool-down, then let one probe through and close on success).
//! Neither makes a call to service-a when it refuses.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use service_kit::telemetry::current_trace_id;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bound on calls to service-a in flight at once.
#[derive(Debug, Clone)]
pub struct InFlight {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl InFlight {
    /// At most `limit` calls at once.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A slot for one call, or `None` when all are taken. Never waits.
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// The configured bound.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// The breaker's state, as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe call is allowed; its outcome closes or re-opens the breaker.
    HalfOpen,
    /// The breaker is turned off (`--breaker-failures 0`).
    Disabled,
}

impl BreakerState {
    /// As `/health` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::Disabled => "disabled",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// A circuit breaker on the calls to service-a.
#[derive(Debug)]
pub struct Breaker {
    /// Consecutive failures that open it; 0 turns it off.
    threshold: u32,
    /// How long it stays open before letting a probe through.
    cooldown: Duration,
    state: Mutex<State>,
}

/// Permission to make one call. Report how it went with [`Ticket::succeeded`]
/// or [`Ticket::failed`]; dropped unreported (the request was abandoned), it
/// counts as neither, but frees a half-open breaker for the next probe.
#[derive(Debug)]
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Ticket<'_> {
    /// The call got a good answer.
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.record(true);
    }

    /// The call failed (any of the contract's upstream kinds).
    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.record(false);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            // The probe never finished: let the next request probe instead.
            let mut state = self.breaker.lock();
            if matches!(*state, State::HalfOpen) {
                *state = State::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

impl Breaker {
    /// Opens after `threshold` consecutive failures (0: never) for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is valid whatever a panicking holder was doing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ticket for one call, or the time left before the breaker lets a
    /// probe through.
    pub fn admit(&self) -> Result<Ticket<'_>, Duration> {
        let ticket = |probe| Ticket {
            breaker: self,
            probe,
            reported: false,
        };
        if self.threshold == 0 {
            return Ok(ticket(false));
        }
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(ticket(false)),
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = State::HalfOpen;
                    Ok(ticket(true))
                } else {
                    Err(until - now)
                }
            }
            // A probe is out: everyone else waits for its verdict.
            State::HalfOpen => Err(Duration::ZERO),
        }
    }

    fn record(&self, success: bool) {
        if self.threshold == 0 {
            return;
        }
        let mut state = self.lock();
        *state = match (&*state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            (State::Open { until }, false) => State::Open { until: *until },
            (_, false) => {
                let until = Instant::now() + self.cooldown;
                tracing::warn!(
                    trace_id = current_trace_id().as_deref().unwrap_or("-"),
                    "circuit breaker open: calls to service-a refused for {}",
                    humantime::format_duration(self.cooldown)
                );
                State::Open { until }
            }
        };
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        if self.threshold == 0 {
            return BreakerState::Disabled;
        }
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(b: &Breaker, n: u32) {
        for _ in 0..n {
            b.admit().unwrap().failed();
        }
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3, Duration::from_secs(60));
        fail(&b, 2);
        b.admit().unwrap().succeeded();
        fail(&b, 2);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().unwrap_err() > Duration::from_secs(59));
    }

    #[test]
    fn after_the_cooldown_one_probe_decides() {
        let b = Breaker::new(1, Duration::from_millis(20));
        fail(&b, 1);
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(30));
        let probe = b.admit().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_err(), "only one probe at a time");
        probe.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok());
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let b = Breaker::new(1, Duration::from_millis(20));
        fail(&b, 1);
        std::thread::sleep(Duration::from_millis(30));
        b.admit().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let b = Breaker::new(1, Duration::from_millis(20));
        fail(&b, 1);
        std::thread::sleep(Duration::from_millis(30));
        drop(b.admit().unwrap());
        let next = b.admit().expect("the next request may probe");
        next.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(1));
        fail(&b, 100);
        assert_eq!(b.state(), BreakerState::Disabled);
        assert!(b.admit().is_ok());
    }

    #[test]
    fn in_flight_bound() {
        let f = InFlight::new(2);
        let a = f.try_enter().unwrap();
        let _b = f.try_enter().unwrap();
        assert!(f.try_enter().is_none());
        drop(a);
        assert!(f.try_enter().is_some());
    }
}
