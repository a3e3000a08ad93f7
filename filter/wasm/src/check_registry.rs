//! The existence checks of a VM, as every stream of it sees them: which are in flight and who
//! waits for each, what each released stream was told, and which clusters cannot take a check.
//! Only `check` changes it, through these methods.

use blobsteer_core::existence::Known;
use blobsteer_core::{ClientMatch, Fallback, Redirect, ResponseDecision};
use std::collections::{HashMap, HashSet};

/// What a stream held for a check does with its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// Blob mode `redirect`, held in the request phase: this redirect if the blob is there;
    /// otherwise the first fallback known to hold it, else upstream untouched.
    Redirect {
        /// To the client's own backend.
        redirect: Redirect,
        /// Its fallback chain.
        fallbacks: Vec<Fallback>,
    },
    /// `verify_upstream`, held in the response phase once the upstream said yes.
    Judge(Box<Judged>),
}

/// The two decisions on a response held for a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// If the blob is there: the steering decision.
    pub present: ResponseDecision,
    /// Otherwise: the upstream's own answer (or the client sent back to the registry).
    pub absent: ResponseDecision,
}

impl Then {
    /// Whether the stream is held in its response phase (else in its request phase).
    pub fn in_response(&self) -> bool {
        matches!(self, Then::Judge(_))
    }
}

/// A stream held until a check answers, with what it will do then.
#[derive(Debug)]
pub struct Waiter {
    /// The stream.
    pub context_id: u32,
    /// What it does with the answer.
    pub then: Then,
    /// Its client.
    pub client: ClientMatch,
}

/// The checks of a VM.
#[derive(Debug, Default)]
pub struct CheckRegistry {
    /// By cache entry id: the streams waiting for the answer, the sender first.
    in_flight: HashMap<String, Vec<Waiter>>,
    /// What each released stream was told, read back in its response phase.
    answers: HashMap<u32, Known>,
    /// Clusters a check could not be sent to, already reported in the log.
    unusable_clusters: HashSet<String>,
}

impl CheckRegistry {
    /// Adds a waiter to the check in flight for `entry_id`; gives it back if there is none.
    pub fn join(&mut self, entry_id: &str, waiter: Waiter) -> Result<(), Waiter> {
        match self.in_flight.get_mut(entry_id) {
            Some(waiters) => {
                waiters.push(waiter);
                Ok(())
            }
            None => Err(waiter),
        }
    }

    /// Records a check just sent, with its sender as the first waiter.
    pub fn begin(&mut self, entry_id: &str, sender: Waiter) {
        self.in_flight.insert(entry_id.to_string(), vec![sender]);
    }

    /// Ends the check for `entry_id`: its waiters, the sender first.
    pub fn finish(&mut self, entry_id: &str) -> Vec<Waiter> {
        self.in_flight.remove(entry_id).unwrap_or_default()
    }

    /// Records what a released stream was told.
    pub fn tell(&mut self, context_id: u32, known: Known) {
        self.answers.insert(context_id, known);
    }

    /// What a stream was told, once (its response phase, or its end).
    pub fn told(&mut self, context_id: u32) -> Option<Known> {
        self.answers.remove(&context_id)
    }

    /// Whether a stream was told, leaving the answer in place.
    pub fn was_told(&self, context_id: u32) -> bool {
        self.answers.contains_key(&context_id)
    }

    /// Whether this is the first time `cluster` could not take a check (to log it once).
    pub fn first_failure(&mut self, cluster: &str) -> bool {
        self.unusable_clusters.insert(cluster.to_string())
    }
}
