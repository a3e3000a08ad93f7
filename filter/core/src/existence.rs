//! Whether a backend is known to hold a blob: the check the filter sends before it sends anyone
//! to a mirror, and the cache of its answers kept in Envoy shared data (visible to every worker).
//!
//! A mirror is filled by a sync job that lags behind the registry, and a client sent to a mirror
//! that lacks the blob fails its pull. So, for a backend with a `cluster`, the filter first asks
//! the mirror (`HEAD` through that cluster). Presence is cached for `positive_ttl_s` (a blob is
//! content-addressed, but a mirror can lose one: lifecycle rules, a rebuilt bucket); absence, or
//! any failure, for `negative_ttl_s`.
//!
//! The cache is direct-mapped: `cache_slots` keys `blobsteer.exists.<slot>`, the slot a hash of
//! the backend and the blob's URL on it (everything the template uses: with `{repository}`, one
//! blob is a different object in each repository). Envoy never frees a shared-data key, so a bounded cache must reuse its
//! keys: a new entry replaces whatever held its slot (eviction by collision), and an entry for
//! another blob found in a slot reads as unknown.

use crate::slot::slot_of;
use serde::Deserialize;

/// The `existence_check` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExistenceSettings {
    /// How long a check may take before the mirror counts as lacking the blob.
    pub timeout_ms: u32,
    /// How long an absent (or failed) answer is believed before the mirror is asked again.
    pub negative_ttl_s: u32,
    /// How long a present answer is believed before the mirror is asked again.
    pub positive_ttl_s: u32,
    /// Number of cache slots shared by all workers (about 200 bytes each).
    pub cache_slots: u32,
    /// Consecutive failed checks (5xx, timeout, refused, reset) that take a backend down
    /// (`crate::health`); 0 never does.
    pub down_after_failures: u32,
    /// The window those failures must fall within.
    pub failure_window_s: u32,
    /// How long a backend stays down before one request probes it.
    pub down_s: u32,
}

impl Default for ExistenceSettings {
    fn default() -> Self {
        ExistenceSettings {
            timeout_ms: 2000,
            negative_ttl_s: 30,
            positive_ttl_s: 86_400,
            cache_slots: 65536,
            down_after_failures: 5,
            failure_window_s: 30,
            down_s: 30,
        }
    }
}

/// Limits of [`ExistenceSettings`], checked with the configuration.
pub const TIMEOUT_MS: std::ops::RangeInclusive<u32> = 1..=60_000;
/// Limits of `negative_ttl_s`.
pub const NEGATIVE_TTL_S: std::ops::RangeInclusive<u32> = 0..=86_400;
/// Limits of `positive_ttl_s` (30 days at most).
pub const POSITIVE_TTL_S: std::ops::RangeInclusive<u32> = 1..=2_592_000;
/// Limits of `down_after_failures`.
pub const DOWN_AFTER_FAILURES: std::ops::RangeInclusive<u32> = 0..=1000;
/// Limits of `failure_window_s`.
pub const FAILURE_WINDOW_S: std::ops::RangeInclusive<u32> = 1..=3600;
/// Limits of `down_s`.
pub const DOWN_S: std::ops::RangeInclusive<u32> = 1..=3600;
/// Limits of `cache_slots`.
pub const CACHE_SLOTS: std::ops::RangeInclusive<u32> = 1..=1_048_576;

/// What the cache knows about a blob on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// The mirror answered 200: send clients there.
    Present,
    /// The mirror lacked it or failed, recently: send clients upstream.
    Absent,
}

/// The `HEAD` the filter sends to a mirror, through the backend's Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    /// The Envoy cluster that reaches the mirror.
    pub cluster: String,
    /// `:authority`, the host (and port) of the blob URL.
    pub authority: String,
    /// `:path`, path and query of the blob URL.
    pub path: String,
    /// `:scheme`, `http` or `https`.
    pub scheme: &'static str,
    /// The shared-data key of the cache slot for this backend and blob URL.
    pub cache_key: String,
    /// What identifies this backend and blob URL in a cache entry (and among checks in flight).
    pub entry_id: String,
    /// The backend's name (its health is kept by name).
    pub backend: String,
}

impl CheckRequest {
    /// The check of `location` (a rendered blob URL) through `cluster`.
    pub fn new(
        settings: &ExistenceSettings,
        cluster: &str,
        backend: &str,
        location: &str,
    ) -> Option<Self> {
        let (scheme, rest) = if let Some(rest) = location.strip_prefix("https://") {
            ("https", rest)
        } else {
            ("http", location.strip_prefix("http://")?)
        };
        let split = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = if path.is_empty() { "/" } else { path };
        Some(CheckRequest {
            cluster: cluster.to_string(),
            authority: authority.to_string(),
            path: path.to_string(),
            scheme,
            cache_key: format!(
                "blobsteer.exists.{}",
                slot_of(&[backend, location], settings.cache_slots)
            ),
            entry_id: format!("{backend} {location}"),
            backend: backend.to_string(),
        })
    }

    /// Reads a cache slot's value: what it says about this blob at `now_s` (seconds since the
    /// epoch), or `None` when the slot is empty, holds another blob, or its absence expired.
    pub fn read(&self, value: Option<&[u8]>, now_s: u64) -> Option<Known> {
        let text = std::str::from_utf8(value?).ok()?;
        let (state, id) = text.split_once(' ')?;
        if id != self.entry_id {
            return None;
        }
        let (known, until) = if let Some(until) = state.strip_prefix("present-until-") {
            (Known::Present, until)
        } else {
            (Known::Absent, state.strip_prefix("absent-until-")?)
        };
        let until: u64 = until.parse().ok()?;
        (now_s < until).then_some(known)
    }

    /// The cache value recording an answer at `now_s`.
    pub fn entry(&self, known: Known, settings: &ExistenceSettings, now_s: u64) -> Vec<u8> {
        let (state, ttl) = match known {
            Known::Present => ("present", settings.positive_ttl_s),
            Known::Absent => ("absent", settings.negative_ttl_s),
        };
        let until = now_s.saturating_add(u64::from(ttl));
        format!("{state}-until-{until} {}", self.entry_id).into_bytes()
    }
}

/// How a mirror answered a check, for the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckOutcome {
    /// 200.
    Present,
    /// 404.
    NotFound,
    /// 401 or 403: a private bucket, or one that hides missing objects.
    Forbidden,
    /// 503 from Envoy: no connection to the mirror (refused, reset, no healthy host).
    Unavailable,
    /// 504 from Envoy: no answer within `timeout_ms`.
    Timeout,
    /// Any other answer (5xx, 3xx, ...).
    Failed,
}

impl CheckOutcome {
    /// Every outcome, for defining stats up front.
    pub const ALL: [CheckOutcome; 6] = [
        CheckOutcome::Present,
        CheckOutcome::NotFound,
        CheckOutcome::Forbidden,
        CheckOutcome::Unavailable,
        CheckOutcome::Timeout,
        CheckOutcome::Failed,
    ];

    /// Classifies the status of the check's answer (`None`: no answer at all).
    pub fn from_status(status: Option<u16>) -> Self {
        match status {
            Some(200) => CheckOutcome::Present,
            Some(404) => CheckOutcome::NotFound,
            Some(401 | 403) => CheckOutcome::Forbidden,
            Some(503) | None => CheckOutcome::Unavailable,
            Some(504) => CheckOutcome::Timeout,
            Some(_) => CheckOutcome::Failed,
        }
    }

    /// What the answer means for clients.
    pub fn known(self) -> Known {
        match self {
            CheckOutcome::Present => Known::Present,
            _ => Known::Absent,
        }
    }

    /// The stat name: `blobsteer.check.<name>`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckOutcome::Present => "present",
            CheckOutcome::NotFound => "not_found",
            CheckOutcome::Forbidden => "forbidden",
            CheckOutcome::Unavailable => "unavailable",
            CheckOutcome::Timeout => "timeout",
            CheckOutcome::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const DIGEST: &str = "sha256:d0852262d08fb507d7786cc9a96e1646d59476e1d849fefc8a0cc097b19a7e90";

    fn check(location: &str) -> CheckRequest {
        CheckRequest::new(&ExistenceSettings::default(), "mirror_eu", "eu", location).unwrap()
    }

    #[test]
    fn splits_the_blob_url_into_the_head_request() {
        let c = check(&format!("https://eu.example:8443/containers/images/{DIGEST}?x=1"));
        assert_eq!((c.scheme, c.authority.as_str()), ("https", "eu.example:8443"));
        assert_eq!(c.path, format!("/containers/images/{DIGEST}?x=1"));
        assert_eq!(c.cluster, "mirror_eu");
        assert!(c.cache_key.starts_with("blobsteer.exists."));
        assert_eq!(check("http://eu.example").path, "/");
        assert!(CheckRequest::new(&ExistenceSettings::default(), "c", "eu", "ftp://x/").is_none());
    }

    #[test]
    fn the_slot_is_stable_and_bounded() {
        let a = check("http://eu.example/x");
        let b = check("http://eu.example/x");
        assert_eq!(a.cache_key, b.cache_key);
        let one = ExistenceSettings { cache_slots: 1, ..ExistenceSettings::default() };
        let other = CheckRequest::new(&one, "c", "us", "http://us.example/x").unwrap();
        assert_eq!(other.cache_key, "blobsteer.exists.0");
    }

    #[test]
    fn presence_and_absence_both_expire() {
        let s = ExistenceSettings::default();
        let c = check("http://eu.example/x");
        let present = c.entry(Known::Present, &s, 1_000);
        assert_eq!(c.read(Some(&present), 1_000 + 86_399), Some(Known::Present));
        // A blob deleted from the mirror is asked about again after a day, not never.
        assert_eq!(c.read(Some(&present), 1_000 + 86_400), None);
        let absent = c.entry(Known::Absent, &s, 1_000);
        assert_eq!(c.read(Some(&absent), 1_029), Some(Known::Absent));
        assert_eq!(c.read(Some(&absent), 1_030), None);
        // An entry of the first release (present, no expiry) is asked about again.
        assert_eq!(c.read(Some(format!("present {}", c.entry_id).as_bytes()), 0), None);
    }

    #[test]
    fn one_blob_in_two_repositories_is_two_entries() {
        let s = ExistenceSettings::default();
        let here = check(&format!("http://eu.example/demo/hello/{DIGEST}"));
        let there = check(&format!("http://eu.example/other/app/{DIGEST}"));
        assert_ne!(here.entry_id, there.entry_id);
        let present_here = here.entry(Known::Present, &s, 0);
        assert_eq!(there.read(Some(&present_here), 0), None, "not known in the other repository");
    }

    #[test]
    fn another_blob_or_garbage_in_the_slot_reads_as_unknown() {
        let s = ExistenceSettings::default();
        let c = check("http://eu.example/x");
        let other = CheckRequest::new(&s, "c", "us", "http://us.example/x").unwrap();
        assert_eq!(c.read(Some(&other.entry(Known::Present, &s, 0)), 0), None);
        for junk in
            [&b""[..], b"present", b"absent-until-x eu sha256:1", b"\xff\xfe", b"maybe eu x"]
        {
            assert_eq!(c.read(Some(junk), 0), None);
        }
        assert_eq!(c.read(None, 0), None);
    }

    #[test]
    fn outcomes_from_statuses() {
        let cases = [
            (Some(200), CheckOutcome::Present),
            (Some(404), CheckOutcome::NotFound),
            (Some(403), CheckOutcome::Forbidden),
            (Some(503), CheckOutcome::Unavailable),
            (None, CheckOutcome::Unavailable),
            (Some(504), CheckOutcome::Timeout),
            (Some(500), CheckOutcome::Failed),
            (Some(302), CheckOutcome::Failed),
        ];
        for (status, want) in cases {
            assert_eq!(CheckOutcome::from_status(status), want, "{status:?}");
        }
        assert_eq!(CheckOutcome::NotFound.known(), Known::Absent);
    }
}
