//! Logging at a sane rate: a failing Kubernetes API ([`ApiFailures`]), and any one kind of
//! event that can come in floods ([`LogLimiter`], e.g. stale decisions replayed by an exporter).
//!
//! While the API server is unreachable every call fails, and the daemon makes several each tick
//! (the scale of every target, the Lease, Events). Logging each failure would print an ERROR
//! several times a second for as long as the outage lasts, burying everything else.
//! [`ApiFailures`] decides when a line is due: the first failure of a kind is logged at once,
//! later ones at most once per [`REPORT_EVERY`] per kind, each line carrying how many failures it
//! stands for; the first success after failures is reported once, with the outage's length and
//! the number of failed calls. Every failure is still counted in `scale_api_errors_total`.
//!
//! Time is passed in (`now`), so the rate is tested without sleeping.
//!
//! # Example: a 25 s outage at one failed call per second
//!
//! ```
//! use std::time::{Duration, Instant};
//! use scale_scaler::serve::throttle::{ApiFailures, REPORT_EVERY};
//!
//! let mut f = ApiFailures::new(REPORT_EVERY);
//! let t0 = Instant::now();
//! let lines = (0..25)
//!     .filter(|s| f.failure("unavailable", t0 + Duration::from_secs(*s)).is_some())
//!     .count();
//! assert_eq!(lines, 3); // at 0 s, 10 s and 20 s
//! let back = f.success(t0 + Duration::from_secs(25)).unwrap();
//! assert_eq!((back.failed_calls, back.failed_for), (25, Duration::from_secs(25)));
//! assert!(f.success(t0 + Duration::from_secs(26)).is_none()); // said once
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one line per kind of failure this often.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A failure line is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Failures of this kind since its previous line that were not logged.
    pub suppressed: u64,
    /// Since the first failure of the outage.
    pub failing_for: Duration,
}

/// The API answers again after failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Calls that failed since the last success.
    pub failed_calls: u64,
    /// From the first of them to the success.
    pub failed_for: Duration,
}

#[derive(Debug)]
struct Kind {
    last_line: Instant,
    suppressed: u64,
}

/// Failures since the last successful call, and when each kind was last logged. Holds one entry
/// per kind of failure (a fixed, small set of labels).
#[derive(Debug)]
pub struct ApiFailures {
    every: Duration,
    since: Option<Instant>,
    failed: u64,
    kinds: HashMap<&'static str, Kind>,
}

impl ApiFailures {
    /// At most one line per kind per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            since: None,
            failed: 0,
            kinds: HashMap::new(),
        }
    }

    /// A call failed with `kind` at `now`; returns `Some` when a line should be logged.
    pub fn failure(&mut self, kind: &'static str, now: Instant) -> Option<Due> {
        let since = *self.since.get_or_insert(now);
        self.failed += 1;
        let failing_for = now.saturating_duration_since(since);
        match self.kinds.get_mut(kind) {
            None => {
                self.kinds.insert(
                    kind,
                    Kind {
                        last_line: now,
                        suppressed: 0,
                    },
                );
                Some(Due {
                    suppressed: 0,
                    failing_for,
                })
            }
            Some(k) if now.saturating_duration_since(k.last_line) >= self.every => {
                let due = Due {
                    suppressed: k.suppressed,
                    failing_for,
                };
                k.last_line = now;
                k.suppressed = 0;
                Some(due)
            }
            Some(k) => {
                k.suppressed += 1;
                None
            }
        }
    }

    /// A call succeeded at `now`; returns `Some` once after failures.
    pub fn success(&mut self, now: Instant) -> Option<Recovered> {
        let since = self.since.take()?;
        let r = Recovered {
            failed_calls: self.failed,
            failed_for: now.saturating_duration_since(since),
        };
        self.failed = 0;
        self.kinds.clear();
        Some(r)
    }
}

/// Lets a log line through at most once per period and counts the ones held back, so a flood
/// of one kind of event (say, a backlog of stale decisions replayed by an exporter) is one
/// line per period. Time comes from the caller.
#[derive(Debug)]
pub struct LogLimiter {
    every_ns: u64,
    /// When a line was last let through, ns since the epoch, plus one (0: never).
    last: AtomicU64,
    held: AtomicU64,
}

impl LogLimiter {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        LogLimiter {
            every_ns: every.as_nanos() as u64,
            last: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` if a line may be logged at `now_ns`.
    pub fn allow(&self, now_ns: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now_ns.saturating_sub(last - 1) >= self.every_ns;
        if due
            && self
                .last
                .compare_exchange(last, now_ns + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_line_per_kind_per_interval_with_the_suppressed_count() {
        let mut f = ApiFailures::new(10 * S);
        let t0 = Instant::now();
        // Five failed calls a second for 60 s, of one kind.
        let mut lines = Vec::new();
        for i in 0..300u32 {
            if let Some(d) = f.failure("unavailable", t0 + i * S / 5) {
                lines.push((i, d));
            }
        }
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert_eq!(
            lines[0],
            (
                0,
                Due {
                    suppressed: 0,
                    failing_for: Duration::ZERO
                }
            )
        );
        assert_eq!(
            lines[1],
            (
                50,
                Due {
                    suppressed: 49,
                    failing_for: 10 * S
                }
            )
        );
        // Another kind has its own budget.
        assert!(f.failure("forbidden", t0 + 60 * S).is_some());
        assert!(f.failure("forbidden", t0 + 61 * S).is_none());
        assert!(f.failure("unavailable", t0 + 61 * S).is_some());
    }

    #[test]
    fn recovery_is_reported_once_and_resets() {
        let mut f = ApiFailures::new(10 * S);
        let t0 = Instant::now();
        assert!(f.success(t0).is_none(), "nothing failed");
        f.failure("unavailable", t0);
        f.failure("unavailable", t0 + 2 * S);
        assert_eq!(
            f.success(t0 + 3 * S),
            Some(Recovered {
                failed_calls: 2,
                failed_for: 3 * S
            })
        );
        assert!(f.success(t0 + 4 * S).is_none());
        // A new outage is logged at once, not held back by the previous one's last line.
        assert_eq!(
            f.failure("unavailable", t0 + 5 * S),
            Some(Due {
                suppressed: 0,
                failing_for: Duration::ZERO
            })
        );
    }

    #[test]
    fn the_log_limiter_lets_one_line_through_per_period_and_counts_the_rest() {
        const SEC: u64 = 1_000_000_000;
        const T0: u64 = 1_764_237_600 * SEC;
        let l = LogLimiter::new(Duration::from_secs(10));
        assert_eq!(l.allow(T0), Some(0));
        assert_eq!(l.allow(T0 + SEC), None);
        assert_eq!(l.allow(T0 + 9 * SEC), None);
        assert_eq!(l.allow(T0 + 10 * SEC), Some(2));
        assert_eq!(l.allow(T0 + 11 * SEC), None);
        assert_eq!(l.allow(T0 + 25 * SEC), Some(1));
        // Time 0 is a valid first time too.
        assert_eq!(LogLimiter::new(Duration::from_secs(1)).allow(0), Some(0));
    }
}
