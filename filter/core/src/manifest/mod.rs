//! Digest-safe manifest rewriting: blob descriptors gain the backend's URL in `urls`, so
//! containerd and containers/image fetch layers straight from the client's mirror.
//!
//! The rewrite splices the original bytes: every byte the rewrite does not change stays where
//! it was, so the same input and backend always give the same output, in every worker and every
//! restart. Output format: each rewritten descriptor object gets one more member, written right
//! after the value of its last member, without whitespace: `,"urls":["<url>"]`.
//! An index keeps its bytes but for the `digest` and `size` of each child, which become those
//! of the rewritten child; index entries never get `urls`.
//!
//! Anything that is not plainly an image manifest (or an index of them) is left untouched, with
//! the reason: a digest-pinned or signed document must stay exactly as published.

pub mod cache;
pub mod json;

use crate::digest::Digest;
pub use crate::mapping::{Mapping, SECRET_KEY};
use crate::store::StoreSettings;
use crate::url_template::UrlTemplate;
use json::{JsonError, Node, Value};
use sha2::{Digest as _, Sha256};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Image configurations: a manifest whose config is anything else is an artifact.
pub const IMAGE_CONFIGS: [&str; 2] =
    ["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// What kind of document a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image manifest: its blob descriptors are rewritten.
    Image,
    /// An index or manifest list: its children are rewritten, then their digests and sizes.
    Index,
}

/// Why a manifest is sent as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Untouched {
    /// Larger than `manifests.max_bytes`.
    TooLarge,
    /// A `Content-Encoding` other than identity.
    Encoded,
    /// Not JSON, or ambiguous JSON (duplicate keys).
    InvalidJson,
    /// Nested deeper than [`json::MAX_DEPTH`].
    TooDeep,
    /// More values and keys than [`json::MAX_VALUES`] (no manifest has so many).
    TooManyValues,
    /// The client's `User-Agent` is not one of `manifests.user_agents`: not a runtime that uses
    /// `urls`, so the rewrite could only cost it (and break a copy).
    UserAgent,
    /// Schema 1 (signed) or an unknown `schemaVersion`.
    Schema1,
    /// Neither an image manifest nor an index, by `mediaType` and `Content-Type`.
    NotImage,
    /// The body's `mediaType` disagrees with the `Content-Type`.
    MediaTypeMismatch,
    /// It has a `subject`: a signature, SBOM or other referrer.
    Subject,
    /// An artifact: `artifactType`, or a config that is not an image configuration.
    Artifact,
    /// A descriptor whose digest fails the grammar, or that is not a descriptor at all.
    BadDescriptor,
    /// Every blob descriptor already has `urls` (foreign layers).
    NothingToRewrite,
    /// An index child could not be fetched or rewritten.
    ChildUnavailable,
    /// A blob is not known to be on the client's mirror (its backend is checked), so it must not
    /// be advertised there; the client gets the original and fetches through redirects, which
    /// check and teach the cache.
    BlobsUnverified,
    /// The rewrite would be larger than [`CLIENT_MAX_BYTES`], which clients refuse.
    RewriteTooLarge,
    /// An index with more distinct children than `manifests.max_children`.
    TooManyChildren,
    /// This VM already has `manifests.max_child_fetches` child fetches in flight.
    FetchesBusy,
    /// The fleet's store (`manifests.store`) could not take the records of the rewrite in
    /// time, or holds another record for its digest: a digest the fleet may not resolve is
    /// never handed out.
    StoreUnavailable,
}

impl Untouched {
    /// Every reason, for defining stats up front.
    pub const ALL: [Untouched; 19] = [
        Untouched::TooLarge,
        Untouched::Encoded,
        Untouched::InvalidJson,
        Untouched::TooDeep,
        Untouched::TooManyValues,
        Untouched::UserAgent,
        Untouched::Schema1,
        Untouched::NotImage,
        Untouched::MediaTypeMismatch,
        Untouched::Subject,
        Untouched::Artifact,
        Untouched::BadDescriptor,
        Untouched::NothingToRewrite,
        Untouched::ChildUnavailable,
        Untouched::BlobsUnverified,
        Untouched::RewriteTooLarge,
        Untouched::TooManyChildren,
        Untouched::FetchesBusy,
        Untouched::StoreUnavailable,
    ];

    /// The stat name: `blobsteer.manifest.untouched.<name>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Untouched::TooLarge => "too_large",
            Untouched::Encoded => "encoded",
            Untouched::InvalidJson => "invalid_json",
            Untouched::TooDeep => "too_deep",
            Untouched::TooManyValues => "too_many_values",
            Untouched::UserAgent => "user_agent",
            Untouched::Schema1 => "schema1",
            Untouched::NotImage => "not_image",
            Untouched::MediaTypeMismatch => "media_type_mismatch",
            Untouched::Subject => "subject",
            Untouched::Artifact => "artifact",
            Untouched::BadDescriptor => "bad_descriptor",
            Untouched::NothingToRewrite => "nothing_to_rewrite",
            Untouched::ChildUnavailable => "child_unavailable",
            Untouched::BlobsUnverified => "blobs_unverified",
            Untouched::RewriteTooLarge => "rewrite_too_large",
            Untouched::TooManyChildren => "too_many_children",
            Untouched::FetchesBusy => "fetches_busy",
            Untouched::StoreUnavailable => "store_unavailable",
        }
    }
}

/// A rewritten document and what identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The new bytes.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of the new bytes: the new `Docker-Content-Digest`.
    pub digest: String,
    /// For an index: each child's original digest and the digest of its rewrite.
    pub children: Vec<(String, String)>,
}

impl Rewritten {
    fn new(bytes: Vec<u8>) -> Self {
        let digest = sha256_digest(&bytes);
        Rewritten { bytes, digest, children: Vec::new() }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hex = |nibble: u8| char::from(if nibble < 10 { b'0' + nibble } else { b'a' - 10 + nibble });
    let mut text = String::with_capacity(71);
    text.push_str("sha256:");
    for byte in Sha256::digest(bytes) {
        text.push(hex(byte >> 4));
        text.push(hex(byte & 0xf));
    }
    text
}

/// A parsed manifest and what kind it is.
#[derive(Debug)]
pub struct Manifest<'a> {
    bytes: &'a [u8],
    root: Node<'a>,
    /// Image or index.
    pub kind: Kind,
}

/// Whether a `Content-Encoding` value means the body is not the manifest's own bytes.
pub fn is_encoded(content_encoding: Option<&str>) -> bool {
    content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"))
}

/// Reads a manifest as served: its bytes, `Content-Type` and `Content-Encoding` headers.
pub fn read<'a>(
    bytes: &'a [u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    max_bytes: usize,
) -> Result<Manifest<'a>, Untouched> {
    if bytes.len() > max_bytes {
        return Err(Untouched::TooLarge);
    }
    if is_encoded(content_encoding) {
        return Err(Untouched::Encoded);
    }
    let root = json::parse(bytes).map_err(|e| match e {
        JsonError::TooDeep => Untouched::TooDeep,
        JsonError::TooManyValues => Untouched::TooManyValues,
        JsonError::Syntax(_) | JsonError::DuplicateKey(_) => Untouched::InvalidJson,
    })?;
    if !matches!(root.value, Value::Object(_)) {
        return Err(Untouched::InvalidJson);
    }
    match root.get("schemaVersion") {
        Some(n) if n.value == Value::Number && bytes.get(n.span.clone()) == Some(b"2") => {}
        _ => return Err(Untouched::Schema1),
    }
    let header = content_type.map(|t| t.split(';').next().unwrap_or_default().trim());
    let body = match root.get("mediaType") {
        None => None,
        Some(node) => Some(node.as_str().ok_or(Untouched::NotImage)?),
    };
    let media_type = match (body, header) {
        (Some(body), Some(header)) if body != header => return Err(Untouched::MediaTypeMismatch),
        (Some(body), _) => body,
        (None, Some(header)) => header,
        (None, None) => return Err(Untouched::NotImage),
    };
    let kind = match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image,
        OCI_INDEX | DOCKER_LIST => Kind::Index,
        _ => return Err(Untouched::NotImage),
    };
    if root.get("subject").is_some() {
        return Err(Untouched::Subject);
    }
    if root.get("artifactType").is_some() {
        return Err(Untouched::Artifact);
    }
    Ok(Manifest { bytes, root, kind })
}

impl Manifest<'_> {
    /// An image manifest with `urls` added to every blob descriptor (config and layers) that has
    /// none; `url` gives the backend's URL of a blob, or `None` for a blob that must not be
    /// advertised, which leaves the whole manifest untouched (all or nothing, so the bytes
    /// produced for a manifest and backend are always the same).
    pub fn rewrite_image(
        &self,
        url: impl Fn(Digest<'_>) -> Option<String>,
    ) -> Result<Rewritten, Untouched> {
        if self.kind != Kind::Image {
            return Err(Untouched::NotImage);
        }
        let config = self.root.get("config").ok_or(Untouched::BadDescriptor)?;
        let config_type = config.get("mediaType").and_then(Node::as_str);
        if !config_type.is_some_and(|t| IMAGE_CONFIGS.contains(&t)) {
            return Err(Untouched::Artifact);
        }
        let layers = match self.root.get("layers").map(|l| &l.value) {
            Some(Value::Array(layers)) => layers.as_slice(),
            _ => return Err(Untouched::BadDescriptor),
        };
        let descriptors: Vec<&Node> = std::iter::once(config).chain(layers).collect();
        // Every digest must pass the grammar before anything is decided about any of them.
        let digests =
            descriptors.iter().map(|d| descriptor_digest(d)).collect::<Result<Vec<_>, _>>()?;
        // (where, separator, URL): written out in one pass once every descriptor passed.
        let mut insertions: Vec<(usize, &str, String)> = Vec::new();
        for (descriptor, digest) in descriptors.into_iter().zip(digests) {
            if descriptor.get("urls").is_some() {
                continue;
            }
            let Value::Object(members) = &descriptor.value else {
                return Err(Untouched::BadDescriptor);
            };
            // Right after the last member's value (or the opening brace): whitespace and the
            // closing brace stay where they were.
            let (at, separator) = match members.last() {
                Some((_, last)) => (last.span.end, ","),
                None => (descriptor.span.start + 1, ""),
            };
            insertions.push((at, separator, url(digest).ok_or(Untouched::BlobsUnverified)?));
        }
        if insertions.is_empty() {
            return Err(Untouched::NothingToRewrite);
        }
        let added: usize = insertions.iter().map(|(_, _, url)| url.len() + 12).sum();
        let mut out = Vec::with_capacity(self.bytes.len() + added);
        let mut copied = 0;
        for (at, separator, url) in insertions {
            out.extend_from_slice(self.bytes.get(copied..at).unwrap_or_default());
            out.extend_from_slice(separator.as_bytes());
            out.extend_from_slice(b"\"urls\":[");
            push_json_string(&mut out, &url)?;
            out.push(b']');
            copied = at;
        }
        out.extend_from_slice(self.bytes.get(copied..).unwrap_or_default());
        Ok(Rewritten::new(out))
    }

    /// The children of an index, as `(digest, platform entry)` in document order.
    pub fn children(&self) -> Result<Vec<Digest<'_>>, Untouched> {
        self.index_entries()?.iter().map(descriptor_digest).collect()
    }

    /// An index whose children's `digest` and `size` are replaced by those of their rewritten
    /// versions; `rewritten` answers for each original child digest.
    pub fn rewrite_index(
        &self,
        rewritten: impl Fn(&str) -> Option<(String, usize)>,
    ) -> Result<Rewritten, Untouched> {
        let mut edits = Vec::new();
        for entry in self.index_entries()? {
            let digest = descriptor_digest(entry)?;
            let (Some(digest_node), Some(size_node)) = (entry.get("digest"), entry.get("size"))
            else {
                return Err(Untouched::BadDescriptor);
            };
            let (new_digest, new_size) =
                rewritten(digest.as_str()).ok_or(Untouched::ChildUnavailable)?;
            edits.push((digest_node.span.clone(), format!("\"{new_digest}\"")));
            edits.push((size_node.span.clone(), new_size.to_string()));
        }
        if edits.is_empty() {
            return Err(Untouched::NothingToRewrite);
        }
        edits.sort_by_key(|(span, _)| span.start);
        Ok(Rewritten::new(splice(self.bytes, edits.into_iter())))
    }

    fn index_entries(&self) -> Result<&[Node<'_>], Untouched> {
        if self.kind != Kind::Index {
            return Err(Untouched::NotImage);
        }
        match self.root.get("manifests").map(|m| &m.value) {
            Some(Value::Array(entries)) => Ok(entries),
            _ => Err(Untouched::BadDescriptor),
        }
    }
}

/// Manifests larger than this are sent untouched unless configured otherwise.
pub const DEFAULT_MAX_BYTES: usize = 4 << 20;

/// The largest manifest clients accept (containerd, containers/image and Distribution all stop
/// at 4 MiB): a rewrite never produces a larger one, whatever `max_bytes` allows to be read.
pub const CLIENT_MAX_BYTES: usize = 4 << 20;

/// The `manifests` section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManifestSettings {
    /// Rewrite manifests of tag requests for clients that match a backend (off by default).
    pub rewrite: bool,
    /// Prefixes of the `User-Agent` header of the clients manifests are rewritten for: the node
    /// runtimes, which pull to run and fetch blobs from `urls`. Every other client (copy tools,
    /// inspectors, docker) gets the registry's manifest byte for byte: a copy tool treats
    /// layers with `urls` as foreign and does not copy them. [`EVERY_AGENT`] alone rewrites for
    /// everyone.
    pub user_agents: Vec<String>,
    /// Larger manifests are sent untouched; Envoy's buffer limit must allow this much.
    pub max_bytes: u32,
    /// Slots of the rewritten-digest memory shared by all workers (about 300 bytes each).
    pub mapping_slots: u32,
    /// Rewrites each VM keeps ([`cache::RewriteCache`]; at most 64 KiB each; 0: none).
    pub cache_slots: u32,
    /// How long fetching an index's children may take before the index is sent untouched.
    pub child_timeout_ms: u32,
    /// Distinct children an index may have to be rewritten (real multi-arch indexes, with their
    /// attestations, have a few dozen).
    pub max_children: u32,
    /// The largest child manifest read into the VM; a larger one leaves its index untouched.
    pub max_child_bytes: u32,
    /// Child fetches one VM may have in flight at once, over all its streams: with
    /// `max_child_bytes`, what bounds the children a VM holds.
    pub max_child_fetches: u32,
    /// The fleet's memory of produced digests in etcd, if there is one.
    pub store: Option<StoreSettings>,
}

impl Default for ManifestSettings {
    fn default() -> Self {
        ManifestSettings {
            rewrite: false,
            user_agents: DEFAULT_USER_AGENTS.iter().map(|a| a.to_string()).collect(),
            max_bytes: DEFAULT_MAX_BYTES as u32,
            mapping_slots: 16_384,
            cache_slots: 64,
            child_timeout_ms: 10_000,
            max_children: 64,
            max_child_bytes: 256 << 10,
            max_child_fetches: 64,
            store: None,
        }
    }
}

impl ManifestSettings {
    /// Whether a client with this `User-Agent` (`None`: the header is absent) is one manifests
    /// are rewritten for.
    pub fn rewrites_for(&self, user_agent: Option<&str>) -> bool {
        self.user_agents.iter().any(|prefix| {
            prefix == EVERY_AGENT || user_agent.is_some_and(|a| a.starts_with(prefix))
        })
    }
}

/// The default `user_agents`: containerd (`containerd/<version>`) and CRI-O
/// (`cri-o/<version> ...`), the runtimes that honour `urls`.
pub const DEFAULT_USER_AGENTS: [&str; 2] = ["containerd/", "cri-o/"];

/// The `user_agents` entry that stands for every client.
pub const EVERY_AGENT: &str = "*";

/// Most entries `user_agents` may have.
pub const MAX_USER_AGENTS: usize = 64;

/// Longest entry of `user_agents`.
pub const MAX_USER_AGENT_LEN: usize = 256;

/// Limits of `max_bytes`.
pub const MAX_BYTES: std::ops::RangeInclusive<u32> = 1024..=(64 << 20);
/// Limits of `cache_slots`: up to 64 MiB per VM at the most.
pub const CACHE_SLOTS: std::ops::RangeInclusive<u32> = 0..=1024;
/// Limits of `max_children`.
pub const MAX_CHILDREN: std::ops::RangeInclusive<u32> = 1..=1024;
/// Limits of `max_child_bytes`.
pub const MAX_CHILD_BYTES: std::ops::RangeInclusive<u32> = 1024..=(4 << 20);
/// Limits of `max_child_fetches`.
pub const MAX_CHILD_FETCHES: std::ops::RangeInclusive<u32> = 1..=4096;
/// Limits of `child_timeout_ms`.
pub const CHILD_TIMEOUT_MS: std::ops::RangeInclusive<u32> = 1..=60_000;
/// Limits of `mapping_slots`.
pub const MAPPING_SLOTS: std::ops::RangeInclusive<u32> = 1..=1_048_576;

/// A child manifest of an index, as the upstream serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// The body.
    pub bytes: Vec<u8>,
    /// Its `Content-Type`.
    pub content_type: Option<String>,
}

/// What a tag request from a client of a backend whose blobs live at `blob_url` gets: the
/// rewritten manifest, or why the original is sent. For an index, `child` fetches each child by digest; every child must come,
/// hash to its digest and be rewritten, or the index is sent untouched. `present` says whether
/// a blob may be advertised on the backend (known to be there, or the backend is not checked).
#[allow(clippy::too_many_arguments)]
pub fn rewrite_for_backend(
    blob_url: &UrlTemplate,
    repository: &str,
    bytes: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    max_bytes: usize,
    child: impl Fn(&str) -> Option<Child>,
    present: impl Fn(&str) -> bool,
) -> Result<Rewritten, Untouched> {
    read(bytes, content_type, content_encoding, max_bytes)?
        .rewrite_for(blob_url, repository, max_bytes, child, present)
}

impl Manifest<'_> {
    /// The bytes the manifest was read from.
    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }

    /// [`rewrite_for_backend`] of a manifest already read.
    pub fn rewrite_for(
        &self,
        blob_url: &UrlTemplate,
        repository: &str,
        max_bytes: usize,
        child: impl Fn(&str) -> Option<Child>,
        present: impl Fn(&str) -> bool,
    ) -> Result<Rewritten, Untouched> {
        let url = |digest: Digest<'_>| {
            present(digest.as_str()).then(|| blob_url.render(repository, digest))
        };
        let manifest = self;
        let within = |rewritten: Rewritten| match rewritten.bytes.len() > CLIENT_MAX_BYTES {
            true => Err(Untouched::RewriteTooLarge),
            false => Ok(rewritten),
        };
        match manifest.kind {
            Kind::Image => manifest.rewrite_image(url).and_then(within),
            Kind::Index => {
                let mut rewritten = Vec::new();
                for digest in manifest.children()? {
                    let fetched = child(digest.as_str()).ok_or(Untouched::ChildUnavailable)?;
                    if sha256_digest(&fetched.bytes) != digest.as_str() {
                        return Err(Untouched::ChildUnavailable);
                    }
                    let new =
                        read(&fetched.bytes, fetched.content_type.as_deref(), None, max_bytes)
                            .and_then(|m| m.rewrite_image(url))
                            .and_then(within)
                            .map_err(|e| match e {
                                Untouched::BlobsUnverified => e,
                                _ => Untouched::ChildUnavailable,
                            })?;
                    rewritten.push((digest.as_str().to_string(), new));
                }
                let mut index = manifest.rewrite_index(|old| {
                    rewritten
                        .iter()
                        .find(|(d, _)| d == old)
                        .map(|(_, new)| (new.digest.clone(), new.bytes.len()))
                })?;
                index.children =
                    rewritten.into_iter().map(|(old, new)| (old, new.digest)).collect();
                within(index)
            }
        }
    }
}

/// Appends `text` as a JSON string. Blob URLs need no escape (templates, repositories and
/// digests are printable ASCII without `"` or `\\`), so they are quoted as they are; anything
/// else goes through serde_json.
fn push_json_string(out: &mut Vec<u8>, text: &str) -> Result<(), Untouched> {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return Ok(());
    }
    serde_json::to_writer(out, text).map_err(|_| Untouched::BadDescriptor)
}

/// The descriptor's digest, which must pass the grammar.
fn descriptor_digest<'n>(descriptor: &'n Node<'_>) -> Result<Digest<'n>, Untouched> {
    let text = descriptor.get("digest").and_then(Node::as_str).ok_or(Untouched::BadDescriptor)?;
    Digest::parse(text).map_err(|_| Untouched::BadDescriptor)
}

/// `input` with each range (sorted, disjoint) replaced by its text.
fn splice(input: &[u8], edits: impl Iterator<Item = (std::ops::Range<usize>, String)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 512);
    let mut copied = 0;
    for (range, text) in edits {
        out.extend_from_slice(input.get(copied..range.start).unwrap_or_default());
        out.extend_from_slice(text.as_bytes());
        copied = range.end;
    }
    out.extend_from_slice(input.get(copied..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests;
