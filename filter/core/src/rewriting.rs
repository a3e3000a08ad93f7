//! What the filter does with the upstream's answer to a manifest request it may rewrite: hold
//! the answer or let it go, which children of an index to fetch and how, which blobs may be
//! advertised, what reply to send and what to remember. Every manifest decision is here; the
//! glue reads what these functions ask for, calls them, and applies the [`ResponseEdit`].
//!
//! The flow, for a tag request of a client with a backend ([`ManifestPlan`]):
//! 1. [`ManifestJob::judge_head`]: the upstream's response headers are held, or the answer is
//!    left alone (not a 200, encoded, too large).
//! 2. [`ManifestJob::judge_body_size`] on every body callback: a body past the limit is let go.
//! 3. [`ManifestJob::on_body`] once the body is whole: a [`Reply`] now, or the children of an
//!    index to fetch first ([`ManifestJob::child_request`]), then [`ManifestJob::complete`].
//!
//! A request by a digest the filter produced is first turned back into a request for the
//! original ([`reissue`]), then follows the same flow with `expect_digest` set.

use crate::config::{Backend, Config};
use crate::decision::{
    blob_check, Action, ClientMatch, Decision, DigestLookup, ManifestPlan, RequestStep,
};
use crate::digest::Digest;
use crate::existence::{CheckRequest, Known};
use crate::manifest::cache::{Origin, RewriteCache};
use crate::manifest::{self, sha256_digest, Child, Kind, Mapping, Rewritten, Untouched};
use crate::registry_path::RegistryPath;
use std::collections::HashMap;
use std::rc::Rc;

/// Request headers repeated when fetching an index's children: the same virtual host and
/// scheme, and the client's credentials (a private repository stays private).
pub const FORWARDED_HEADERS: [&str; 3] = [":authority", ":scheme", "authorization"];

/// The manifest types asked for when fetching a child, one `accept` line each: the client may
/// have asked for the index type only, and Distribution answers 404 for an image manifest whose
/// type is not accepted.
pub const CHILD_TYPES: [&str; 2] = [manifest::OCI_MANIFEST, manifest::DOCKER_MANIFEST];

/// Distribution's answer for a manifest it does not know, sent when a digest the filter
/// produced can no longer be produced again.
pub const MANIFEST_UNKNOWN: &[u8] = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":"the rewritten manifest no longer matches its digest"}]}"#;

/// The response headers a rewrite depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamHead {
    /// `:status`.
    pub status: Option<u16>,
    /// `Content-Type`: it must agree with the body's `mediaType`.
    pub content_type: Option<String>,
    /// `Content-Encoding`: only identity is rewritten.
    pub content_encoding: Option<String>,
    /// `Content-Length`, when it is a number.
    pub content_length: Option<u64>,
    /// `Docker-Content-Digest`: the original's digest, remembered with each digest produced.
    pub docker_content_digest: Option<String>,
}

impl UpstreamHead {
    /// Picks the headers a rewrite depends on out of a header map (names lowercase, as Envoy
    /// gives them); values that are not UTF-8 count as absent.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut head = UpstreamHead::default();
        for (name, value) in headers {
            let Ok(value) = std::str::from_utf8(value) else { continue };
            match name {
                ":status" => head.status = value.parse().ok(),
                "content-type" => head.content_type = Some(value.to_string()),
                "content-encoding" => head.content_encoding = Some(value.to_string()),
                "content-length" => head.content_length = value.trim().parse().ok(),
                "docker-content-digest" => head.docker_content_digest = Some(value.to_string()),
                _ => {}
            }
        }
        head
    }
}

/// What becomes of an answer the filter does not rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leave {
    /// Why, as counted (`None`: the upstream answered something other than 200).
    pub reason: Option<Untouched>,
    /// The client asked `HEAD` and the upstream was asked `GET`: the body must not reach the
    /// client (its `Content-Length` is already the one a `HEAD` reports).
    pub drop_body: bool,
}

/// What to do with the upstream's response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Hold them and buffer the body.
    Hold,
    /// Let the answer go.
    Leave(Leave),
}

/// A request by a digest the filter produced, turned back into one for the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reissue {
    /// The `:path` the upstream is asked instead: the original's.
    pub original_path: String,
    /// How its answer is rewritten: the same backend, expecting the digest asked for.
    pub plan: ManifestPlan,
}

/// A request by digest, given what its key holds: the request for the original if the filter
/// produced that digest for this repository and a backend it still has, `None` otherwise (the
/// request goes upstream untouched).
pub fn reissue(
    config: &Config,
    lookup: DigestLookup,
    remembered: [Option<&[u8]>; 2],
) -> Option<Reissue> {
    let mapping = remembered.iter().find_map(|value| Mapping::decode(*value, &lookup.digest))?;
    let backend = config.backends().iter().position(|b| b.name == mapping.backend)?;
    if mapping.repository != lookup.repository {
        return None;
    }
    Some(Reissue {
        original_path: format!("/v2/{}/manifests/{}", mapping.repository, mapping.original),
        plan: ManifestPlan {
            backend,
            repository: mapping.repository,
            send_as_get: lookup.is_head,
            expect_digest: Some(lookup.digest),
        },
    })
}

/// A child fetch: what to dispatch to the route's cluster for one child of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRequest {
    /// `:path`.
    pub path: String,
    /// Every header, pseudo-headers first.
    pub headers: Vec<(&'static str, String)>,
}

/// What comes after the body is whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyStep {
    /// The reply is known.
    Reply(Reply),
    /// An index: fetch these children (digests, in document order), then
    /// [`ManifestJob::complete`].
    FetchChildren(Vec<String>),
}

/// The answer sent for a held manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The rewrite, after remembering each digest it produced.
    Rewritten {
        /// The bytes and their digest.
        rewritten: Rc<Rewritten>,
        /// What makes each produced digest resolvable, to be written to its place.
        remember: Vec<Mapping>,
        /// [`Action::ManifestRewritten`] or, for a produced digest, `ManifestServedByDigest`.
        action: Action,
    },
    /// A produced digest that can no longer be produced: the registry's own 404.
    Unknown(Untouched),
    /// The original, as the upstream sent it.
    Original(Untouched),
}

impl Reply {
    /// What is counted: the action, and the reason when the manifest was not rewritten.
    pub fn counted(&self) -> (Action, Option<Untouched>) {
        match self {
            Reply::Rewritten { action, .. } => (*action, None),
            Reply::Unknown(reason) | Reply::Original(reason) => {
                (Action::ManifestUntouched, Some(*reason))
            }
        }
    }

    /// The action the decision header names, if the reply carries one (a 404 does not).
    pub fn described(&self) -> Option<Action> {
        match self {
            Reply::Rewritten { action, .. } => Some(*action),
            Reply::Original(_) => Some(Action::ManifestUntouched),
            Reply::Unknown(_) => None,
        }
    }
}

/// Changes to a held response, applied in this order: status, headers set, headers removed,
/// body. Every framing header agrees with the body sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseEdit<'a> {
    /// A new `:status`.
    pub status: Option<u16>,
    /// Headers set (replacing any value).
    pub set: Vec<(&'static str, String)>,
    /// Headers removed.
    pub remove: &'static [&'static str],
    /// The new body (`None`: keep it).
    pub body: Option<&'a [u8]>,
}

/// A manifest request whose answer may be rewritten, from request to last byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestJob {
    /// How to rewrite.
    pub plan: ManifestPlan,
    /// The client, for the decision header (none for a produced digest).
    pub client: Option<ClientMatch>,
    /// The values of [`FORWARDED_HEADERS`] the client sent, for fetching children.
    pub forwarded: Vec<(&'static str, String)>,
    /// The upstream's response head, once [`ManifestJob::judge_head`] has held it.
    pub head: UpstreamHead,
}

impl ManifestJob {
    /// A job for `plan`, with the request headers to repeat for children (`header` gives the
    /// value of a request header, if the client sent it as UTF-8).
    pub fn new(
        plan: ManifestPlan,
        client: Option<ClientMatch>,
        header: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let forwarded =
            FORWARDED_HEADERS.iter().filter_map(|&name| Some((name, header(name)?))).collect();
        ManifestJob { plan, client, forwarded, head: UpstreamHead::default() }
    }

    /// Step 1: hold the upstream's answer, or let it go and why.
    pub fn judge_head(&mut self, config: &Config, head: UpstreamHead) -> HeadVerdict {
        let max = u64::from(config.manifests.max_bytes);
        let reason = if head.status != Some(200) {
            Some(None)
        } else if manifest::is_encoded(head.content_encoding.as_deref()) {
            Some(Some(Untouched::Encoded))
        } else if head.content_length.is_some_and(|length| length > max) {
            Some(Some(Untouched::TooLarge))
        } else {
            None
        };
        if let Some(reason) = reason {
            return HeadVerdict::Leave(Leave { reason, drop_body: self.plan.send_as_get });
        }
        self.head = head;
        HeadVerdict::Hold
    }

    /// Step 2: the body buffered so far is `size` bytes; past the limit it is let go.
    pub fn judge_body_size(&self, config: &Config, size: usize) -> Option<Leave> {
        (size > config.manifests.max_bytes as usize).then_some(Leave {
            reason: Some(Untouched::TooLarge),
            drop_body: self.plan.send_as_get,
        })
    }

    /// Step 3: the whole body is `body`. A rewrite this VM already made from these very bytes
    /// is used again (nothing parsed, hashed or fetched); `known` answers from the existence
    /// cache for the blobs a checked backend's rewrite would advertise.
    pub fn on_body(
        &self,
        config: &Config,
        body: &[u8],
        cache: &mut RewriteCache,
        known: &dyn Fn(&CheckRequest) -> Option<Known>,
    ) -> BodyStep {
        if let Some(hit) = self.origin(config, body).and_then(|origin| cache.get(&origin)) {
            return BodyStep::Reply(self.reply(config, Ok(hit), body));
        }
        let read = self.read(config, body);
        if let Ok(m) = &read {
            if m.kind == Kind::Index {
                // Each distinct child once, in document order.
                let mut children: Vec<String> = Vec::new();
                for child in m.children().unwrap_or_default() {
                    if !children.iter().any(|c| c == child.as_str()) {
                        children.push(child.to_string());
                    }
                    if children.len() > config.manifests.max_children as usize {
                        return BodyStep::Reply(self.untouched(Untouched::TooManyChildren));
                    }
                }
                if !children.is_empty() {
                    return BodyStep::FetchChildren(children);
                }
            }
        }
        BodyStep::Reply(self.finish(config, read, body, &HashMap::new(), cache, known))
    }

    /// The reply when the children cannot be fetched at all (`reason`: the VM's fetches are
    /// busy, the route has no cluster, a dispatch was refused).
    pub fn give_up(&self, reason: Untouched) -> Reply {
        self.untouched(reason)
    }

    /// Whether a child's body of `size` bytes may be read into the VM.
    pub fn child_fits(config: &Config, size: usize) -> bool {
        size <= config.manifests.max_child_bytes as usize
    }

    /// The fetch of one child of the index, by digest, with the client's credentials.
    pub fn child_request(&self, digest: &str) -> ChildRequest {
        let path = format!("/v2/{}/manifests/{digest}", self.plan.repository);
        let mut headers = vec![(":method", "GET".to_string()), (":path", path.clone())];
        headers.extend(self.forwarded.iter().map(|(name, value)| (*name, value.clone())));
        headers.extend(CHILD_TYPES.iter().map(|t| ("accept", (*t).to_string())));
        ChildRequest { path, headers }
    }

    /// After the children: the reply for `index` given the children that came (a missing one
    /// leaves the index untouched).
    pub fn complete(
        &self,
        config: &Config,
        index: &[u8],
        children: &HashMap<String, Child>,
        cache: &mut RewriteCache,
        known: &dyn Fn(&CheckRequest) -> Option<Known>,
    ) -> Reply {
        let read = self.read(config, index);
        self.finish(config, read, index, children, cache, known)
    }

    /// The edit that sends `reply` on the held response.
    pub fn edit<'r>(&self, reply: &'r Reply) -> ResponseEdit<'r> {
        let head_only = self.plan.send_as_get;
        match reply {
            Reply::Rewritten { rewritten, .. } => ResponseEdit {
                status: None,
                set: vec![
                    ("content-length", rewritten.bytes.len().to_string()),
                    ("docker-content-digest", rewritten.digest.clone()),
                    ("etag", format!("\"{}\"", rewritten.digest)),
                ],
                remove: &[],
                body: Some(if head_only { b"" } else { &rewritten.bytes }),
            },
            Reply::Unknown(_) => ResponseEdit {
                status: Some(404),
                set: vec![
                    ("content-type", "application/json".to_string()),
                    ("content-length", MANIFEST_UNKNOWN.len().to_string()),
                ],
                remove: &["docker-content-digest", "etag"],
                body: Some(if head_only { b"" } else { MANIFEST_UNKNOWN }),
            },
            Reply::Original(_) => ResponseEdit {
                status: None,
                set: Vec::new(),
                remove: &[],
                body: head_only.then_some(&b""[..]),
            },
        }
    }

    fn read<'b>(
        &self,
        config: &Config,
        body: &'b [u8],
    ) -> Result<manifest::Manifest<'b>, Untouched> {
        let head = &self.head;
        let max = config.manifests.max_bytes as usize;
        manifest::read(body, head.content_type.as_deref(), head.content_encoding.as_deref(), max)
    }

    fn finish(
        &self,
        config: &Config,
        read: Result<manifest::Manifest<'_>, Untouched>,
        original: &[u8],
        children: &HashMap<String, Child>,
        cache: &mut RewriteCache,
        known: &dyn Fn(&CheckRequest) -> Option<Known>,
    ) -> Reply {
        let Some(backend) = config.backends().get(self.plan.backend) else {
            return self.untouched(Untouched::NotImage);
        };
        let checked = self.checked(backend);
        // A blob may be advertised when its backend is not checked, or is known to hold it.
        let present = |digest: &str| {
            let Some(backend) = checked else { return true };
            let Ok(digest) = Digest::parse(digest) else { return false };
            let location = backend.blob_url.render(&self.plan.repository, digest);
            blob_check(config, backend, &location)
                .is_some_and(|check| known(&check) == Some(Known::Present))
        };
        let max = config.manifests.max_bytes as usize;
        let rewritten = read.and_then(|m| {
            let child = |d: &str| children.get(d).cloned();
            m.rewrite_for(&backend.blob_url, &self.plan.repository, max, child, present)
        });
        let rewritten = match rewritten {
            Ok(rewritten) => Rc::new(rewritten),
            Err(reason) => return self.untouched(reason),
        };
        if let Some(origin) = self.origin(config, original) {
            cache.insert(&origin, &rewritten);
        }
        self.reply(config, Ok(rewritten), original)
    }

    /// The reply for a rewrite of `original` (or why there is none).
    fn reply(
        &self,
        config: &Config,
        rewritten: Result<Rc<Rewritten>, Untouched>,
        original: &[u8],
    ) -> Reply {
        let rewritten = match rewritten {
            Ok(rewritten) => rewritten,
            Err(reason) => return self.untouched(reason),
        };
        let plan = &self.plan;
        let Some(backend) = config.backends().get(plan.backend) else {
            return self.untouched(Untouched::NotImage);
        };
        if plan.expect_digest.as_ref().is_some_and(|want| *want != rewritten.digest) {
            // The upstream's original changed under the digest we produced.
            return Reply::Unknown(Untouched::ChildUnavailable);
        }
        // Only remembered, never served: a wrong header makes a later request for the produced
        // digest fail to match it (404), and Distribution always sends the right one; trusting
        // it saves hashing every manifest twice.
        let original = match self.head.docker_content_digest.as_deref().filter(|d| is_sha256(d)) {
            Some(digest) => digest.to_string(),
            None => sha256_digest(original),
        };
        let remember = |digest: &str, original: &str| Mapping {
            digest: digest.to_string(),
            backend: backend.name.clone(),
            repository: plan.repository.clone(),
            original: original.to_string(),
        };
        let remember = std::iter::once(remember(&rewritten.digest, &original))
            .chain(rewritten.children.iter().map(|(old, new)| remember(new, old)))
            .collect();
        let action = match plan.expect_digest {
            Some(_) => Action::ManifestServedByDigest,
            None => Action::ManifestRewritten,
        };
        Reply::Rewritten { rewritten, remember, action }
    }

    fn untouched(&self, reason: Untouched) -> Reply {
        match self.plan.expect_digest {
            // The digest asked for cannot be produced again: the registry's own 404.
            Some(_) => Reply::Unknown(reason),
            None => Reply::Original(reason),
        }
    }

    /// The backend, when a rewrite must ask the existence cache which blobs it may advertise:
    /// a tag's rewrite for a checked backend (all or nothing). A digest the filter produced is
    /// served again whatever the cache holds now: its blobs were known present when it was
    /// produced.
    fn checked<'b>(&self, backend: &'b Backend) -> Option<&'b Backend> {
        backend.cluster.as_ref().filter(|_| self.plan.expect_digest.is_none()).map(|_| backend)
    }

    /// What a rewrite of `original` for this job is made from, when that is all it depends on:
    /// not when a tag's rewrite must ask the existence cache.
    fn origin<'a>(&'a self, config: &Config, original: &'a [u8]) -> Option<Origin<'a>> {
        let backend = config.backends().get(self.plan.backend)?;
        if self.checked(backend).is_some() {
            return None;
        }
        Some(Origin {
            backend: self.plan.backend,
            repository: &self.plan.repository,
            content_type: self.head.content_type.as_deref(),
            original,
            upstream_digest: self.head.docker_content_digest.as_deref(),
        })
    }
}

/// What the filter does with a manifest request, in the words `blobsteer explain` prints: the
/// same decision the filter takes, and the rules its answer will go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlook {
    /// Whether the answer may be rewritten.
    pub rewrite: bool,
    /// Why, or on what condition.
    pub why: String,
    /// The method the upstream is asked with, when the filter changes it.
    pub upstream_method: Option<&'static str>,
    /// Which blobs a rewrite may advertise on the backend.
    pub advertises: Option<&'static str>,
}

/// The outlook of a manifest request (`None` for any other path) given its decision.
pub fn outlook(config: &Config, path: &str, decision: &Decision) -> Option<Outlook> {
    let RegistryPath::Manifest { .. } = RegistryPath::parse(path) else {
        return None;
    };
    let no = |why: &str| Outlook {
        rewrite: false,
        why: why.to_string(),
        upstream_method: None,
        advertises: None,
    };
    Some(match &decision.step {
        _ if !config.manifests.rewrite => no("manifests.rewrite is off"),
        RequestStep::RewriteManifest(plan) => {
            let name = config.backends().get(plan.backend).map_or("", |b| b.name.as_str());
            let checked = config.backends().get(plan.backend).is_some_and(|b| b.cluster.is_some());
            Outlook {
                rewrite: true,
                why: format!(
                    "a tag request of a client of {name}: a 200 image manifest, or an index whose \
                     children all come, is rewritten with {name}'s blob URLs; anything else \
                     (schema 1, a subject, an artifact, encoded, over manifests.max_bytes) goes \
                     untouched, counted with its reason"
                ),
                upstream_method: plan.send_as_get.then_some("GET (the client gets the headers)"),
                advertises: Some(if checked {
                    "only blobs the existence cache knows are on the mirror (all or nothing)"
                } else {
                    "every blob"
                }),
            }
        }
        RequestStep::LookupRewritten(lookup) => Outlook {
            rewrite: true,
            why: "a request by digest: if the filter produced this digest (remembered in \
                  shared data), the upstream is asked for the original and its rewrite is \
                  served again; any other digest goes untouched"
                .to_string(),
            upstream_method: lookup.is_head.then_some("GET (the client gets the headers)"),
            advertises: None,
        },
        RequestStep::LeaveManifest(Untouched::UserAgent) => no(&format!(
            "the User-Agent is not one of manifests.user_agents {:?}: only runtimes that fetch \
             blobs from urls get a rewrite; this client gets the registry's manifest byte for byte",
            config.manifests.user_agents
        )),
        RequestStep::Pass(Action::PassedMethod) => no("only GET and HEAD are rewritten"),
        RequestStep::Pass(action) => {
            no(&format!("the client has no backend ({})", action.as_str()))
        }
        _ => no("not a manifest request the filter acts on"),
    })
}

/// Whether `text` is a digest in the grammar, of sha256.
fn is_sha256(text: &str) -> bool {
    Digest::parse(text).is_ok_and(|d| d.algorithm().as_str() == "sha256")
}

#[cfg(test)]
mod tests;
