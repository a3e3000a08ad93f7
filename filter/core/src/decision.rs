//! What the filter does with a request, and then with its response: the one place that decides.
//!
//! The wasm filter and `blobsteer explain` both call these functions, so what `explain` prints is
//! what the filter does.

use crate::cidr_table::Entry;
use crate::client_ip::ClientIpSource;
use crate::config::{Backend, BlobMode, Config, Target, REDIRECT_STATUSES};
use crate::digest::Digest;
use crate::existence::CheckRequest;
use crate::manifest::Untouched;
use crate::registry_path::{Reference, RegistryPath};
use ipnet::IpNet;
use std::fmt::Write;
use std::net::IpAddr;

/// The parts of a request the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path`.
    pub path: &'a str,
    /// Every `x-forwarded-for` line, in the order received.
    pub forwarded_for: &'a [&'a str],
    /// The `source.address` property (`ip:port`), if the host gave one.
    pub source_address: Option<&'a str>,
    /// `user-agent`, if the request has one (read for manifest tag requests only).
    pub user_agent: Option<&'a str>,
    /// The request carries a body (the headers did not end the stream). The filter never
    /// holds, changes or answers such a request: its body would follow the reply on the
    /// connection, where the next response is expected.
    pub has_body: bool,
}

/// Where the client is, as far as steering is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMatch {
    /// No usable address: missing or unparseable `x-forwarded-for`.
    NoClientIp,
    /// An address no prefix covers.
    Unmapped {
        /// The client address.
        ip: IpAddr,
        /// Where it came from.
        source: ClientIpSource,
    },
    /// An address whose longest match is a non-routable prefix.
    NonRoutable {
        /// The client address.
        ip: IpAddr,
        /// Where it came from.
        source: ClientIpSource,
        /// The matched prefix.
        prefix: IpNet,
    },
    /// An address no prefix covers, steered to `default_backend`.
    Default {
        /// The client address.
        ip: IpAddr,
        /// Where it came from.
        source: ClientIpSource,
        /// Index into [`Config::backends`]: the default backend.
        backend: usize,
    },
    /// An address whose longest match belongs to a backend.
    Backend {
        /// The client address.
        ip: IpAddr,
        /// Where it came from.
        source: ClientIpSource,
        /// The matched prefix.
        prefix: IpNet,
        /// Index into [`Config::backends`].
        backend: usize,
    },
}

impl ClientMatch {
    /// The client address, if there is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            ClientMatch::NoClientIp => None,
            ClientMatch::Unmapped { ip, .. }
            | ClientMatch::NonRoutable { ip, .. }
            | ClientMatch::Default { ip, .. }
            | ClientMatch::Backend { ip, .. } => Some(ip),
        }
    }

    /// The prefix that matched, if any.
    pub fn prefix(&self) -> Option<IpNet> {
        match *self {
            ClientMatch::NonRoutable { prefix, .. } | ClientMatch::Backend { prefix, .. } => {
                Some(prefix)
            }
            _ => None,
        }
    }

    /// The backend index, if the client has one.
    pub fn backend(&self) -> Option<usize> {
        match *self {
            ClientMatch::Backend { backend, .. } | ClientMatch::Default { backend, .. } => {
                Some(backend)
            }
            _ => None,
        }
    }
}

/// What the filter did, as counted in stats (`blobsteer.<name>`) and shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Answered with a redirect to the client's backend.
    Redirected,
    /// Rewrote the `Location` of the upstream's own redirect to the client's backend.
    LocationRewritten,
    /// `verify_upstream`: the upstream refused or failed (401, 403, 404, 5xx); passed through.
    PassedUpstreamAnswer,
    /// Not a blob download.
    PassedNotBlob,
    /// A blob path with a method other than `GET` or `HEAD`.
    PassedMethod,
    /// Blob handling is off.
    PassedBlobsOff,
    /// No usable client address.
    PassedNoClientIp,
    /// The client address matches no prefix.
    PassedNoBackend,
    /// The client address is in a non-routable prefix.
    PassedNonRoutable,
    /// The client's mirror lacks the blob, or its check failed: the request went upstream.
    PassedMirrorMissing,
    /// A blob or manifest request that carries a body (no download sends one).
    PassedRequestBody,
    /// A manifest asked for by a digest the filter did not produce (a pinned pull): untouched.
    PassedPinnedManifest,
    /// `verify_upstream`: a blob `GET` back from the filter's own redirect to the registry (the
    /// upstream said yes, the client's mirror lacked the blob), marked with [`REGISTRY_MARK`]:
    /// untouched, so the registry serves the bytes.
    PassedRegistryRetry,
    /// A manifest was rewritten for the client's backend.
    ManifestRewritten,
    /// A manifest was left as the upstream sent it (the reason has its own counter).
    ManifestUntouched,
    /// A digest the filter produced was served again from the original.
    ManifestServedByDigest,
}

impl Action {
    /// Every action, for defining stats up front.
    pub const ALL: [Action; 16] = [
        Action::Redirected,
        Action::LocationRewritten,
        Action::PassedUpstreamAnswer,
        Action::PassedNotBlob,
        Action::PassedMethod,
        Action::PassedBlobsOff,
        Action::PassedNoClientIp,
        Action::PassedNoBackend,
        Action::PassedNonRoutable,
        Action::PassedMirrorMissing,
        Action::PassedRequestBody,
        Action::PassedPinnedManifest,
        Action::PassedRegistryRetry,
        Action::ManifestRewritten,
        Action::ManifestUntouched,
        Action::ManifestServedByDigest,
    ];

    /// Actions that are also counted per backend (`blobsteer.backend.<name>.<action>`).
    pub const PER_BACKEND: [Action; 5] = [
        Action::Redirected,
        Action::LocationRewritten,
        Action::PassedUpstreamAnswer,
        Action::PassedMirrorMissing,
        Action::ManifestRewritten,
    ];

    /// The stat name of the action.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Redirected => "redirected",
            Action::LocationRewritten => "location_rewritten",
            Action::PassedUpstreamAnswer => "passed_upstream_answer",
            Action::PassedNotBlob => "passed_not_blob",
            Action::PassedMethod => "passed_method",
            Action::PassedBlobsOff => "passed_blobs_off",
            Action::PassedNoClientIp => "passed_no_client_ip",
            Action::PassedNoBackend => "passed_no_backend",
            Action::PassedNonRoutable => "passed_non_routable",
            Action::PassedMirrorMissing => "passed_mirror_missing",
            Action::PassedRequestBody => "passed_request_body",
            Action::PassedPinnedManifest => "passed_pinned_manifest",
            Action::PassedRegistryRetry => "passed_registry_retry",
            Action::ManifestRewritten => "manifest_rewritten",
            Action::ManifestUntouched => "manifest_untouched",
            Action::ManifestServedByDigest => "manifest_served_by_digest",
        }
    }
}

/// The query parameter that marks the filter's redirect of a client back to the registry
/// (`verify_upstream`, when the upstream said yes but the mirror lacks the blob): the marked
/// request is passed untouched, so it gets the registry's bytes rather than the same redirect.
pub const REGISTRY_MARK: &str = "blobsteer=registry";

/// The status of that redirect: temporary, since the mirror will hold the blob later.
pub const REGISTRY_RETRY_STATUS: u16 = 307;

/// A redirect the filter answers with itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// One of [`REDIRECT_STATUSES`].
    pub status: u16,
    /// The backend's URL for the blob.
    pub location: String,
}

/// What to do once the request headers are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestStep {
    /// Answer now; the upstream is not contacted.
    Respond(Redirect),
    /// Send upstream, then decide on its response with this plan.
    Forward(ResponsePlan),
    /// Leave the request and its response untouched.
    Pass(Action),
    /// A tag request of a client with a backend: rewrite the upstream's manifest for it.
    RewriteManifest(ManifestPlan),
    /// A manifest asked for by digest: if the filter produced that digest (its memory of it is
    /// in the host), serve the rewrite of the original again; otherwise pass it untouched.
    LookupRewritten(DigestLookup),
    /// A tag request whose manifest is not rewritten, for this reason, decided from the
    /// request alone: passed untouched, counted as `manifest_untouched`.
    LeaveManifest(Untouched),
}

impl RequestStep {
    /// Whether the request may go upstream changed (its method, or a produced digest's path):
    /// the access log then needs the client's own request, which the filter records.
    pub fn changes_request(&self) -> bool {
        match self {
            RequestStep::Forward(plan) => plan.send_as_head(),
            RequestStep::RewriteManifest(plan) => plan.send_as_get,
            RequestStep::LookupRewritten(_) => true,
            RequestStep::Respond(_) | RequestStep::Pass(_) | RequestStep::LeaveManifest(_) => false,
        }
    }
}

/// How to rewrite the manifest the upstream answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestPlan {
    /// The backend whose URLs go into the manifest.
    pub backend: usize,
    /// The repository (for `{repository}` in blob URLs, and for fetching an index's children).
    pub repository: String,
    /// The client asked `HEAD`: the upstream is asked `GET` (the digest and length of the
    /// rewritten body are needed) and the client gets the headers only.
    pub send_as_get: bool,
    /// For a digest request, the digest the rewritten bytes must have.
    pub expect_digest: Option<String>,
}

/// A manifest request by digest, which may name a digest the filter produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestLookup {
    /// The repository asked for.
    pub repository: String,
    /// The digest asked for.
    pub digest: String,
    /// Whether the client asked `HEAD`.
    pub is_head: bool,
}

/// The decision on a request: who the client is, and what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The client, when the request was one the client's address matters for.
    pub client: Option<ClientMatch>,
    /// What happens next.
    pub step: RequestStep,
    /// When the client's backend is checked before a redirect is answered (blob mode
    /// `redirect`): the check, whose answer decides between `step` (present) and going upstream
    /// untouched (absent). A forwarded request's check is in its [`ResponsePlan`]: it is asked
    /// after the upstream, not before.
    pub check: Option<CheckRequest>,
    /// For a checked backend (either blob mode): where the client goes, in order, if its
    /// backend lacks the blob or is down (its `fallback` chain); after them, the registry.
    pub fallbacks: FallbackChain,
}

/// A backend of a client's fallback chain, for one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// Index into [`Config::backends`].
    pub backend: usize,
    /// The redirect to its URL for the blob.
    pub redirect: Redirect,
    /// Its existence check, if it has a `cluster` (without one it is assumed to hold every
    /// blob): it is used only once its check (or the cache) says the blob is there.
    pub check: Option<CheckRequest>,
}

/// A client's fallback chain for one blob, walked in order while the backends reached lack the
/// blob or are down. Each backend's redirect and check are made only when it is reached: most
/// requests never need them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FallbackChain {
    /// The chain's backends, in order (indices into [`Config::backends`]).
    backends: Vec<usize>,
    /// How many of them the walk has reached.
    reached: usize,
    /// The repository asked for.
    repository: String,
    /// The digest asked for, as the request gave it (already parsed once).
    digest: String,
}

impl FallbackChain {
    /// The chain of `backend` for a blob.
    fn of(backend: &Backend, repository: &str, digest: Digest<'_>) -> Self {
        if backend.fallback.is_empty() {
            return FallbackChain::default();
        }
        FallbackChain {
            backends: backend.fallback.clone(),
            reached: 0,
            repository: repository.to_string(),
            digest: digest.to_string(),
        }
    }

    /// The backends not reached yet, in order.
    pub fn backends(&self) -> impl Iterator<Item = usize> + '_ {
        self.backends.iter().skip(self.reached).copied()
    }

    /// The next backend of the chain, with its redirect and check for this blob (`None` at the
    /// end). `config` is the one the chain was decided with.
    pub fn next(&mut self, config: &Config) -> Option<Fallback> {
        let index = *self.backends.get(self.reached)?;
        self.reached += 1;
        let backend = config.backends().get(index)?;
        let digest = Digest::parse(&self.digest).ok()?;
        let location = backend.blob_url.render(&self.repository, digest);
        let check = blob_check(config, backend, &location);
        let redirect = Redirect { status: config.blobs.redirect_status, location };
        Some(Fallback { backend: index, redirect, check })
    }
}

/// How to judge the upstream's answer to a blob request forwarded in `verify_upstream` mode.
///
/// The upstream is asked first and always the same way, whatever the mirror holds: a refusal
/// then cannot tell a client what the mirror has, and the mirror is asked only about requests
/// the upstream said yes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePlan {
    /// The backend the client belongs to.
    pub backend: usize,
    /// The backend's URL for the blob.
    pub location: String,
    /// When the client asked `GET`: it goes upstream as `HEAD`, so the blob itself is never
    /// transferred, and this is the client's blob path marked with [`REGISTRY_MARK`], where the
    /// client is sent back for the registry's bytes if its mirror lacks the blob.
    pub head_for_get: Option<String>,
    /// Status of the redirects the filter sends.
    pub redirect_status: u16,
    /// The backend's existence check, asked only once the upstream has said yes.
    pub check: Option<CheckRequest>,
}

/// What to do with the upstream's response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseStep {
    /// Replace the response with this redirect.
    Respond(Redirect),
    /// Keep the response, with `Location` set to this URL.
    RewriteLocation(String),
    /// Keep the response as it is.
    Pass,
}

/// The decision on a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseDecision {
    /// What is counted.
    pub action: Action,
    /// What to do.
    pub step: ResponseStep,
    /// The backend it is counted for.
    pub backend: usize,
    /// The request went up as `HEAD` but the client asked `GET`.
    pub sent_as_head: bool,
}

impl ResponseDecision {
    /// The same steering decision, towards a backend of the client's fallback chain: its own
    /// backend lacks the blob (`verify_upstream`, once the upstream said yes).
    pub fn towards(&self, fallback: &Fallback) -> ResponseDecision {
        let location = fallback.redirect.location.clone();
        let step = match &self.step {
            ResponseStep::Respond(redirect) => {
                ResponseStep::Respond(Redirect { status: redirect.status, location })
            }
            ResponseStep::RewriteLocation(_) => ResponseStep::RewriteLocation(location),
            ResponseStep::Pass => ResponseStep::Pass,
        };
        ResponseDecision { step, backend: fallback.backend, ..*self }
    }

    /// Whether a kept response must say `content-length: 0`: it answers a `HEAD` sent for a
    /// `GET`, so it has no body, and an HTTP/1.1 client would wait for bytes that never come.
    pub fn zero_content_length(&self) -> bool {
        self.sent_as_head && !matches!(self.step, ResponseStep::Respond(_))
    }
}

/// What the upstream's answer to a forwarded blob request leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Decided by the status alone.
    Decided(ResponseDecision),
    /// The upstream said yes for a backend that is checked: `present` if the check finds the
    /// blob on the mirror, `absent` otherwise (or if the check fails).
    Checked {
        /// The check to ask (or whose cached answer to read).
        check: Box<CheckRequest>,
        /// The steering decision.
        present: ResponseDecision,
        /// The upstream's answer as the client asked it: a `GET` that went up as `HEAD` is sent
        /// back to its own path, marked, for the registry's bytes; anything else is kept.
        absent: ResponseDecision,
    },
}

impl ResponsePlan {
    /// Whether the client's `GET` goes upstream as `HEAD`.
    pub fn send_as_head(&self) -> bool {
        self.head_for_get.is_some()
    }

    /// Judges the upstream's status. A `200` is its yes, and so is a `206`: the answer to a
    /// `Range` request (containerd resumes a layer that way); it becomes the redirect too, and
    /// the client asks the mirror for the same range (passed on, it would be a `206` without
    /// its bytes). A redirect is a yes whose `Location` is rewritten. Anything else is a refusal,
    /// kept as it is, and the mirror is not asked.
    pub fn judge(self, status: u16) -> Verdict {
        let sent_as_head = self.send_as_head();
        let backend = self.backend;
        let decided = |action, step| ResponseDecision { action, step, backend, sent_as_head };
        let present = if matches!(status, 200 | 206) {
            let redirect = Redirect { status: self.redirect_status, location: self.location };
            decided(Action::Redirected, ResponseStep::Respond(redirect))
        } else if REDIRECT_STATUSES.contains(&status) {
            decided(Action::LocationRewritten, ResponseStep::RewriteLocation(self.location))
        } else {
            return Verdict::Decided(decided(Action::PassedUpstreamAnswer, ResponseStep::Pass));
        };
        let Some(check) = self.check else {
            return Verdict::Decided(present);
        };
        let step = match (&present.step, self.head_for_get) {
            (ResponseStep::Respond(_), Some(retry)) => {
                ResponseStep::Respond(Redirect { status: REGISTRY_RETRY_STATUS, location: retry })
            }
            _ => ResponseStep::Pass,
        };
        let absent = decided(Action::PassedMirrorMissing, step);
        Verdict::Checked { check: Box::new(check), present, absent }
    }
}

/// What a request path leads to, decided from `:path` alone: most requests a registry sees
/// (tokens, catalog, uploads, anything outside the grammar) are passed without reading another
/// header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Not a request the filter acts on, whatever its other headers say.
    Pass(Action),
    /// A blob, or a manifest with rewriting on.
    Registry(RegistryPath<'a>),
}

impl Route<'_> {
    /// Whether deciding needs the client's address (and so `x-forwarded-for`).
    pub fn needs_client(&self) -> bool {
        !matches!(self, Route::Pass(_))
    }

    /// Whether it is a manifest request (whose `user-agent` the decision reads).
    pub fn is_manifest(&self) -> bool {
        matches!(self, Route::Registry(RegistryPath::Manifest { .. }))
    }
}

/// Finds the client's address and the backend it belongs to.
pub fn classify_client(
    config: &Config,
    forwarded_for: &[&str],
    source_address: Option<&str>,
) -> ClientMatch {
    let Some((ip, source)) = config.client_ip.client_ip(forwarded_for, source_address) else {
        return ClientMatch::NoClientIp;
    };
    match config.table().lookup(ip) {
        None => match config.default_backend {
            Some(backend) => ClientMatch::Default { ip, source, backend },
            None => ClientMatch::Unmapped { ip, source },
        },
        Some(Entry { prefix, target: Target::NonRoutable }) => {
            ClientMatch::NonRoutable { ip, source, prefix: *prefix }
        }
        Some(Entry { prefix, target: Target::Backend(backend) }) => {
            ClientMatch::Backend { ip, source, prefix: *prefix, backend: *backend }
        }
    }
}

/// What `:path` leads to (the first half of [`decide_request`]).
pub fn route<'a>(config: &Config, path: &'a str) -> Route<'a> {
    match RegistryPath::parse(path) {
        RegistryPath::Blob { .. }
            if config.blobs.mode == BlobMode::VerifyUpstream && is_registry_retry(path) =>
        {
            Route::Pass(Action::PassedRegistryRetry)
        }
        blob @ RegistryPath::Blob { .. } => Route::Registry(blob),
        manifest @ RegistryPath::Manifest { .. } if config.manifests.rewrite => {
            Route::Registry(manifest)
        }
        _ => Route::Pass(Action::PassedNotBlob),
    }
}

/// Whether the query of `path` carries [`REGISTRY_MARK`] as one of its parameters.
fn is_registry_retry(path: &str) -> bool {
    path.split_once('?').is_some_and(|(_, query)| query.split('&').any(|p| p == REGISTRY_MARK))
}

/// Where a client whose mirror lacks a blob gets it from the registry: its blob path, rebuilt
/// from the parsed parts (so nothing of the client's own query or encoding survives) and marked.
/// A path, not a URL: the client stays on the host it asked.
fn registry_retry(repository: &str, digest: Digest<'_>) -> String {
    format!("/v2/{repository}/blobs/{}?{REGISTRY_MARK}", digest.as_str())
}

/// Decides what to do with a request, from its headers alone.
pub fn decide_request(config: &Config, request: &Request<'_>) -> Decision {
    decide_route(config, route(config, request.path), request)
}

/// Decides what to do with a request whose path led to `route` (the second half of
/// [`decide_request`]); `request.path` is not read again.
pub fn decide_route(config: &Config, route: Route<'_>, request: &Request<'_>) -> Decision {
    let pass = |action| Decision {
        client: None,
        step: RequestStep::Pass(action),
        check: None,
        fallbacks: FallbackChain::default(),
    };
    let is_head = match (route, request.method) {
        (Route::Pass(action), _) => return pass(action),
        (_, "GET") => false,
        (_, "HEAD") => true,
        _ => return pass(Action::PassedMethod),
    };
    if request.has_body {
        return pass(Action::PassedRequestBody);
    }
    let (repository, digest) = match route {
        Route::Registry(RegistryPath::Blob { repository, digest }) => (repository, digest),
        Route::Registry(RegistryPath::Manifest { repository, reference }) => {
            return decide_manifest(config, request, repository, reference, is_head);
        }
        Route::Registry(RegistryPath::Other) => return pass(Action::PassedNotBlob),
        Route::Pass(action) => return pass(action),
    };
    if config.blobs.mode == BlobMode::Off {
        return pass(Action::PassedBlobsOff);
    }
    let client = classify_client(config, request.forwarded_for, request.source_address);
    let mut check = None;
    let mut fallbacks = FallbackChain::default();
    let step = match client {
        ClientMatch::NoClientIp => RequestStep::Pass(Action::PassedNoClientIp),
        ClientMatch::Unmapped { .. } => RequestStep::Pass(Action::PassedNoBackend),
        ClientMatch::NonRoutable { .. } => RequestStep::Pass(Action::PassedNonRoutable),
        ClientMatch::Backend { backend, .. } | ClientMatch::Default { backend, .. } => {
            match config.backends().get(backend) {
                None => RequestStep::Pass(Action::PassedNoBackend),
                Some(b) => {
                    let location = b.blob_url.render(repository, digest);
                    let backend_check = blob_check(config, b, &location);
                    if backend_check.is_some() {
                        fallbacks = FallbackChain::of(b, repository, digest);
                    }
                    match config.blobs.mode {
                        BlobMode::VerifyUpstream => RequestStep::Forward(ResponsePlan {
                            backend,
                            location,
                            head_for_get: (!is_head).then(|| registry_retry(repository, digest)),
                            redirect_status: config.blobs.redirect_status,
                            check: backend_check,
                        }),
                        _ => {
                            check = backend_check;
                            RequestStep::Respond(Redirect {
                                status: config.blobs.redirect_status,
                                location,
                            })
                        }
                    }
                }
            }
        }
    };
    Decision { client: Some(client), step, check, fallbacks }
}

/// The existence check that must say "present" before anyone is sent to `backend` for the blob
/// at `location` (a rendered blob URL, so the check and its cache cover everything the
/// template uses): `None` when the backend has no `cluster` (it is assumed to hold every blob).
/// Blob redirects and the blobs a rewritten manifest advertises are checked alike.
pub fn blob_check(config: &Config, backend: &Backend, location: &str) -> Option<CheckRequest> {
    let cluster = backend.cluster.as_deref()?;
    CheckRequest::new(&config.existence_check, cluster, &backend.name, location)
}

/// Manifest requests, with rewriting on. A digest is looked up whoever asks (a digest handed
/// to a runtime must resolve for `crictl`, curl and any other client); a tag is rewritten only
/// for the user agents of `manifests.user_agents`, for a client with a backend.
fn decide_manifest(
    config: &Config,
    request: &Request<'_>,
    repository: &str,
    reference: Reference<'_>,
    is_head: bool,
) -> Decision {
    if let Reference::Digest(digest) = reference {
        let lookup = DigestLookup {
            repository: repository.to_string(),
            digest: digest.as_str().to_string(),
            is_head,
        };
        let step = RequestStep::LookupRewritten(lookup);
        return Decision { client: None, step, check: None, fallbacks: FallbackChain::default() };
    }
    if !config.manifests.rewrites_for(request.user_agent) {
        let step = RequestStep::LeaveManifest(Untouched::UserAgent);
        return Decision { client: None, step, check: None, fallbacks: FallbackChain::default() };
    }
    let client = classify_client(config, request.forwarded_for, request.source_address);
    let step = match client {
        ClientMatch::NoClientIp => RequestStep::Pass(Action::PassedNoClientIp),
        // A manifest is rewritten only for a region's own mirror, never for the default.
        ClientMatch::Unmapped { .. } | ClientMatch::Default { .. } => {
            RequestStep::Pass(Action::PassedNoBackend)
        }
        ClientMatch::NonRoutable { .. } => RequestStep::Pass(Action::PassedNonRoutable),
        ClientMatch::Backend { backend, .. } => RequestStep::RewriteManifest(ManifestPlan {
            backend,
            repository: repository.to_string(),
            send_as_get: is_head,
            expect_digest: None,
        }),
    };
    Decision { client: Some(client), step, check: None, fallbacks: FallbackChain::default() }
}

/// The value of the optional decision header: `<action>; client=<ip>; prefix=<cidr>; backend=<name>`.
pub fn describe(config: &Config, action: Action, client: Option<&ClientMatch>) -> String {
    let mut text = String::from(action.as_str());
    if let Some(client) = client {
        match client.ip() {
            Some(ip) => {
                let _ = write!(text, "; client={ip}");
            }
            None => text.push_str("; client=none"),
        }
        if let Some(prefix) = client.prefix() {
            let _ = write!(text, "; prefix={prefix}");
        }
        if let Some(backend) = client.backend().and_then(|i| config.backends().get(i)) {
            let _ = write!(text, "; backend={}", backend.name);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const BLOB: &str = "/v2/demo/hello/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn config(mode: &str) -> Config {
        let json = format!(
            r#"{{
            "backends": [
                {{"name": "aws-eu-west-3", "blob_url": "https://eu.example/containers/images/{{digest}}", "cidrs": ["15.236.0.0/15", "2a05:d012::/36"]}},
                {{"name": "aws-ap-northeast-1", "blob_url": "https://ap.example/{{repository}}/{{encoded}}/{{digest}}", "cidrs": ["15.193.1.0/24"]}}
            ],
            "non_routable": ["15.193.0.0/19"],
            "blobs": {{"mode": "{mode}"}}
        }}"#
        );
        Config::from_json(json.as_bytes()).unwrap()
    }

    fn request<'a>(method: &'a str, path: &'a str, xff: &'a [&'a str]) -> Request<'a> {
        Request {
            method,
            path,
            forwarded_for: xff,
            source_address: None,
            user_agent: Some("containerd/1.7.24"),
            has_body: false,
        }
    }

    #[test]
    fn redirect_mode_answers_mapped_blob_requests() {
        let c = config("redirect");
        for method in ["GET", "HEAD"] {
            let d = decide_request(&c, &request(method, BLOB, &["15.236.10.20"]));
            assert_eq!(
                d.step,
                RequestStep::Respond(Redirect {
                    status: 307,
                    location: format!("https://eu.example/containers/images/{}", &BLOB[21..]),
                })
            );
            assert_eq!(d.client.and_then(|c| c.backend()), Some(0));
        }
    }

    #[test]
    fn a_backend_with_a_cluster_is_checked_first() {
        let json = r#"{"backends": [{"name": "eu", "blob_url": "http://eu.example:81/b/{digest}", "cidrs": ["15.236.0.0/15"], "cluster": "mirror_eu"}],
                       "existence_check": {"cache_slots": 8}}"#;
        let c = Config::from_json(json.as_bytes()).unwrap();
        let d = decide_request(&c, &request("HEAD", BLOB, &["15.236.10.20"]));
        let check = d.check.unwrap();
        assert_eq!(
            (check.cluster.as_str(), check.authority.as_str()),
            ("mirror_eu", "eu.example:81")
        );
        assert_eq!(check.path, format!("/b/{}", &BLOB[21..]));
        assert!(matches!(d.step, RequestStep::Respond(_)));
        // No cluster, no check; no backend, no check.
        assert_eq!(
            decide_request(&config("redirect"), &request("GET", BLOB, &["15.236.10.20"])).check,
            None
        );
        assert_eq!(decide_request(&c, &request("GET", BLOB, &["1.1.1.1"])).check, None);
    }

    #[test]
    fn longest_prefix_inside_non_routable_supernet_wins() {
        let c = config("redirect");
        let d = decide_request(&c, &request("GET", BLOB, &["15.193.1.5"]));
        let RequestStep::Respond(redirect) = d.step else { panic!("{d:?}") };
        assert!(
            redirect.location.starts_with("https://ap.example/demo/hello/0123"),
            "{}",
            redirect.location
        );
        let d = decide_request(&c, &request("GET", BLOB, &["15.193.2.5"]));
        assert_eq!(d.step, RequestStep::Pass(Action::PassedNonRoutable));
    }

    #[test]
    fn everything_else_passes_with_its_reason() {
        let c = config("redirect");
        let cases: [(&str, &str, &[&str], Action); 8] = [
            ("GET", "/v2/demo/hello/manifests/1.0", &["15.236.10.20"], Action::PassedNotBlob),
            ("GET", "/v2/demo/blobs/sha256:ABC", &["15.236.10.20"], Action::PassedNotBlob),
            ("PUT", BLOB, &["15.236.10.20"], Action::PassedMethod),
            ("get", BLOB, &["15.236.10.20"], Action::PassedMethod),
            ("GET", BLOB, &[], Action::PassedNoClientIp),
            ("GET", BLOB, &["not-an-ip"], Action::PassedNoClientIp),
            ("GET", BLOB, &["198.51.100.7"], Action::PassedNoBackend),
            ("GET", BLOB, &["15.193.0.1"], Action::PassedNonRoutable),
        ];
        for (method, path, xff, want) in cases {
            let d = decide_request(&c, &request(method, path, xff));
            assert_eq!(d.step, RequestStep::Pass(want), "{method} {path} {xff:?}");
        }
        // A body on a GET or HEAD: never held, changed or answered, in any mode.
        for mode in ["redirect", "verify_upstream"] {
            let with_body = Request { has_body: true, ..request("GET", BLOB, &["15.236.10.20"]) };
            let d = decide_request(&config(mode), &with_body);
            assert_eq!(d.step, RequestStep::Pass(Action::PassedRequestBody), "{mode}");
            assert_eq!(d.check, None);
        }
        let off = config("off");
        assert_eq!(
            decide_request(&off, &request("GET", BLOB, &["15.236.10.20"])).step,
            RequestStep::Pass(Action::PassedBlobsOff)
        );
    }

    #[test]
    fn verify_upstream_forwards_then_judges_the_answer() {
        let c = config("verify_upstream");
        let d = decide_request(&c, &request("GET", BLOB, &["2a05:d012::1"]));
        let RequestStep::Forward(plan) = d.step else { panic!("{d:?}") };
        assert!(plan.send_as_head() && plan.check.is_none() && d.check.is_none());
        let judge = |status| match plan.clone().judge(status) {
            Verdict::Decided(decision) => decision,
            checked => panic!("{checked:?}"),
        };
        for yes in [200, 206] {
            let ok = judge(yes);
            assert_eq!(ok.action, Action::Redirected, "{yes}");
            assert!(matches!(ok.step, ResponseStep::Respond(Redirect { status: 307, .. })));
            assert!(!ok.zero_content_length());
        }
        let moved = judge(307);
        assert_eq!(moved.step, ResponseStep::RewriteLocation(plan.location.clone()));
        assert!(moved.zero_content_length());
        for refused in [401, 403, 404, 416, 500, 503] {
            let r = judge(refused);
            assert_eq!((r.action, &r.step), (Action::PassedUpstreamAnswer, &ResponseStep::Pass));
            assert!(r.zero_content_length());
        }
        let head = decide_request(&c, &request("HEAD", BLOB, &["15.236.0.1"]));
        let RequestStep::Forward(plan) = head.step else { panic!() };
        assert!(!plan.send_as_head());
        let Verdict::Decided(refused) = plan.judge(401) else { panic!() };
        assert!(!refused.zero_content_length());
    }

    fn checked_verify_upstream() -> Config {
        let json = r#"{"backends": [{"name": "eu", "blob_url": "http://eu.example/b/{digest}", "cidrs": ["15.236.0.0/15"], "cluster": "mirror_eu"}],
                       "blobs": {"mode": "verify_upstream"}}"#;
        Config::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn verify_upstream_asks_the_mirror_only_after_the_upstream_said_yes() {
        let c = checked_verify_upstream();
        let retry = format!("{}?blobsteer=registry", &BLOB);
        for (method, query) in [("GET", ""), ("HEAD", ""), ("GET", "?x=1&y")] {
            let path = format!("{BLOB}{query}");
            let d = decide_request(&c, &request(method, &path, &["15.236.10.20"]));
            assert_eq!(d.check, None, "nothing is asked before the upstream");
            let RequestStep::Forward(plan) = d.step else { panic!("{d:?}") };
            assert_eq!(plan.head_for_get.as_deref(), (method == "GET").then_some(retry.as_str()));
            // A refusal is decided without the mirror, the same whatever it holds.
            for refused in [401, 403, 404, 500] {
                let Verdict::Decided(r) = plan.clone().judge(refused) else { panic!() };
                assert_eq!((r.action, r.step), (Action::PassedUpstreamAnswer, ResponseStep::Pass));
            }
            for yes in [200, 206, 302, 307] {
                let Verdict::Checked { check, present, absent } = plan.clone().judge(yes) else {
                    panic!("{yes}")
                };
                assert_eq!(check.path, format!("/b/{}", &BLOB[21..]));
                assert!(matches!(present.action, Action::Redirected | Action::LocationRewritten));
                assert_eq!(absent.action, Action::PassedMirrorMissing);
                let back = Redirect { status: 307, location: retry.clone() };
                let want = match (method, yes) {
                    ("GET", 200 | 206) => ResponseStep::Respond(back),
                    _ => ResponseStep::Pass,
                };
                assert_eq!(absent.step, want, "{method} {yes}");
                assert_eq!(absent.zero_content_length(), method == "GET" && yes >= 300);
            }
        }
    }

    #[test]
    fn the_marked_retry_goes_to_the_registry_untouched() {
        let c = checked_verify_upstream();
        for path in [format!("{BLOB}?blobsteer=registry"), format!("{BLOB}?a=b&blobsteer=registry")]
        {
            let d = decide_request(&c, &request("GET", &path, &["15.236.10.20"]));
            assert_eq!(d.step, RequestStep::Pass(Action::PassedRegistryRetry), "{path}");
        }
        // Only the exact parameter, only in verify_upstream mode (the only mode that sends it).
        for path in [format!("{BLOB}?blobsteer=registryx"), format!("{BLOB}?xblobsteer=registry")] {
            let d = decide_request(&c, &request("GET", &path, &["15.236.10.20"]));
            assert!(matches!(d.step, RequestStep::Forward(_)), "{path}");
        }
        let marked = format!("{BLOB}?blobsteer=registry");
        let d = decide_request(&config("redirect"), &request("GET", &marked, &["15.236.10.20"]));
        assert!(matches!(d.step, RequestStep::Respond(_)));
    }

    #[test]
    fn a_tag_is_rewritten_only_for_the_listed_user_agents_a_digest_for_anyone() {
        let json = r#"{"backends": [{"name": "eu", "blob_url": "http://eu.example/b/{digest}", "cidrs": ["15.236.0.0/15"]}],
                       "manifests": {"rewrite": true}}"#;
        let c = Config::from_json(json.as_bytes()).unwrap();
        let tag = "/v2/demo/hello/manifests/1.0";
        let by = |path: &str, agent: Option<&str>| {
            let r = Request { user_agent: agent, ..request("GET", path, &["15.236.10.20"]) };
            decide_request(&c, &r).step
        };
        for agent in ["containerd/1.6.20", "cri-o/1.28.1 go/go1.20"] {
            assert!(matches!(by(tag, Some(agent)), RequestStep::RewriteManifest(_)), "{agent}");
        }
        let others = [
            Some("skopeo/1.9.3"),
            Some("containers/5.24 (github.com/containers/image)"),
            Some("curl/7.88.1"),
            Some("not containerd/1"),
            None,
        ];
        for agent in others {
            assert_eq!(
                by(tag, agent),
                RequestStep::LeaveManifest(Untouched::UserAgent),
                "{agent:?}"
            );
            let digest = format!("/v2/demo/hello/manifests/sha256:{}", "a".repeat(64));
            assert!(matches!(by(&digest, agent), RequestStep::LookupRewritten(_)), "{agent:?}");
        }
    }

    #[test]
    fn a_checked_backends_chain_comes_with_either_blob_mode_and_steers_there() {
        let json = |mode: &str| {
            format!(
                r#"{{"backends": [
                {{"name": "eu", "blob_url": "https://eu/{{digest}}", "cidrs": ["15.236.0.0/15"],
                  "cluster": "m_eu", "fallback": ["fra", "cdn"]}},
                {{"name": "fra", "blob_url": "https://fra/{{repository}}/{{digest}}", "cidrs": [], "cluster": "m_fra"}},
                {{"name": "cdn", "blob_url": "https://cdn/{{digest}}", "cidrs": []}}],
                "blobs": {{"mode": "{mode}"}}}}"#
            )
        };
        for mode in ["redirect", "verify_upstream"] {
            let c = Config::from_json(json(mode).as_bytes()).unwrap();
            let d = decide_request(&c, &request("GET", BLOB, &["15.236.10.20"]));
            assert_eq!(d.fallbacks.backends().collect::<Vec<_>>(), [1, 2], "{mode}");
            let mut chain = d.fallbacks.clone();
            let fallbacks: Vec<Fallback> = std::iter::from_fn(|| chain.next(&c)).collect();
            assert_eq!(fallbacks.iter().map(|f| f.backend).collect::<Vec<_>>(), [1, 2]);
            assert_eq!(chain.backends().count(), 0, "walked");
            assert_eq!(
                fallbacks[0].redirect.location,
                format!("https://fra/demo/hello/{}", &BLOB[21..])
            );
            assert_eq!(fallbacks[0].check.as_ref().map(|c| c.cluster.as_str()), Some("m_fra"));
            assert_eq!(fallbacks[1].check, None, "no cluster: assumed to hold every blob");
        }
        // verify_upstream: the same steering, towards the fallback.
        let c = Config::from_json(json("verify_upstream").as_bytes()).unwrap();
        let d = decide_request(&c, &request("GET", BLOB, &["15.236.10.20"]));
        let mut chain = d.fallbacks.clone();
        let cdn = chain.next(&c).and_then(|_| chain.next(&c)).unwrap();
        let RequestStep::Forward(plan) = d.step else { panic!("{d:?}") };
        for (status, action) in [(200, Action::Redirected), (307, Action::LocationRewritten)] {
            let Verdict::Checked { present, .. } = plan.clone().judge(status) else { panic!() };
            let towards = present.towards(&cdn);
            assert_eq!((towards.action, towards.backend), (action, 2));
            let location = match towards.step {
                ResponseStep::Respond(r) => r.location,
                ResponseStep::RewriteLocation(l) => l,
                ResponseStep::Pass => panic!("{status}"),
            };
            assert_eq!(location, cdn.redirect.location);
        }
        // A backend without a cluster is never checked, so it has no chain to go down.
        let c =
            Config::from_json(json("redirect").replace(r#""cluster": "m_eu", "#, "").as_bytes())
                .unwrap();
        let d = decide_request(&c, &request("GET", BLOB, &["15.236.10.20"]));
        assert_eq!(d.fallbacks, FallbackChain::default());
    }

    #[test]
    fn an_unmapped_client_goes_to_the_default_backend_a_non_routable_one_nowhere() {
        let json = r#"{"backends": [
                {"name": "eu", "blob_url": "https://eu/{digest}", "cidrs": ["15.236.0.0/15"], "fallback": ["cdn"]},
                {"name": "cdn", "blob_url": "https://cdn/{digest}", "cidrs": []}],
            "non_routable": ["15.193.0.0/19"], "default_backend": "cdn"}"#;
        let c = Config::from_json(json.as_bytes()).unwrap();
        let d = decide_request(&c, &request("GET", BLOB, &["198.51.100.7"]));
        assert!(matches!(d.client, Some(ClientMatch::Default { backend: 1, .. })), "{d:?}");
        let RequestStep::Respond(redirect) = d.step else { panic!("{d:?}") };
        assert!(redirect.location.starts_with("https://cdn/sha256:"));
        assert_eq!(
            describe(&c, Action::Redirected, d.client.as_ref()),
            "redirected; client=198.51.100.7; backend=cdn"
        );
        let d = decide_request(&c, &request("GET", BLOB, &["15.193.0.1"]));
        assert_eq!(d.step, RequestStep::Pass(Action::PassedNonRoutable));
        let d = decide_request(&c, &request("GET", BLOB, &["not-an-ip"]));
        assert_eq!(d.step, RequestStep::Pass(Action::PassedNoClientIp));
    }

    #[test]
    fn describe_tells_the_operator_why() {
        let c = config("redirect");
        let d = decide_request(&c, &request("GET", BLOB, &["1.1.1.1, 15.236.10.20"]));
        assert_eq!(
            describe(&c, Action::Redirected, d.client.as_ref()),
            "redirected; client=15.236.10.20; prefix=15.236.0.0/15; backend=aws-eu-west-3"
        );
        let d = decide_request(&c, &request("GET", BLOB, &["garbage"]));
        assert_eq!(
            describe(&c, Action::PassedNoClientIp, d.client.as_ref()),
            "passed_no_client_ip; client=none"
        );
        assert_eq!(describe(&c, Action::PassedNotBlob, None), "passed_not_blob");
    }
}
