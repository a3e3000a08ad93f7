//! The existence checks of a VM, as every stream of it sees them: which are in flight and who
//! waits for each, what each released stream was told, and which clusters cannot take a check.
//! Only `check` changes it, through these methods.

use blobsteer_core::existence::{CheckRequest, Known};
use blobsteer_core::{ClientMatch, Config, FallbackChain, Redirect, ResponseDecision};
use std::collections::{HashMap, HashSet};

/// What a stream held for a check does with its answer: steer the client to the backend
/// checked, or, if that one lacks the blob or is down, move on along the rest of its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Then {
    /// What to do once the backend checked is known to hold the blob.
    pub steer: Steer,
    /// The rest of the client's fallback chain, in order; after it, `steer`'s upstream answer.
    pub chain: FallbackChain,
}

/// The steering a held stream does, in the phase it is held in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steer {
    /// Blob mode `redirect`, held in the request phase: this redirect, counted for `backend`
    /// (the client's own, or one of its chain); if the chain runs out, upstream untouched.
    Redirect {
        /// To the backend checked.
        redirect: Redirect,
        /// The backend checked.
        backend: usize,
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
        matches!(self.steer, Steer::Judge(_))
    }

    /// Moves on to the next backend of the chain, which the stream now steers to (`config`
    /// is the VM's, which the chain was decided with).
    pub fn advance(&mut self, config: &Config) -> Next {
        let Some(next) = self.chain.next(config) else {
            return Next::End;
        };
        match &mut self.steer {
            Steer::Redirect { redirect, backend } => {
                *redirect = next.redirect;
                *backend = next.backend;
            }
            Steer::Judge(judged) => judged.present = judged.present.towards(&next),
        }
        next.check.map_or(Next::Unchecked, Next::Check)
    }
}

/// The next backend of a held stream's chain.
#[derive(Debug)]
pub enum Next {
    /// It has a cluster: this check says whether it holds the blob.
    Check(CheckRequest),
    /// It has no cluster: assumed to hold every blob.
    Unchecked,
    /// The chain is done.
    End,
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
    /// The waiters of the check in flight for `entry_id`, if there is one: a stream joins it.
    pub fn waiters_of(&mut self, entry_id: &str) -> Option<&mut Vec<Waiter>> {
        self.in_flight.get_mut(entry_id)
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
