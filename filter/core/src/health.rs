//! Mirrors taken out while they fail. A hung or broken mirror would otherwise cost every new
//! blob of its region a whole check timeout. So each checked backend has a health state, shared
//! by every worker of an Envoy (shared data `blobsteer.health.<backend>`):
//!
//! - up, with a count of consecutive failed checks (5xx, timeout, refused, reset) since the
//!   first of them; `existence_check.down_after_failures` of them within `failure_window_s`
//!   take the backend down;
//! - down until a time (`down_s` after it went down): its clients go down their fallback chain
//!   (or upstream) without a check;
//! - then one request at a time probes it (a real check, with a deadline): a success brings it
//!   up, a failure takes it down again.
//!
//! A 404 or 403 is an answer, not a failure: the mirror works, it lacks the blob.

use crate::existence::{CheckOutcome, ExistenceSettings};

/// A backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Serving; `failures` consecutive failed checks, the first at `since_s`.
    Up {
        /// Consecutive failed checks.
        failures: u32,
        /// When the first of them failed.
        since_s: u64,
    },
    /// Taken out until `until_s`.
    Down {
        /// When a probe may go.
        until_s: u64,
    },
    /// A probe is out; another may go after `until_s` (the probe's deadline).
    Probing {
        /// The probe's deadline.
        until_s: u64,
    },
}

/// What a request for the backend does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The usual: the cache, else a check.
    Check,
    /// The backend's probe: a check, whatever the cache says; write `Health::Probing` first.
    Probe(Health),
    /// Down: its clients go on without it.
    Skip,
}

/// A change of state worth counting (`backend.<name>.down`, `.up`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The backend was taken out.
    WentDown,
    /// The backend serves again.
    WentUp,
}

impl Health {
    /// The shared-data key of `backend`'s health.
    pub fn key(backend: &str) -> String {
        format!("blobsteer.health.{backend}")
    }

    /// Reads a stored value; anything unreadable is a healthy backend.
    pub fn read(value: Option<&[u8]>) -> Health {
        let healthy = Health::Up { failures: 0, since_s: 0 };
        let Some(text) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
            return healthy;
        };
        let mut parts = text.split(' ');
        let number = |part: Option<&str>| part.and_then(|p| p.parse::<u64>().ok());
        match parts.next() {
            Some("up") => match (number(parts.next()), number(parts.next())) {
                (Some(failures), Some(since_s)) => {
                    Health::Up { failures: u32::try_from(failures).unwrap_or(u32::MAX), since_s }
                }
                _ => healthy,
            },
            Some("down") => {
                number(parts.next()).map_or(healthy, |until_s| Health::Down { until_s })
            }
            Some("probing") => {
                number(parts.next()).map_or(healthy, |until_s| Health::Probing { until_s })
            }
            _ => healthy,
        }
    }

    /// The value to store.
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Health::Up { failures, since_s } => format!("up {failures} {since_s}"),
            Health::Down { until_s } => format!("down {until_s}"),
            Health::Probing { until_s } => format!("probing {until_s}"),
        }
        .into_bytes()
    }

    /// What a request does at `now_s`.
    pub fn admit(&self, settings: &ExistenceSettings, now_s: u64) -> Admit {
        match *self {
            Health::Up { .. } => Admit::Check,
            Health::Down { until_s } | Health::Probing { until_s } if now_s < until_s => {
                Admit::Skip
            }
            Health::Down { .. } | Health::Probing { .. } => {
                // The probe's own deadline: its check's timeout, rounded up, and a second.
                let deadline = u64::from(settings.timeout_ms).div_ceil(1000) + 1;
                Admit::Probe(Health::Probing { until_s: now_s + deadline })
            }
        }
    }

    /// The state after a check that ended with `outcome` at `now_s`, and what changed.
    pub fn after(
        &self,
        outcome: CheckOutcome,
        settings: &ExistenceSettings,
        now_s: u64,
    ) -> (Health, Option<Transition>) {
        let failed = matches!(
            outcome,
            CheckOutcome::Unavailable | CheckOutcome::Timeout | CheckOutcome::Failed
        );
        let down = Health::Down { until_s: now_s + u64::from(settings.down_s) };
        match (*self, failed) {
            (Health::Up { .. }, false) => (Health::Up { failures: 0, since_s: now_s }, None),
            (Health::Down { .. } | Health::Probing { .. }, false) => {
                (Health::Up { failures: 0, since_s: now_s }, Some(Transition::WentUp))
            }
            (Health::Up { failures, since_s }, true) => {
                let window = u64::from(settings.failure_window_s);
                let (failures, since_s) = if failures == 0 || now_s.saturating_sub(since_s) > window
                {
                    (1, now_s)
                } else {
                    (failures.saturating_add(1), since_s)
                };
                if failures >= settings.down_after_failures {
                    (down, Some(Transition::WentDown))
                } else {
                    (Health::Up { failures, since_s }, None)
                }
            }
            (Health::Down { .. } | Health::Probing { .. }, true) => (down, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn settings() -> ExistenceSettings {
        ExistenceSettings {
            timeout_ms: 2000,
            down_after_failures: 3,
            failure_window_s: 10,
            down_s: 20,
            ..ExistenceSettings::default()
        }
    }

    #[test]
    fn consecutive_failures_within_the_window_take_a_backend_down_and_a_probe_brings_it_back() {
        let s = settings();
        let mut health = Health::read(None);
        for (at, outcome) in [(100, CheckOutcome::Timeout), (101, CheckOutcome::Unavailable)] {
            let (next, change) = health.after(outcome, &s, at);
            assert_eq!(change, None);
            health = next;
        }
        // A 404 is an answer: the count starts again.
        let (reset, _) = health.after(CheckOutcome::NotFound, &s, 102);
        assert_eq!(reset, Health::Up { failures: 0, since_s: 102 });
        let (next, _) = health.after(CheckOutcome::Failed, &s, 103);
        assert_eq!(next.after(CheckOutcome::Failed, &s, 104).1, None, "two of three");
        let (down, change) = health.after(CheckOutcome::Failed, &s, 105);
        assert_eq!((down, change), (Health::Down { until_s: 125 }, Some(Transition::WentDown)));
        assert_eq!(Health::read(Some(&down.encode())), down);
        assert_eq!(down.admit(&s, 124), Admit::Skip);
        let Admit::Probe(probing) = down.admit(&s, 125) else { panic!() };
        assert_eq!(probing, Health::Probing { until_s: 128 });
        assert_eq!(probing.admit(&s, 127), Admit::Skip, "one probe at a time");
        assert!(matches!(probing.admit(&s, 128), Admit::Probe(_)), "a lost probe is replaced");
        assert_eq!(
            probing.after(CheckOutcome::Timeout, &s, 127),
            (Health::Down { until_s: 147 }, None)
        );
        let (up, change) = probing.after(CheckOutcome::Present, &s, 127);
        assert_eq!((up.admit(&s, 127), change), (Admit::Check, Some(Transition::WentUp)));
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up_and_garbage_reads_as_healthy() {
        let s = settings();
        let (one, _) = Health::read(None).after(CheckOutcome::Timeout, &s, 100);
        let (two, _) = one.after(CheckOutcome::Timeout, &s, 105);
        let (restart, change) = two.after(CheckOutcome::Timeout, &s, 111);
        assert_eq!((restart, change), (Health::Up { failures: 1, since_s: 111 }, None));
        for garbage in [&b"down"[..], b"up x 1", b"\xff", b"sideways 5"] {
            assert_eq!(Health::read(Some(garbage)), Health::Up { failures: 0, since_s: 0 });
        }
    }
}
