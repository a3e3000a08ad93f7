//! Manifest rewriting in the stream: hold the upstream's manifest, rewrite it with the core
//! (fetching an index's children from the same upstream), and send the rewrite with matching
//! `Content-Length`, `Docker-Content-Digest` and `ETag`; remember each digest produced so a
//! later request for it is served the same bytes.

use crate::http::{now_s, set_response_header, HttpFilter, Pending};
use blobsteer_core::config::Backend;
use blobsteer_core::digest::Digest;
use blobsteer_core::existence::{CheckRequest, Known};
use blobsteer_core::manifest::cache::Origin;
use blobsteer_core::manifest::{self, sha256_digest, Child, Mapping, Rewritten, Untouched};
use blobsteer_core::{Action, ClientMatch, Config, DigestLookup, ManifestPlan};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action as HostAction, BufferType, MapType};
use std::collections::HashMap;
use std::time::Duration;

/// How long fetching an index's children may take before the index is sent untouched.
const CHILD_TIMEOUT: Duration = Duration::from_secs(10);

/// A manifest response being rewritten, from request to the last byte.
pub struct ManifestJob {
    plan: ManifestPlan,
    client: Option<ClientMatch>,
    /// Request headers repeated when fetching children: `:authority`, `:scheme` and the
    /// client's `authorization` (a private repository stays private).
    forward: Vec<(String, String)>,
    content_type: Option<String>,
    /// The upstream's `Docker-Content-Digest`: the original's digest, remembered with each
    /// digest produced (hashed here when the upstream does not say it).
    upstream_digest: Option<String>,
}

impl ManifestJob {
    /// The cluster whose existence cache decides which blobs a rewrite may advertise: a tag's
    /// rewrite for a checked backend (all or nothing). A digest the filter produced is served
    /// again whatever the cache holds now: its blobs were known present when it was produced.
    fn checked_cluster<'b>(&self, backend: &'b Backend) -> Option<&'b str> {
        backend.cluster.as_deref().filter(|_| self.plan.expect_digest.is_none())
    }

    /// What a rewrite of `original` for this job is made from, when that is all it depends on:
    /// not when a tag's rewrite must ask the existence cache which blobs it may advertise.
    fn origin<'a>(&'a self, config: &Config, original: &'a [u8]) -> Option<Origin<'a>> {
        let backend = config.backends().get(self.plan.backend)?;
        if self.checked_cluster(backend).is_some() {
            return None;
        }
        Some(Origin {
            backend: self.plan.backend,
            repository: &self.plan.repository,
            content_type: self.content_type.as_deref(),
            original,
            upstream_digest: self.upstream_digest.as_deref(),
        })
    }
}

/// An index whose children are being fetched.
pub struct ChildFetch {
    job: ManifestJob,
    index: Vec<u8>,
    body_size: usize,
    awaiting: HashMap<u32, String>,
    fetched: HashMap<String, Child>,
}

/// The manifest types asked for when fetching an index's children.
const CHILD_TYPES: [&str; 2] = [manifest::OCI_MANIFEST, manifest::DOCKER_MANIFEST];

const MANIFEST_UNKNOWN: &[u8] =
    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":"the rewritten manifest no longer matches its digest"}]}"#;

impl HttpFilter {
    /// A tag request of a client with a backend: the upstream's answer will be rewritten.
    pub(crate) fn start_manifest(
        &mut self,
        plan: ManifestPlan,
        client: Option<ClientMatch>,
        headers: &[(String, Vec<u8>)],
    ) -> HostAction {
        if plan.send_as_get && set_request_header(":method", "GET").is_err() {
            return HostAction::Continue;
        }
        let forward = headers
            .iter()
            .filter(|(name, _)| matches!(name.as_str(), ":authority" | ":scheme" | "authorization"))
            .filter_map(|(name, value)| {
                Some((name.clone(), String::from_utf8(value.clone()).ok()?))
            })
            .collect();
        self.pending = Pending::Manifest(ManifestJob {
            plan,
            client,
            forward,
            content_type: None,
            upstream_digest: None,
        });
        HostAction::Continue
    }

    /// A manifest asked for by digest: if the filter produced it, ask the upstream for the
    /// original and serve its rewrite again; otherwise leave the request alone.
    pub(crate) fn lookup_rewritten(
        &mut self,
        lookup: DigestLookup,
        headers: &[(String, Vec<u8>)],
    ) -> HostAction {
        let config = &self.filter.config;
        let key = Mapping::key(&lookup.digest, config.manifests.mapping_slots);
        let value = hostcalls::get_shared_data(&key).ok().and_then(|(value, _)| value);
        let Some(mapping) = Mapping::decode(value.as_deref(), &lookup.digest) else {
            return HostAction::Continue;
        };
        let backend = config.backends().iter().position(|b| b.name == mapping.backend);
        let (Some(backend), true) = (backend, mapping.repository == lookup.repository) else {
            return HostAction::Continue;
        };
        let original = format!("/v2/{}/manifests/{}", mapping.repository, mapping.original);
        if set_request_header(":path", &original).is_err() {
            return HostAction::Continue;
        }
        let plan = ManifestPlan {
            backend,
            repository: mapping.repository,
            send_as_get: lookup.is_head,
            expect_digest: Some(lookup.digest),
        };
        self.start_manifest(plan, None, headers)
    }

    /// The upstream's headers: hold them while the body is read, unless the answer cannot be
    /// rewritten anyway.
    pub(crate) fn manifest_headers(&mut self, mut job: ManifestJob) -> HostAction {
        // One host call for the whole map: each call costs more than a header's bytes do.
        let headers = hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .map(str::to_string)
        };
        let status = header(":status").and_then(|s| s.parse::<u16>().ok());
        let max = self.filter.config.manifests.max_bytes as usize;
        let refused = if status != Some(200) {
            Some(None)
        } else if header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
            Some(Some(Untouched::Encoded))
        } else if header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
            .is_some_and(|l| l > max)
        {
            Some(Some(Untouched::TooLarge))
        } else {
            None
        };
        if let Some(reason) = refused {
            self.filter.metrics.count_untouched(reason, Some(job.plan.backend));
            if job.plan.send_as_get {
                self.pending = Pending::DropBody;
            }
            return HostAction::Continue;
        }
        job.content_type = header("content-type");
        job.upstream_digest = header("docker-content-digest");
        self.pending = Pending::Buffering(job);
        HostAction::Pause
    }

    /// Body callbacks of a held manifest (or of one whose body a HEAD client must not get).
    pub(crate) fn manifest_body(&mut self, body_size: usize, end_of_stream: bool) -> HostAction {
        match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::DropBody => {
                replace_body(body_size, b"");
                self.pending = Pending::DropBody;
                HostAction::Continue
            }
            Pending::Buffering(job) => {
                let max = self.filter.config.manifests.max_bytes as usize;
                if body_size > max {
                    self.filter
                        .metrics
                        .count_untouched(Some(Untouched::TooLarge), Some(job.plan.backend));
                    if job.plan.send_as_get {
                        replace_body(body_size, b"");
                        self.pending = Pending::DropBody;
                    }
                    return HostAction::Continue;
                }
                if !end_of_stream {
                    self.pending = Pending::Buffering(job);
                    return HostAction::Pause;
                }
                let body = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                self.rewrite_or_fetch(job, body, body_size)
            }
            other => {
                self.pending = other;
                HostAction::Continue
            }
        }
    }

    fn rewrite_or_fetch(
        &mut self,
        job: ManifestJob,
        body: Vec<u8>,
        body_size: usize,
    ) -> HostAction {
        // A rewrite this VM already made from these very bytes: nothing to parse, hash or fetch.
        let cached = job
            .origin(&self.filter.config, &body)
            .and_then(|origin| self.filter.rewrites.borrow().get(&origin).cloned());
        if let Some(rewritten) = cached {
            self.send(job, &rewritten, &body, body_size);
            return HostAction::Continue;
        }
        let max = self.filter.config.manifests.max_bytes as usize;
        let read = manifest::read(&body, job.content_type.as_deref(), None, max);
        // An index's children, when it is one (and its entries pass the grammar); anything
        // else is complete now, from this one reading.
        let children: Vec<String> = match &read {
            Ok(m) if m.kind == manifest::Kind::Index => m
                .children()
                .map(|c| c.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        if children.is_empty() {
            self.complete(job, read, body_size, &HashMap::new());
            return HostAction::Continue;
        }
        // The route's cluster, asked only now: an image manifest never needs it.
        let Some(cluster) = route_cluster() else {
            self.complete(job, read, body_size, &HashMap::new());
            return HostAction::Continue;
        };
        let mut awaiting = HashMap::new();
        for child in children {
            let path = format!("/v2/{}/manifests/{child}", job.plan.repository);
            let mut headers: Vec<(&str, &str)> = vec![(":method", "GET"), (":path", &path)];
            headers.extend(job.forward.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            // One line per type: the client may have asked for the index type only, and
            // Distribution answers 404 for an image manifest whose type is not accepted.
            headers.extend(CHILD_TYPES.iter().map(|t| ("accept", *t)));
            match hostcalls::dispatch_http_call(&cluster, headers, None, vec![], CHILD_TIMEOUT) {
                Ok(token) => {
                    awaiting.insert(token, child);
                }
                Err(status) => {
                    log::warn!("cannot fetch index child {child} from {cluster}: {status:?}");
                    // The children already asked for answer into nothing: complete untouched.
                    self.complete(job, read, body_size, &HashMap::new());
                    return HostAction::Continue;
                }
            }
        }
        self.pending = Pending::Children(Box::new(ChildFetch {
            job,
            index: body,
            body_size,
            awaiting,
            fetched: HashMap::new(),
        }));
        HostAction::Pause
    }

    /// A child of an index arrived (or failed); once all are in, the index is completed and the
    /// response resumed. Returns false if the token is not one of ours.
    pub(crate) fn child_arrived(&mut self, token: u32, body_size: usize) -> bool {
        let Pending::Children(fetch) = &mut self.pending else {
            return false;
        };
        let Some(digest) = fetch.awaiting.remove(&token) else {
            return false;
        };
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        if status.as_deref() == Some(b"200") {
            let bytes = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            let content_type =
                hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, "content-type")
                    .ok()
                    .flatten()
                    .and_then(|v| String::from_utf8(v).ok());
            fetch.fetched.insert(digest, Child { bytes, content_type });
        }
        if !fetch.awaiting.is_empty() {
            return true;
        }
        if let Pending::Children(fetch) = std::mem::replace(&mut self.pending, Pending::Nothing) {
            let ChildFetch { job, index, body_size, fetched, .. } = *fetch;
            let max = self.filter.config.manifests.max_bytes as usize;
            let read = manifest::read(&index, job.content_type.as_deref(), None, max);
            self.complete(job, read, body_size, &fetched);
            if let Err(status) = hostcalls::resume_http_response() {
                log::warn!("cannot resume the response after an index's children: {status:?}");
            }
        }
        true
    }

    /// Sends the rewrite (or the original, if it is left untouched) with matching headers.
    fn complete(
        &mut self,
        job: ManifestJob,
        read: Result<manifest::Manifest<'_>, Untouched>,
        body_size: usize,
        children: &HashMap<String, Child>,
    ) {
        let filter = std::rc::Rc::clone(&self.filter);
        let config = &filter.config;
        let plan = &job.plan;
        let Some(backend) = config.backends().get(plan.backend) else {
            return;
        };
        let max = config.manifests.max_bytes as usize;
        let checked = job.checked_cluster(backend);
        let now = now_s();
        let present = |digest: &str| {
            let Some(cluster) = checked else { return true };
            let url = Digest::parse(digest).map(|d| backend.blob_url.render(&plan.repository, d));
            let check = url.ok().and_then(|url| {
                CheckRequest::new(&config.existence_check, cluster, &backend.name, digest, &url)
            });
            check.is_some_and(|check| {
                let cached = hostcalls::get_shared_data(&check.cache_key).ok().and_then(|(v, _)| v);
                check.read(cached.as_deref(), now) == Some(Known::Present)
            })
        };
        let result = read.as_ref().map_err(|reason| *reason).and_then(|m| {
            m.rewrite_for(backend, &plan.repository, max, |d| children.get(d).cloned(), present)
        });
        let rewritten = match result {
            Ok(rewritten) => rewritten,
            Err(reason) if plan.expect_digest.is_some() => {
                // The digest asked for cannot be produced again: the registry's own 404.
                filter.metrics.count_untouched(Some(reason), Some(plan.backend));
                manifest_unknown(body_size, plan.send_as_get);
                return;
            }
            Err(reason) => {
                filter.metrics.count_untouched(Some(reason), Some(plan.backend));
                self.describe_manifest(Action::ManifestUntouched, job.client.as_ref());
                if plan.send_as_get {
                    replace_body(body_size, b"");
                }
                return;
            }
        };
        let Ok(manifest) = &read else { return };
        if let Some(origin) = job.origin(config, manifest.bytes()) {
            filter.rewrites.borrow_mut().insert(&origin, &rewritten);
        }
        self.send(job, &rewritten, manifest.bytes(), body_size);
    }

    /// Sends `rewritten`, made from `original`, with matching headers, after remembering every
    /// digest it produced.
    fn send(&mut self, job: ManifestJob, rewritten: &Rewritten, original: &[u8], body_size: usize) {
        let filter = std::rc::Rc::clone(&self.filter);
        let config = &filter.config;
        let plan = &job.plan;
        let Some(backend) = config.backends().get(plan.backend) else {
            return;
        };
        if plan.expect_digest.as_ref().is_some_and(|want| *want != rewritten.digest) {
            // The upstream's original changed under the digest we produced: the registry's 404.
            filter.metrics.count_untouched(Some(Untouched::ChildUnavailable), Some(plan.backend));
            manifest_unknown(body_size, plan.send_as_get);
            return;
        }
        // Only remembered, never served: a wrong header makes a later request for the produced
        // digest fail to match it (404), and Distribution always sends the right one; trusting
        // it saves hashing every manifest twice.
        let original = match job.upstream_digest.as_deref().filter(|d| is_sha256(d)) {
            Some(digest) => digest.to_string(),
            None => sha256_digest(original),
        };
        let remember = |digest: &str, original: &str| {
            let mapping = Mapping {
                digest: digest.to_string(),
                backend: backend.name.clone(),
                repository: plan.repository.clone(),
                original: original.to_string(),
            };
            let key = Mapping::key(digest, config.manifests.mapping_slots);
            if let Err(status) = hostcalls::set_shared_data(&key, Some(&mapping.encode()), None) {
                log::warn!("cannot remember rewritten digest {digest}: {status:?}");
            }
        };
        remember(&rewritten.digest, &original);
        for (old, new) in &rewritten.children {
            remember(new, old);
        }
        set_response_header("content-length", &rewritten.bytes.len().to_string());
        set_response_header("docker-content-digest", &rewritten.digest);
        set_response_header("etag", &format!("\"{}\"", rewritten.digest));
        replace_body(body_size, if plan.send_as_get { b"" } else { &rewritten.bytes });
        let action = if plan.expect_digest.is_some() {
            Action::ManifestServedByDigest
        } else {
            Action::ManifestRewritten
        };
        filter.metrics.count(action, Some(plan.backend));
        self.describe_manifest(action, job.client.as_ref());
    }

    fn describe_manifest(&self, action: Action, client: Option<&ClientMatch>) {
        if let (Some(name), Some(text)) =
            (self.filter.config.decision_header.as_deref(), self.filter.describe(action, client))
        {
            set_response_header(name, &text);
        }
    }
}

/// Whether `text` is a digest in the grammar, of sha256.
fn is_sha256(text: &str) -> bool {
    Digest::parse(text).is_ok_and(|d| d.algorithm().as_str() == "sha256")
}

/// Turns the held response into Distribution's `404 MANIFEST_UNKNOWN`.
fn manifest_unknown(body_size: usize, head: bool) {
    set_response_header(":status", "404");
    set_response_header("content-type", "application/json");
    set_response_header("content-length", &MANIFEST_UNKNOWN.len().to_string());
    for stale in ["docker-content-digest", "etag"] {
        remove_response_header(stale);
    }
    replace_body(body_size, if head { b"" } else { MANIFEST_UNKNOWN });
}

/// The upstream cluster of the route (`xds.cluster_name`).
fn route_cluster() -> Option<String> {
    let value = hostcalls::get_property(vec!["xds", "cluster_name"]).ok()??;
    String::from_utf8(value).ok().filter(|name| !name.is_empty())
}

fn set_request_header(name: &str, value: &str) -> Result<(), ()> {
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).map_err(|status| {
        log::warn!("cannot set request header {name}: {status:?}");
    })
}

fn remove_response_header(name: &str) {
    if let Err(status) = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, None) {
        log::warn!("cannot remove response header {name}: {status:?}");
    }
}

/// Replaces the buffered response body (`size` bytes) with `value`.
fn replace_body(size: usize, value: &[u8]) {
    if let Err(status) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, value) {
        log::warn!("cannot replace the response body: {status:?}");
    }
}
