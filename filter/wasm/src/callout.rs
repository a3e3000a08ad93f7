//! Callouts by token: every `dispatch_http_call` a stream makes is recorded with what it is
//! for, and its answer is routed by that token alone. An unknown token (a callout given up, or
//! never ours) is ignored.
//!
//! An answer is read only through [`Answer`], which looks at how much Envoy delivered first:
//! with zero headers (a callout that failed after the upstream started answering) nothing may
//! be read, and the answer is a failed callout.

use crate::host::{Delivered, Host};
use blobsteer_core::store::StoreCall;
use std::collections::HashMap;

/// What a callout is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// The existence check this stream sent for a blob (the waiters are in `check::Checks`).
    Check,
    /// The fetch of one child of an index, by its digest.
    Child(String),
    /// A lease asked of the fleet's store.
    StoreLease,
    /// The creation (or renewal) of a held rewrite's records in the store.
    StoreWrite,
    /// The read of a digest this Envoy does not know.
    StoreRead,
    /// The renewal of a record in use; nothing waits for it.
    StoreRenew,
}

/// A callout that has not answered.
#[derive(Debug)]
pub struct Awaited {
    /// What it is for.
    pub purpose: Purpose,
    /// A store call on its first attempt: what to send again if it fails in a way worth one
    /// more attempt (`blobsteer_core::store::StoreEvent::is_retried`).
    pub resend: Option<StoreCall>,
}

/// The callouts of one stream that have not answered.
#[derive(Debug, Default)]
pub struct Callouts {
    pending: HashMap<u32, Awaited>,
}

impl Callouts {
    /// Records a dispatched callout.
    pub fn record(&mut self, token: u32, purpose: Purpose) {
        self.pending.insert(token, Awaited { purpose, resend: None });
    }

    /// Records a dispatched store call that may be sent once more.
    pub fn record_resendable(&mut self, token: u32, purpose: Purpose, call: StoreCall) {
        self.pending.insert(token, Awaited { purpose, resend: Some(call) });
    }

    /// The answered callout, if it is one of ours still awaited.
    pub fn take(&mut self, token: u32) -> Option<Awaited> {
        self.pending.remove(&token)
    }

    /// How many awaited callouts are of a kind.
    pub fn count(&self, kind: impl Fn(&Purpose) -> bool) -> usize {
        self.pending.values().filter(|a| kind(&a.purpose)).count()
    }
}

/// A callout's answer, as far as it can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// No headers were delivered: the callout failed, and nothing of it may be read.
    Failed,
    /// Headers (and perhaps a body) were delivered.
    Received {
        /// `:status`, if it is a number.
        status: Option<u16>,
        /// What was delivered.
        delivered: Delivered,
    },
}

impl Answer {
    /// Reads the status of the answer being delivered, only if headers were delivered.
    pub fn read(host: &impl Host, delivered: Delivered) -> Answer {
        if delivered.headers == 0 {
            return Answer::Failed;
        }
        let status = host
            .call_header(":status")
            .and_then(|value| std::str::from_utf8(&value).ok()?.parse().ok());
        Answer::Received { status, delivered }
    }

    /// The status, `None` for a failed callout.
    pub fn status(&self) -> Option<u16> {
        match self {
            Answer::Failed => None,
            Answer::Received { status, .. } => *status,
        }
    }

    /// Another header of the answer.
    pub fn header(&self, host: &impl Host, name: &str) -> Option<Vec<u8>> {
        match self {
            Answer::Failed => None,
            Answer::Received { .. } => host.call_header(name),
        }
    }

    /// The size of the answer's body (0 for a failed callout).
    pub fn body_size(&self) -> usize {
        match self {
            Answer::Failed => 0,
            Answer::Received { delivered, .. } => delivered.body,
        }
    }

    /// The body of the answer.
    pub fn body(&self, host: &impl Host) -> Option<Vec<u8>> {
        match self {
            Answer::Failed => None,
            Answer::Received { delivered, .. } => host.call_body(delivered.body),
        }
    }
}
