//! The filter's configuration: parsed strictly, validated whole, compiled once per VM.
//!
//! Every error names the field (`backends[1].cidrs[0]`) and the value, so a refused config says
//! what to fix. Unknown keys are errors: a typo must not silently turn a feature off.

use crate::cidr_table::{parse_prefix, CidrTable, Entry};
use crate::client_ip::ClientIpSettings;
use crate::existence::{self, ExistenceSettings};
use crate::manifest::{self, ManifestSettings};
use crate::store::{self, StoreSettings};
use crate::url_template::UrlTemplate;
use ipnet::IpNet;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// Redirect statuses a blob can be answered with.
pub const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// Response headers the decision header may not be: framing and hop-by-hop headers (a wrong
/// one breaks the response itself), and those of the registry protocol and its redirects (the
/// decision text would replace what clients read).
pub const RESERVED_HEADERS: [&str; 27] = [
    "content-length",
    "transfer-encoding",
    "content-encoding",
    "content-type",
    "content-range",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
    "location",
    "docker-content-digest",
    "docker-distribution-api-version",
    "docker-upload-uuid",
    "etag",
    "last-modified",
    "accept-ranges",
    "range",
    "www-authenticate",
    "authorization",
    "proxy-authenticate",
    "proxy-authorization",
    "set-cookie",
    "cache-control",
    "date",
];

/// Longest backend name: it becomes part of Envoy stat names.
pub const MAX_BACKEND_NAME_LEN: usize = 64;

/// How blob requests from a matched client are handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobMode {
    /// Answer `GET`/`HEAD` with a redirect at once; the upstream is not contacted.
    #[default]
    Redirect,
    /// Let the upstream authorize first; its `200` or redirect becomes the redirect to the backend.
    VerifyUpstream,
    /// Never touch blob requests.
    Off,
}

impl BlobMode {
    /// The mode's name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobMode::Redirect => "redirect",
            BlobMode::VerifyUpstream => "verify_upstream",
            BlobMode::Off => "off",
        }
    }
}

/// The `blobs` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobSettings {
    /// See [`BlobMode`].
    pub mode: BlobMode,
    /// Status of the redirects the filter sends (307 keeps the method, so `HEAD` stays `HEAD`).
    pub redirect_status: u16,
}

impl Default for BlobSettings {
    fn default() -> Self {
        BlobSettings { mode: BlobMode::Redirect, redirect_status: 307 }
    }
}

/// The document as written. Prefixes are borrowed from the input: a full table has tens of
/// thousands, and each VM parses the configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig<'a> {
    #[serde(borrow)]
    backends: Vec<RawBackend<'a>>,
    #[serde(default, borrow)]
    non_routable: Vec<Cow<'a, str>>,
    #[serde(default)]
    client_ip: ClientIpSettings,
    #[serde(default)]
    blobs: BlobSettings,
    #[serde(default)]
    decision_header: Option<String>,
    #[serde(default)]
    existence_check: ExistenceSettings,
    #[serde(default)]
    manifests: ManifestSettings,
    #[serde(default)]
    default_backend: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend<'a> {
    name: String,
    blob_url: String,
    #[serde(borrow)]
    cidrs: Vec<Cow<'a, str>>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    fallback: Vec<String>,
}

/// Longest fallback chain a backend may have.
pub const MAX_FALLBACK: usize = 4;

/// A place blobs can be fetched from, e.g. one region's object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Unique name, used in stats and decisions (`aws-eu-west-3`).
    pub name: String,
    /// Where a blob of this backend lives.
    pub blob_url: UrlTemplate,
    /// The Envoy cluster that reaches the backend's object store, if configured.
    pub cluster: Option<String>,
    /// The backends (indices into [`Config::backends`]) its clients go to, in order, when it
    /// lacks a blob: a neighbour region's mirror, a CDN.
    pub fallback: Vec<usize>,
}

/// What a CIDR table entry leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The backend at this index of [`Config::backends`].
    Backend(usize),
    /// No backend: the range is not routable (AWS `GLOBAL`, GCP `global`).
    NonRoutable,
}

/// A validated configuration, ready for requests. Immutable once built.
#[derive(Debug, Clone)]
pub struct Config {
    backends: Vec<Backend>,
    table: CidrTable<Target>,
    /// How the client address is found.
    pub client_ip: ClientIpSettings,
    /// How blob requests are handled.
    pub blobs: BlobSettings,
    /// Response header naming the decision, when an operator wants to see it (lowercase).
    pub decision_header: Option<String>,
    /// How backends with a `cluster` are checked for a blob before clients are sent there.
    pub existence_check: ExistenceSettings,
    /// Whether and how manifests of tag requests are rewritten.
    pub manifests: ManifestSettings,
    /// The backend (an index into [`Config::backends`]) of clients no prefix covers.
    pub default_backend: Option<usize>,
}

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: `backends[0].cidrs[2]`, or empty for the document as a whole.
    pub field: String,
    /// What is wrong, quoting the value.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Every problem found in a configuration (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for error in &self.0 {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Parses and validates the JSON configuration, reporting every problem at once.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigErrors> {
        let document_error =
            |message: String| ConfigErrors(vec![ConfigError { field: String::new(), message }]);
        // The fast path parses without tracking paths; only a refused document is parsed again
        // to name the field.
        if let Ok(raw) = serde_json::from_slice::<RawConfig<'_>>(bytes) {
            return Validator::default().validate(raw);
        }
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            let field = e.path().to_string();
            let message = e.into_inner().to_string();
            match field.as_str() {
                "." => document_error(message),
                _ => ConfigErrors(vec![ConfigError { field, message }]),
            }
        })?;
        json.end().map_err(|e| document_error(e.to_string()))?;
        Validator::default().validate(raw)
    }

    /// The backends, in configuration order.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The longest-prefix-match table of every configured CIDR.
    pub fn table(&self) -> &CidrTable<Target> {
        &self.table
    }

    /// One line for operators: what this configuration holds.
    pub fn summary(&self) -> String {
        let (mut v4, mut v6, mut non_routable) = (0usize, 0usize, 0usize);
        for entry in self.table.entries() {
            match (entry.prefix, entry.target) {
                (_, Target::NonRoutable) => non_routable += 1,
                (IpNet::V4(_), _) => v4 += 1,
                (IpNet::V6(_), _) => v6 += 1,
            }
        }
        format!(
            "{} backend{}, {} prefixes ({v4} IPv4, {v6} IPv6), {non_routable} non-routable, blob mode {}",
            self.backends.len(),
            if self.backends.len() == 1 { "" } else { "s" },
            v4 + v6,
            self.blobs.mode.as_str()
        )
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<ConfigError>,
    /// Where each accepted prefix is, in the order of the table's entries.
    places: Vec<Place>,
}

/// Where a prefix is in the document; turned into text only for an error message.
#[derive(Debug, Clone, Copy)]
enum Place {
    Backend { backend: usize, cidr: usize },
    NonRoutable(usize),
}

impl Place {
    fn field(self) -> String {
        match self {
            Place::Backend { backend, cidr } => format!("backends[{backend}].cidrs[{cidr}]"),
            Place::NonRoutable(i) => format!("non_routable[{i}]"),
        }
    }

    fn text<'r>(self, raw: &'r RawConfig<'_>) -> &'r str {
        let text = match self {
            Place::Backend { backend, cidr } => {
                raw.backends.get(backend).and_then(|b| b.cidrs.get(cidr))
            }
            Place::NonRoutable(i) => raw.non_routable.get(i),
        };
        text.map_or("", |t| t.as_ref())
    }
}

impl Validator {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError { field: field.into(), message: message.into() });
    }

    fn validate(mut self, raw: RawConfig) -> Result<Config, ConfigErrors> {
        let mut entries = Vec::new();
        let mut backends = Vec::with_capacity(raw.backends.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        if raw.backends.is_empty() {
            self.error("backends", "at least one backend is required");
        }
        for (index, backend) in raw.backends.iter().enumerate() {
            let at = format!("backends[{index}]");
            if let Some(first) = names.insert(backend.name.clone(), index) {
                self.error(
                    format!("{at}.name"),
                    format!("{:?} is already the name of backends[{first}]", backend.name),
                );
            }
            if !is_backend_name(&backend.name) {
                self.error(
                    format!("{at}.name"),
                    format!(
                        "{:?} must be 1 to {MAX_BACKEND_NAME_LEN} characters of [A-Za-z0-9_-] (it becomes part of stat names)",
                        backend.name
                    ),
                );
            }
            let blob_url = UrlTemplate::parse(&backend.blob_url).map_err(|e| {
                self.error(format!("{at}.blob_url"), format!("{:?} {e}", backend.blob_url));
            });
            if backend.cluster.as_deref().is_some_and(str::is_empty) {
                self.error(format!("{at}.cluster"), "must not be empty when present");
            }
            for (cidr, text) in backend.cidrs.iter().enumerate() {
                if let Some(prefix) = self.prefix(Place::Backend { backend: index, cidr }, text) {
                    entries.push(Entry { prefix, target: Target::Backend(index) });
                    self.places.push(Place::Backend { backend: index, cidr });
                }
            }
            if let Ok(blob_url) = blob_url {
                backends.push(Backend {
                    name: backend.name.clone(),
                    blob_url,
                    cluster: backend.cluster.clone(),
                    fallback: Vec::new(),
                });
            }
        }
        let chains = self.fallbacks(&raw, &names);
        for (backend, chain) in backends.iter_mut().zip(chains) {
            backend.fallback = chain;
        }
        let default_backend = raw.default_backend.as_ref().and_then(|name| {
            let found = names.get(name).copied();
            if found.is_none() {
                self.error("default_backend", format!("{name:?} is not the name of a backend"));
            }
            found
        });
        for (i, text) in raw.non_routable.iter().enumerate() {
            if let Some(prefix) = self.prefix(Place::NonRoutable(i), text) {
                entries.push(Entry { prefix, target: Target::NonRoutable });
                self.places.push(Place::NonRoutable(i));
            }
        }
        if !REDIRECT_STATUSES.contains(&raw.blobs.redirect_status) {
            self.error(
                "blobs.redirect_status",
                format!(
                    "{} is not a redirect status (one of 301, 302, 303, 307, 308)",
                    raw.blobs.redirect_status
                ),
            );
        }
        let check = &raw.existence_check;
        for (field, value, range) in [
            ("existence_check.timeout_ms", check.timeout_ms, existence::TIMEOUT_MS),
            ("existence_check.negative_ttl_s", check.negative_ttl_s, existence::NEGATIVE_TTL_S),
            ("existence_check.positive_ttl_s", check.positive_ttl_s, existence::POSITIVE_TTL_S),
            ("existence_check.cache_slots", check.cache_slots, existence::CACHE_SLOTS),
            (
                "existence_check.down_after_failures",
                check.down_after_failures,
                existence::DOWN_AFTER_FAILURES,
            ),
            (
                "existence_check.failure_window_s",
                check.failure_window_s,
                existence::FAILURE_WINDOW_S,
            ),
            ("existence_check.down_s", check.down_s, existence::DOWN_S),
            ("manifests.max_bytes", raw.manifests.max_bytes, manifest::MAX_BYTES),
            ("manifests.mapping_slots", raw.manifests.mapping_slots, manifest::MAPPING_SLOTS),
            ("manifests.cache_slots", raw.manifests.cache_slots, manifest::CACHE_SLOTS),
            (
                "manifests.child_timeout_ms",
                raw.manifests.child_timeout_ms,
                manifest::CHILD_TIMEOUT_MS,
            ),
            ("manifests.max_children", raw.manifests.max_children, manifest::MAX_CHILDREN),
            ("manifests.max_child_bytes", raw.manifests.max_child_bytes, manifest::MAX_CHILD_BYTES),
            (
                "manifests.max_child_fetches",
                raw.manifests.max_child_fetches,
                manifest::MAX_CHILD_FETCHES,
            ),
        ] {
            if !range.contains(&value) {
                let message = format!("{value} is outside {}..={}", range.start(), range.end());
                self.error(field, message);
            }
        }
        self.user_agents(&raw.manifests.user_agents);
        if let Some(store) = &raw.manifests.store {
            self.store(store);
        }
        if let Some(header) = &raw.decision_header {
            if !is_header_name(header) {
                self.error(
                    "decision_header",
                    format!("{header:?} is not a lowercase HTTP header name ([a-z0-9-], not starting with '-')"),
                );
            } else if RESERVED_HEADERS.contains(&header.as_str()) || header.starts_with("x-envoy-")
            {
                self.error(
                    "decision_header",
                    format!("{header:?} is a framing, hop-by-hop, Envoy or registry-protocol header: choose a name of your own, such as x-blobsteer-decision"),
                );
            }
        }
        let table = CidrTable::new(entries).map_err(|duplicates| {
            for (first, repeated) in duplicates {
                let (Some(first), Some(repeated)) =
                    (self.places.get(first), self.places.get(repeated))
                else {
                    continue;
                };
                let owner = match *first {
                    Place::Backend { backend, .. } => {
                        raw.backends.get(backend).map_or("", |b| b.name.as_str())
                    }
                    Place::NonRoutable(_) => "non_routable",
                };
                let text = repeated.text(&raw);
                let message = format!("{text} is already listed at {} ({owner})", first.field());
                self.error(repeated.field(), message);
            }
        });
        if !self.errors.is_empty() {
            return Err(ConfigErrors(self.errors));
        }
        Ok(Config {
            backends,
            table: table.map_err(|()| ConfigErrors(Vec::new()))?,
            client_ip: raw.client_ip.clone(),
            blobs: raw.blobs.clone(),
            decision_header: raw.decision_header.clone(),
            existence_check: raw.existence_check.clone(),
            manifests: raw.manifests.clone(),
            default_backend,
        })
    }

    /// Every backend's `fallback`, as indices: known names, not the backend itself, each once,
    /// at most [`MAX_FALLBACK`], and no backend reachable from itself through the chains.
    fn fallbacks(&mut self, raw: &RawConfig, names: &HashMap<String, usize>) -> Vec<Vec<usize>> {
        let mut chains = Vec::with_capacity(raw.backends.len());
        for (index, backend) in raw.backends.iter().enumerate() {
            let field = format!("backends[{index}].fallback");
            if backend.fallback.len() > MAX_FALLBACK {
                let message =
                    format!("{} backends; at most {MAX_FALLBACK}", backend.fallback.len());
                self.error(field.clone(), message);
            }
            let mut chain: Vec<usize> = Vec::new();
            for (at, name) in backend.fallback.iter().enumerate() {
                let at = format!("{field}[{at}]");
                match names.get(name).copied() {
                    None => self.error(at, format!("{name:?} is not the name of a backend")),
                    Some(i) if i == index => {
                        self.error(at, format!("{name:?} is this backend itself"))
                    }
                    Some(i) if chain.contains(&i) => {
                        self.error(at, format!("{name:?} is already in the chain"))
                    }
                    Some(i) => chain.push(i),
                }
            }
            chains.push(chain);
        }
        if let Some(cycle) = first_cycle(&chains) {
            let path: Vec<&str> = cycle
                .iter()
                .filter_map(|&i| raw.backends.get(i).map(|b| b.name.as_str()))
                .collect();
            let at = cycle.first().copied().unwrap_or_default();
            let message = format!("the chains go round: {}", path.join(" -> "));
            self.error(format!("backends[{at}].fallback"), message);
        }
        chains
    }

    /// `manifests.store`: a cluster, a prefix, and bounds in range.
    fn store(&mut self, store: &StoreSettings) {
        if store.cluster.is_empty() {
            self.error("manifests.store.cluster", "must name the Envoy cluster that reaches etcd");
        }
        if store.prefix.is_empty()
            || store.prefix.len() > store::MAX_PREFIX_LEN
            || !store.prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            let message = format!(
                "{:?} must be 1 to {} visible ASCII characters (the namespace of this registry's keys)",
                store.prefix,
                store::MAX_PREFIX_LEN
            );
            self.error("manifests.store.prefix", message);
        }
        for (field, value, range) in [
            ("manifests.store.ttl_s", store.ttl_s, store::TTL_S),
            ("manifests.store.timeout_ms", store.timeout_ms, store::TIMEOUT_MS),
        ] {
            if !range.contains(&value) {
                let message = format!("{value} is outside {}..={}", range.start(), range.end());
                self.error(field, message);
            }
        }
    }

    /// `manifests.user_agents`: one or more prefixes, or `"*"` alone.
    fn user_agents(&mut self, agents: &[String]) {
        const FIELD: &str = "manifests.user_agents";
        if agents.is_empty() {
            let message = format!(
                "must list at least one User-Agent prefix, such as {:?}; [\"*\"] rewrites for \
                 every client, copy tools included (their copies lose the layers)",
                manifest::DEFAULT_USER_AGENTS
            );
            self.error(FIELD, message);
        }
        if agents.len() > manifest::MAX_USER_AGENTS {
            let message =
                format!("{} entries; at most {}", agents.len(), manifest::MAX_USER_AGENTS);
            self.error(FIELD, message);
        }
        for (i, agent) in agents.iter().enumerate() {
            let field = format!("{FIELD}[{i}]");
            if agent.is_empty() {
                self.error(
                    field,
                    "an empty prefix matches every client: say [\"*\"] if that is meant",
                );
            } else if agent == manifest::EVERY_AGENT && agents.len() > 1 {
                self.error(field, "\"*\" (every client) cannot be combined with prefixes");
            } else if agent.len() > manifest::MAX_USER_AGENT_LEN
                || !agent.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            {
                let message = format!(
                    "{agent:?} must be 1 to {} characters of visible ASCII",
                    manifest::MAX_USER_AGENT_LEN
                );
                self.error(field, message);
            }
        }
    }

    /// Parses one CIDR, insisting on the canonical form (the table finds repeated prefixes).
    fn prefix(&mut self, place: Place, text: &str) -> Option<IpNet> {
        let Some(prefix) = parse_prefix(text) else {
            let message =
                format!("{text:?} is not a CIDR prefix such as 192.0.2.0/24 or 2001:db8::/32");
            self.error(place.field(), message);
            return None;
        };
        if prefix.trunc() != prefix {
            let message = format!("{text:?} has host bits set (did you mean {}?)", prefix.trunc());
            self.error(place.field(), message);
            return None;
        }
        Some(prefix)
    }
}

/// A cycle of the fallback graph (backend → the backends of its chain), as the backends met
/// from its first one back to it, if there is one. Iterative, linear in the chains' length.
fn first_cycle(chains: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; chains.len()];
    for start in 0..chains.len() {
        if marks.get(start) != Some(&Mark::New) {
            continue;
        }
        // The path from `start`, each node with the next edge to follow.
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        if let Some(mark) = marks.get_mut(start) {
            *mark = Mark::OnPath;
        }
        while let Some(&(node, edge)) = path.last() {
            let next = chains.get(node).and_then(|chain| chain.get(edge)).copied();
            let Some(next) = next else {
                if let Some(mark) = marks.get_mut(node) {
                    *mark = Mark::Done;
                }
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            match marks.get(next) {
                Some(Mark::OnPath) => {
                    let from = path.iter().position(|&(n, _)| n == next).unwrap_or(0);
                    let mut cycle: Vec<usize> = path.iter().skip(from).map(|&(n, _)| n).collect();
                    cycle.push(next);
                    return Some(cycle);
                }
                Some(Mark::New) => {
                    if let Some(mark) = marks.get_mut(next) {
                        *mark = Mark::OnPath;
                    }
                    path.push((next, 0));
                }
                _ => {}
            }
        }
    }
    None
}

fn is_backend_name(name: &str) -> bool {
    (1..=MAX_BACKEND_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn errors(json: &str) -> Vec<String> {
        match Config::from_json(json.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const GOOD: &str = r#"{
        "backends": [
            {"name": "eu", "blob_url": "https://eu.example/containers/images/{digest}", "cidrs": ["15.236.0.0/15", "2a05:d012::/36"], "cluster": "mirror_eu"},
            {"name": "us", "blob_url": "http://us.example:8080/{digest}", "cidrs": ["44.192.0.0/11"]}
        ],
        "non_routable": ["15.193.0.0/19"],
        "client_ip": {"xff_num_trusted_hops": 1, "source_address_fallback": true},
        "blobs": {"mode": "verify_upstream", "redirect_status": 302},
        "decision_header": "x-blobsteer-decision"
    }"#;

    #[test]
    fn accepts_a_complete_config() {
        let config = Config::from_json(GOOD.as_bytes()).unwrap();
        assert_eq!(config.backends().len(), 2);
        assert_eq!(config.blobs.mode, BlobMode::VerifyUpstream);
        assert_eq!(config.blobs.redirect_status, 302);
        assert_eq!(config.client_ip.xff_num_trusted_hops, 1);
        assert_eq!(config.decision_header.as_deref(), Some("x-blobsteer-decision"));
        assert_eq!(
            config.summary(),
            "2 backends, 3 prefixes (2 IPv4, 1 IPv6), 1 non-routable, blob mode verify_upstream"
        );
    }

    #[test]
    fn defaults_are_redirect_307_and_rightmost_address() {
        let config = Config::from_json(
            br#"{"backends": [{"name": "a", "blob_url": "https://a/{digest}", "cidrs": []}]}"#,
        )
        .unwrap();
        assert_eq!(config.blobs, BlobSettings { mode: BlobMode::Redirect, redirect_status: 307 });
        assert_eq!(config.client_ip, ClientIpSettings::default());
        assert_eq!(config.decision_header, None);
    }

    #[test]
    fn every_error_names_field_and_value() {
        let bad = r#"{
            "backends": [
                {"name": "eu", "blob_url": "ftp://eu/{digest}", "cidrs": ["15.236.0.0/15", "300.1.2.3/8", "15.237.0.0/15"]},
                {"name": "eu", "blob_url": "https://x/{encoded}", "cidrs": ["15.236.0.0/15"]},
                {"name": "bad.name", "blob_url": "https://x/{digest}", "cidrs": ["10.0.0.1/8"], "cluster": ""}
            ],
            "non_routable": ["15.236.0.0/15"],
            "blobs": {"redirect_status": 200},
            "decision_header": "X-Decision",
            "existence_check": {"timeout_ms": 0, "cache_slots": 2000000},
            "manifests": {"cache_slots": 1025}
        }"#;
        let got = errors(bad);
        let want = [
            r#"backends[0].blob_url: "ftp://eu/{digest}" must start with http:// or https:// and a host"#,
            r#"backends[0].cidrs[1]: "300.1.2.3/8" is not a CIDR prefix such as 192.0.2.0/24 or 2001:db8::/32"#,
            r#"backends[0].cidrs[2]: "15.237.0.0/15" has host bits set (did you mean 15.236.0.0/15?)"#,
            r#"backends[1].name: "eu" is already the name of backends[0]"#,
            r#"backends[1].blob_url: "https://x/{encoded}" must contain {digest}"#,
            r#"backends[2].name: "bad.name" must be 1 to 64 characters of [A-Za-z0-9_-] (it becomes part of stat names)"#,
            "backends[2].cluster: must not be empty when present",
            r#"backends[2].cidrs[0]: "10.0.0.1/8" has host bits set (did you mean 10.0.0.0/8?)"#,
            "blobs.redirect_status: 200 is not a redirect status (one of 301, 302, 303, 307, 308)",
            "existence_check.timeout_ms: 0 is outside 1..=60000",
            "existence_check.cache_slots: 2000000 is outside 1..=1048576",
            "manifests.cache_slots: 1025 is outside 0..=1024",
            r#"decision_header: "X-Decision" is not a lowercase HTTP header name ([a-z0-9-], not starting with '-')"#,
            // Repeated prefixes come last, each against its first listing.
            "backends[1].cidrs[0]: 15.236.0.0/15 is already listed at backends[0].cidrs[0] (eu)",
            "non_routable[0]: 15.236.0.0/15 is already listed at backends[0].cidrs[0] (eu)",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn user_agents_are_prefixes_and_every_client_is_said_explicitly() {
        let with = |agents: &str| {
            format!(
                r#"{{"backends": [{{"name": "a", "blob_url": "https://a/{{digest}}", "cidrs": []}}],
                    "manifests": {{"rewrite": true, "user_agents": {agents}}}}}"#
            )
        };
        let default = Config::from_json(with(r#"["containerd/", "cri-o/"]"#).as_bytes()).unwrap();
        assert_eq!(default.manifests, Config::from_json(br#"{"backends": [{"name": "a", "blob_url": "https://a/{digest}", "cidrs": []}], "manifests": {"rewrite": true}}"#).unwrap().manifests);
        let m = &default.manifests;
        assert!(m.rewrites_for(Some("containerd/1.6.20+unknown")));
        assert!(m.rewrites_for(Some("cri-o/1.28.1 go/go1.20.10 os/linux arch/amd64")));
        for other in [
            "skopeo/1.9.3",
            "containers/5.24.1 (github.com/containers/image)",
            "my-containerd/1",
            "Containerd/1.7",
            "",
        ] {
            assert!(!m.rewrites_for(Some(other)), "{other:?}");
        }
        assert!(!m.rewrites_for(None));
        let everyone = Config::from_json(with(r#"["*"]"#).as_bytes()).unwrap();
        assert!(
            everyone.manifests.rewrites_for(None)
                && everyone.manifests.rewrites_for(Some("curl/8"))
        );

        assert_eq!(
            errors(&with("[]")),
            [
                r#"manifests.user_agents: must list at least one User-Agent prefix, such as ["containerd/", "cri-o/"]; ["*"] rewrites for every client, copy tools included (their copies lose the layers)"#
            ]
        );
        assert_eq!(
            errors(&with(r#"["containerd/", "", "*", "a\u0000b"]"#)),
            [
                r#"manifests.user_agents[1]: an empty prefix matches every client: say ["*"] if that is meant"#,
                r#"manifests.user_agents[2]: "*" (every client) cannot be combined with prefixes"#,
                r#"manifests.user_agents[3]: "a\0b" must be 1 to 256 characters of visible ASCII"#,
            ]
        );
        let many = format!("[{}]", vec![r#""x/""#; 65].join(","));
        assert_eq!(errors(&with(&many)), ["manifests.user_agents: 65 entries; at most 64"]);
    }

    #[test]
    fn the_store_names_a_cluster_a_prefix_and_bounds() {
        let with = |store: &str| {
            format!(
                r#"{{"backends": [{{"name": "a", "blob_url": "https://a/{{digest}}", "cidrs": []}}],
                    "manifests": {{"rewrite": true, "store": {store}}}}}"#
            )
        };
        let config = Config::from_json(with(r#"{"cluster": "etcd"}"#).as_bytes()).unwrap();
        let store = config.manifests.store.unwrap();
        assert_eq!(
            (store.prefix.as_str(), store.ttl_s, store.timeout_ms),
            ("/blobsteer/digests/", 2_592_000, 500)
        );
        assert_eq!(
            errors(&with(r#"{"cluster": "", "prefix": "a b", "ttl_s": 10, "timeout_ms": 0}"#)),
            [
                "manifests.store.cluster: must name the Envoy cluster that reaches etcd",
                r#"manifests.store.prefix: "a b" must be 1 to 256 visible ASCII characters (the namespace of this registry's keys)"#,
                "manifests.store.ttl_s: 10 is outside 60..=31536000",
                "manifests.store.timeout_ms: 0 is outside 1..=10000",
            ]
        );
        assert!(
            errors(&with(r#"{"cluster": "etcd", "ttl": 5}"#))[0].contains("unknown field `ttl`")
        );
    }

    #[test]
    fn fallback_chains_name_other_backends_without_going_round() {
        let with = |a: &str, b: &str, c: &str, default: &str| {
            format!(
                r#"{{"backends": [
                    {{"name": "a", "blob_url": "https://a/{{digest}}", "cidrs": ["10.0.0.0/8"], "fallback": {a}}},
                    {{"name": "b", "blob_url": "https://b/{{digest}}", "cidrs": [], "fallback": {b}}},
                    {{"name": "cdn", "blob_url": "https://cdn/{{digest}}", "cidrs": [], "fallback": {c}}}
                ]{default}}}"#
            )
        };
        let good = Config::from_json(
            with(r#"["b", "cdn"]"#, r#"["cdn"]"#, "[]", r#", "default_backend": "cdn""#).as_bytes(),
        )
        .unwrap();
        let chains: Vec<&[usize]> = good.backends().iter().map(|b| b.fallback.as_slice()).collect();
        assert_eq!(chains, [&[1, 2][..], &[2], &[]]);
        assert_eq!(good.default_backend, Some(2));
        assert_eq!(
            errors(&with(r#"["x", "a", "b", "b"]"#, "[]", "[]", r#", "default_backend": "nope""#)),
            [
                r#"backends[0].fallback[0]: "x" is not the name of a backend"#,
                r#"backends[0].fallback[1]: "a" is this backend itself"#,
                r#"backends[0].fallback[3]: "b" is already in the chain"#,
                r#"default_backend: "nope" is not the name of a backend"#,
            ]
        );
        assert_eq!(
            errors(&with(r#"["b"]"#, r#"["cdn"]"#, r#"["a"]"#, "")),
            ["backends[0].fallback: the chains go round: a -> b -> cdn -> a"]
        );
        let long = r#"["b", "cdn", "b", "cdn", "b"]"#;
        assert!(errors(&with(long, "[]", "[]", ""))[0]
            .starts_with("backends[0].fallback: 5 backends; at most 4"));
    }

    #[test]
    fn the_decision_header_cannot_be_one_that_clients_or_framing_read() {
        let with = |header: &str| {
            format!(
                r#"{{"backends": [{{"name": "a", "blob_url": "https://a/{{digest}}", "cidrs": []}}], "decision_header": "{header}"}}"#
            )
        };
        for header in [
            "content-length",
            "transfer-encoding",
            "location",
            "docker-content-digest",
            "etag",
            "x-envoy-upstream-service-time",
        ] {
            let got = errors(&with(header)).join("\n");
            assert!(got.starts_with(&format!("decision_header: {header:?} is a framing")), "{got}");
        }
        assert!(Config::from_json(with("x-blobsteer-decision").as_bytes()).is_ok());
        let url = r#"{"backends": [{"name": "a", "blob_url": "http://h#{digest}", "cidrs": []}]}"#;
        assert_eq!(
            errors(url),
            [
                r#"backends[0].blob_url: "http://h#{digest}" placeholders may only appear in the path (not the host, query or fragment)"#
            ]
        );
    }

    #[test]
    fn unknown_keys_and_bad_json_are_refused_by_name() {
        let paths = [
            (
                r#"{"backends": [{"name": "a", "blob_url": "https://a/{digest}", "cidr": []}]}"#,
                "backends[0].cidr: unknown field `cidr`",
            ),
            (
                r#"{"backends": [], "blobs": {"mode": "redirects"}}"#,
                "blobs.mode: unknown variant `redirects`",
            ),
            (
                r#"{"backends": [], "client_ip": {"xff_num_trusted_hops": -1}}"#,
                "client_ip.xff_num_trusted_hops: invalid value: integer `-1`",
            ),
        ];
        for (json, want) in paths {
            let got = errors(json).join("\n");
            assert!(got.starts_with(want), "{got}");
        }
        let typo = r#"{"backends": [{"name": "a", "blob_url": "https://a/{digest}", "cidr": []}]}"#;
        let got = errors(typo).join("\n");
        assert!(got.contains("unknown field `cidr`"), "{got}");
        let top = r#"{"backends": [], "blob": {}}"#;
        assert!(errors(top).join("\n").contains("unknown field `blob`"));
        let mode = r#"{"backends": [], "blobs": {"mode": "redirects"}}"#;
        assert!(errors(mode).join("\n").contains("unknown variant `redirects`"));
        let hops = r#"{"backends": [], "client_ip": {"xff_num_trusted_hop": 1}}"#;
        assert!(errors(hops).join("\n").contains("unknown field `xff_num_trusted_hop`"));
        assert!(errors(r#"{"backends": [}"#).join("\n").contains("line 1"));
        assert_eq!(errors(r#"{"backends": []}"#), ["backends: at least one backend is required"]);
    }
}
