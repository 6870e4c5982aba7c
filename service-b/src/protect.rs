//! What keeps service-b standing when service-a is not: a bound on calls in
//! flight (past it, answer `overloaded` at once instead of queueing), and a
//! circuit breaker (after N consecutive failures, answer `circuit_open` at
//! once for a cool-down, then let one probe through and close on success).
//! Neither makes a call to service-a when it refuses.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use service_kit::trace_id::current_trace_id;
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

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed {
        failures: u32,
    },
    /// Refusing calls until `wait` has passed since `since`.
    Open {
        since: Instant,
        wait: Duration,
    },
    HalfOpen,
}

/// The phase, and which period of it this is: every change of phase starts
/// a new period, and a call's outcome counts only in the period that
/// admitted it. So a late success from before the breaker opened does not
/// close it, and a late failure does not decide a half-open breaker: only
/// the probe does.
#[derive(Debug)]
struct State {
    phase: Phase,
    period: u64,
}

impl State {
    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.period += 1;
    }
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
    /// The period that admitted the call.
    period: u64,
    probe: bool,
    reported: bool,
}

impl Ticket<'_> {
    /// service-a answered: the call succeeded, or failed by the caller's own
    /// doing (a 4xx), which says nothing against service-a.
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.record(self.period, true, Instant::now());
    }

    /// The call failed in a way that counts against service-a: a transport
    /// failure, a timeout, a 5xx or an invalid answer.
    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.record(self.period, false, Instant::now());
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            // The probe never finished: let the next request probe instead.
            let mut state = self.breaker.lock();
            if state.period == self.period {
                state.enter(Phase::Open {
                    since: Instant::now(),
                    wait: Duration::ZERO,
                });
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
            state: Mutex::new(State {
                phase: Phase::Closed { failures: 0 },
                period: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is valid whatever a panicking holder was doing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A ticket for one call, or the time left before the breaker lets a
    /// probe through.
    pub fn admit(&self) -> Result<Ticket<'_>, Duration> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Result<Ticket<'_>, Duration> {
        let ticket = |period, probe| Ticket {
            breaker: self,
            period,
            probe,
            reported: false,
        };
        if self.threshold == 0 {
            return Ok(ticket(0, false));
        }
        let mut state = self.lock();
        match state.phase {
            Phase::Closed { .. } => Ok(ticket(state.period, false)),
            Phase::Open { since, wait } => {
                // Elapsed time against the wait: no `Instant + Duration`
                // that a huge cool-down could overflow.
                let elapsed = now.saturating_duration_since(since);
                if elapsed >= wait {
                    state.enter(Phase::HalfOpen);
                    Ok(ticket(state.period, true))
                } else {
                    Err(wait - elapsed)
                }
            }
            // A probe is out: everyone else waits for its verdict.
            Phase::HalfOpen => Err(Duration::ZERO),
        }
    }

    fn record(&self, period: u64, success: bool, now: Instant) {
        if self.threshold == 0 {
            return;
        }
        let mut state = self.lock();
        if state.period != period {
            // Admitted in an earlier period: its news is stale.
            return;
        }
        let opened = match (state.phase, success) {
            (Phase::Closed { .. }, true) => {
                state.phase = Phase::Closed { failures: 0 };
                false
            }
            (Phase::Closed { failures }, false) if failures + 1 < self.threshold => {
                state.phase = Phase::Closed {
                    failures: failures + 1,
                };
                false
            }
            (Phase::HalfOpen, true) => {
                state.enter(Phase::Closed { failures: 0 });
                false
            }
            (Phase::Closed { .. } | Phase::HalfOpen, false) => {
                state.enter(Phase::Open {
                    since: now,
                    wait: self.cooldown,
                });
                true
            }
            // Opening starts a new period: no ticket of an open one exists.
            (Phase::Open { .. }, _) => false,
        };
        drop(state);
        if opened {
            tracing::warn!(
                trace_id = current_trace_id().as_deref().unwrap_or("-"),
                "circuit breaker open: calls to service-a refused for {}",
                humantime::format_duration(self.cooldown)
            );
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        if self.threshold == 0 {
            return BreakerState::Disabled;
        }
        match self.lock().phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(60);

    fn fail(b: &Breaker, n: u32) {
        for _ in 0..n {
            b.admit().unwrap().failed();
        }
    }

    /// A moment after the cool-down of a breaker opened now: no sleeping.
    fn after_cooldown() -> Instant {
        Instant::now() + COOLDOWN
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3, COOLDOWN);
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
        let b = Breaker::new(1, COOLDOWN);
        fail(&b, 1);
        assert!(b.admit().is_err());
        let later = after_cooldown();
        let probe = b.admit_at(later).unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit_at(later).is_err(), "only one probe at a time");
        probe.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok());
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let b = Breaker::new(1, COOLDOWN);
        fail(&b, 1);
        b.admit_at(after_cooldown()).unwrap().failed();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let b = Breaker::new(1, COOLDOWN);
        fail(&b, 1);
        drop(b.admit_at(after_cooldown()).unwrap());
        let next = b.admit().expect("the next request may probe");
        next.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_late_success_from_before_the_breaker_opened_does_not_close_it() {
        let b = Breaker::new(2, COOLDOWN);
        let slow = b.admit().unwrap(); // in flight while others fail
        fail(&b, 2);
        assert_eq!(b.state(), BreakerState::Open);
        slow.succeeded();
        assert_eq!(b.state(), BreakerState::Open, "closed by a stale success");
        assert!(b.admit().is_err());
    }

    #[test]
    fn only_the_probe_decides_a_half_open_breaker() {
        let b = Breaker::new(2, COOLDOWN);
        let early_a = b.admit().unwrap();
        let early_b = b.admit().unwrap();
        fail(&b, 2);
        let probe = b.admit_at(after_cooldown()).unwrap();
        early_a.failed();
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "a late failure re-opened it while the probe was out"
        );
        early_b.succeeded();
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "a late success closed it while the probe was out"
        );
        probe.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failures_from_before_a_close_do_not_count_after_it() {
        let b = Breaker::new(2, COOLDOWN);
        let early = b.admit().unwrap();
        fail(&b, 2);
        b.admit_at(after_cooldown()).unwrap().succeeded();
        early.failed();
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Closed, "a stale failure counted");
    }

    #[test]
    fn a_cooldown_near_the_largest_duration_does_not_panic() {
        let b = Breaker::new(1, Duration::MAX);
        fail(&b, 1);
        assert!(b.admit().is_err());
        assert!(b.admit_at(after_cooldown()).is_err());
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
        assert_eq!(
            f.limit(),
            2,
            "the bound, as the overloaded message names it"
        );
        drop(a);
        assert!(f.try_enter().is_some());
    }

    #[test]
    fn states_as_health_spells_them() {
        for (state, shown) in [
            (BreakerState::Closed, "closed"),
            (BreakerState::Open, "open"),
            (BreakerState::HalfOpen, "half_open"),
            (BreakerState::Disabled, "disabled"),
        ] {
            assert_eq!(state.as_str(), shown);
        }
    }

    #[test]
    fn an_abandoned_call_changes_nothing_unless_it_was_the_probe() {
        let b = Breaker::new(1, COOLDOWN);
        drop(b.admit().unwrap());
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b, 1);
        let probe = b.admit_at(after_cooldown()).unwrap();
        probe.succeeded();
        assert_eq!(b.state(), BreakerState::Closed, "a reported probe");
    }
}
