//! The fleet's memory of produced digests, in etcd (`manifests.store`).
//!
//! A digest handed out by one Envoy is often fetched through another, so each record
//! (new digest → backend, repository, original digest) is written to etcd, create-if-absent,
//! before the digest reaches any client, and a replica that does not know a digest asks etcd.
//! This module builds the calls to etcd's JSON gateway (`POST /v3/...`, keys and values in
//! base64, 64-bit integers as strings) and reads its answers; the glue sends them through the
//! configured Envoy cluster. Any answer that is not what etcd sends (not JSON, a wrong shape, a
//! value that does not decode to the record asked for, over [`MAX_ANSWER_BYTES`]) is a failed
//! call, never a panic.
//!
//! Records live under a lease of `ttl_s`: each VM grants one and puts records under it for
//! half its life, so a record outlives its write by at least `ttl_s / 2`; a record found older
//! than `ttl_s / 4` when its digest is produced or served again is written again under a fresh
//! lease, so a digest in use never expires.

use crate::base64;
use crate::mapping::Mapping;
use serde::Deserialize;
use serde_json::{json, Value};

/// The `manifests.store` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// The Envoy cluster that reaches etcd's JSON gateway (its client port).
    pub cluster: String,
    /// The key prefix every record is under (one registry's namespace in a shared etcd).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long a record lives after it was last written.
    #[serde(default = "default_ttl_s")]
    pub ttl_s: u32,
    /// How long one call to etcd may take; a rewrite waits at most twice this (a lease, then
    /// the write), a lookup once.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
}

fn default_prefix() -> String {
    "/blobsteer/digests/".to_string()
}

fn default_ttl_s() -> u32 {
    30 * 86_400
}

fn default_timeout_ms() -> u32 {
    500
}

/// Limits of `ttl_s` (a minute to a year).
pub const TTL_S: std::ops::RangeInclusive<u32> = 60..=31_536_000;
/// Limits of `timeout_ms`.
pub const TIMEOUT_MS: std::ops::RangeInclusive<u32> = 1..=10_000;
/// Longest `prefix`.
pub const MAX_PREFIX_LEN: usize = 256;
/// The largest answer read from etcd: a range of one key, or a transaction over an index's
/// records (at most `max_children` + 1 of about 300 bytes), is far smaller.
pub const MAX_ANSWER_BYTES: usize = 256 << 10;

/// A call to etcd's JSON gateway: `POST path` with this JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreCall {
    /// `/v3/...`.
    pub path: &'static str,
    /// The request body.
    pub body: String,
}

/// An etcd lease, and when it was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The lease ID etcd gave.
    pub id: i64,
    /// When it was granted (seconds since the epoch).
    pub granted_s: u64,
}

/// Why a call to etcd did not give an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// No answer in time, a connection failure, or a status other than 200.
    Unavailable,
    /// An answer that is not one etcd gives.
    Malformed,
}

/// What happened to the calls to etcd, for the stats (`blobsteer.store.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreEvent {
    /// The records of a rewrite are in etcd (created now, or found as another replica wrote
    /// them): the rewritten digest went to the client.
    Written,
    /// Records found older than `ttl_s / 4` were written again.
    Renewed,
    /// A lease was granted.
    LeaseGranted,
    /// A digest this Envoy did not know was found in etcd.
    Hit,
    /// ... and was not there: the request went upstream untouched.
    Miss,
    /// A key held another record: the original was sent, not the rewrite.
    Conflict,
    /// etcd did not answer within `timeout_ms` (504 from Envoy, or nothing at all).
    Timeout,
    /// etcd could not be reached or asked, refused, or answered out of shape.
    Failed,
    /// A call answered 503 was sent once more ([`StoreEvent::is_retried`]).
    Retried,
}

impl StoreEvent {
    /// Every event, for defining stats up front.
    pub const ALL: [StoreEvent; 9] = [
        StoreEvent::Written,
        StoreEvent::Renewed,
        StoreEvent::LeaseGranted,
        StoreEvent::Hit,
        StoreEvent::Miss,
        StoreEvent::Conflict,
        StoreEvent::Timeout,
        StoreEvent::Failed,
        StoreEvent::Retried,
    ];

    /// The stat name: `blobsteer.store.<name>`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreEvent::Written => "written",
            StoreEvent::Renewed => "renewed",
            StoreEvent::LeaseGranted => "lease_granted",
            StoreEvent::Hit => "hit",
            StoreEvent::Miss => "miss",
            StoreEvent::Conflict => "conflict",
            StoreEvent::Timeout => "timeout",
            StoreEvent::Failed => "failed",
            StoreEvent::Retried => "retried",
        }
    }

    /// Whether a call that got this answer is sent once more (only its first attempt is). A
    /// 503 is Envoy's answer when the member it chose cannot be reached (one just stopped:
    /// Envoy's workers may still pick it for a moment after its health check failed) and
    /// etcd's when a member is briefly without a leader; asked again, the call goes to another
    /// member. A timeout is not sent again (it would double the wait), nor anything else.
    pub fn is_retried(status: Option<u16>) -> bool {
        status == Some(503)
    }

    /// The failure an answer with this status is (`None`: no answer): `None` for a 200.
    pub fn failure(status: Option<u16>) -> Option<StoreEvent> {
        match status {
            Some(200) => None,
            Some(504) | None => Some(StoreEvent::Timeout),
            Some(_) => Some(StoreEvent::Failed),
        }
    }
}

/// What creating a set of records found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Every record is in etcd as given (written now, or already by a replica that produced
    /// the same); those at these indices are older than `ttl_s / 4` and should be written again.
    Stored {
        /// Indices of the records to renew.
        stale: Vec<usize>,
    },
    /// Nothing was written, since some keys exist (with the same records); these indices are
    /// missing and must be created.
    Missing(Vec<usize>),
    /// A key holds another record: the digest must not be handed out.
    Conflict,
}

impl StoreSettings {
    /// The key of a produced digest's record.
    pub fn key(&self, repository: &str, digest: &str) -> String {
        format!("{}{repository}@{digest}", self.prefix)
    }

    /// Whether a lease granted at `granted_s` may still take new records at `now_s` (they must
    /// live at least `ttl_s / 2` from their write).
    pub fn lease_fresh(&self, lease: &Lease, now_s: u64) -> bool {
        now_s.saturating_sub(lease.granted_s) < u64::from(self.ttl_s / 2)
    }

    /// Grants a lease of `ttl_s`.
    pub fn grant(&self) -> StoreCall {
        StoreCall {
            path: "/v3/lease/grant",
            body: json!({"TTL": self.ttl_s.to_string()}).to_string(),
        }
    }

    /// Creates `records` at `at_s` under `lease`, all or nothing: if any key exists, nothing is
    /// written and every key is read back (see [`Self::read_created`]).
    pub fn create(&self, records: &[Mapping], lease: &Lease, at_s: u64) -> StoreCall {
        let keys: Vec<String> = records.iter().map(|r| self.encoded_key(r)).collect();
        let compare: Vec<Value> = keys
            .iter()
            .map(|key| json!({"key": key, "result": "EQUAL", "target": "VERSION", "version": "0"}))
            .collect();
        let success: Vec<Value> =
            records.iter().zip(&keys).map(|(record, key)| put(key, record, lease, at_s)).collect();
        let failure: Vec<Value> =
            keys.iter().map(|key| json!({"request_range": {"key": key}})).collect();
        let body = json!({"compare": compare, "success": success, "failure": failure});
        StoreCall { path: "/v3/kv/txn", body: body.to_string() }
    }

    /// Writes `records` again at `at_s` under `lease`, whatever the keys hold (a renewal).
    pub fn renew(&self, records: &[&Mapping], lease: &Lease, at_s: u64) -> StoreCall {
        let success: Vec<Value> = records
            .iter()
            .map(|record| put(&self.encoded_key(record), record, lease, at_s))
            .collect();
        StoreCall { path: "/v3/kv/txn", body: json!({"success": success}).to_string() }
    }

    /// Reads the record of `digest` in `repository`.
    pub fn read(&self, repository: &str, digest: &str) -> StoreCall {
        let key = base64::encode(self.key(repository, digest).as_bytes());
        StoreCall { path: "/v3/kv/range", body: json!({"key": key}).to_string() }
    }

    /// What the answer to [`Self::create`] of `records` says, at `now_s`.
    pub fn read_created(
        &self,
        body: &[u8],
        records: &[Mapping],
        now_s: u64,
    ) -> Result<Created, StoreError> {
        let answer: TxnAnswer = parse(body)?;
        if answer.succeeded {
            return Ok(Created::Stored { stale: Vec::new() });
        }
        if answer.responses.len() != records.len() {
            return Err(StoreError::Malformed);
        }
        let (mut missing, mut stale) = (Vec::new(), Vec::new());
        for (index, (response, record)) in answer.responses.iter().zip(records).enumerate() {
            let range = response.response_range.as_ref().ok_or(StoreError::Malformed)?;
            match range.only_value(&self.key(&record.repository, &record.digest))? {
                None => missing.push(index),
                Some(value) => match Mapping::decode_at(Some(&value), &record.digest) {
                    Some((held, at)) if held == *record => {
                        if self.is_stale(at, now_s) {
                            stale.push(index);
                        }
                    }
                    Some(_) => return Ok(Created::Conflict),
                    None => return Err(StoreError::Malformed),
                },
            }
        }
        Ok(if missing.is_empty() { Created::Stored { stale } } else { Created::Missing(missing) })
    }

    /// What the answer to [`Self::read`] of `digest` in `repository` holds: the record's value
    /// (as written, for the local memory) and when it was written, or `None` if etcd has no
    /// such record.
    pub fn read_record(
        &self,
        body: &[u8],
        repository: &str,
        digest: &str,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let answer: RangeAnswer = parse(body)?;
        let Some(value) = answer.only_value(&self.key(repository, digest))? else {
            return Ok(None);
        };
        match Mapping::decode_at(Some(&value), digest) {
            Some((record, at)) if record.repository == repository => Ok(Some((value, at))),
            _ => Err(StoreError::Malformed),
        }
    }

    /// Whether a record written at `at_s` should be written again at `now_s`.
    pub fn is_stale(&self, at_s: u64, now_s: u64) -> bool {
        now_s.saturating_sub(at_s) > u64::from(self.ttl_s / 4)
    }

    fn encoded_key(&self, record: &Mapping) -> String {
        base64::encode(self.key(&record.repository, &record.digest).as_bytes())
    }
}

/// The lease in the answer to [`StoreSettings::grant`], granted at `now_s`.
pub fn read_lease(body: &[u8], now_s: u64) -> Result<Lease, StoreError> {
    #[derive(Deserialize)]
    struct GrantAnswer {
        #[serde(rename = "ID")]
        id: String,
    }
    let answer: GrantAnswer = parse(body)?;
    let id = answer.id.parse().map_err(|_| StoreError::Malformed)?;
    Ok(Lease { id, granted_s: now_s })
}

fn put(key: &str, record: &Mapping, lease: &Lease, at_s: u64) -> Value {
    let value = base64::encode(&record.encode(at_s));
    json!({"request_put": {"key": key, "value": value, "lease": lease.id.to_string()}})
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, StoreError> {
    // Every answer of the gateway is an object (serde would also take an array for a struct).
    if body.len() > MAX_ANSWER_BYTES || body.trim_ascii_start().first() != Some(&b'{') {
        return Err(StoreError::Malformed);
    }
    serde_json::from_slice(body).map_err(|_| StoreError::Malformed)
}

/// `/v3/kv/txn`'s answer (fields at their default are omitted: no `succeeded` when false).
#[derive(Deserialize)]
struct TxnAnswer {
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<TxnResponse>,
}

#[derive(Deserialize)]
struct TxnResponse {
    response_range: Option<RangeAnswer>,
}

/// `/v3/kv/range`'s answer (no `kvs` for an absent key).
#[derive(Deserialize)]
struct RangeAnswer {
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

impl RangeAnswer {
    /// The value of `key`: `None` if absent; more than one pair, or another key, is malformed.
    fn only_value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.kvs.as_slice() {
            [] => Ok(None),
            [pair] if base64::decode(&pair.key).as_deref() == Some(key.as_bytes()) => {
                base64::decode(&pair.value).map(Some).ok_or(StoreError::Malformed)
            }
            _ => Err(StoreError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn settings() -> StoreSettings {
        StoreSettings {
            cluster: "etcd".into(),
            prefix: "/reg/".into(),
            ttl_s: 400,
            timeout_ms: 500,
        }
    }

    fn record(n: u8) -> Mapping {
        Mapping {
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            backend: "eu".into(),
            repository: "demo/hello".into(),
            original: format!("sha256:{}", "0".repeat(64)),
        }
    }

    fn range_of(key: &str, value: Option<&[u8]>) -> Value {
        match value {
            None => json!({"header": {"revision": "7"}}),
            Some(v) => json!({"header": {}, "kvs": [{"key": base64::encode(key.as_bytes()),
                "value": base64::encode(v), "version": "1", "lease": "5"}], "count": "1"}),
        }
    }

    #[test]
    fn builds_the_gateways_calls() {
        let s = settings();
        let lease = Lease { id: 7_587_869_735_384_096_540, granted_s: 100 };
        let call = s.create(&[record(1)], &lease, 120);
        assert_eq!(call.path, "/v3/kv/txn");
        let body: Value = serde_json::from_str(&call.body).unwrap();
        let key = base64::encode(s.key("demo/hello", &record(1).digest).as_bytes());
        assert_eq!(
            body["compare"][0],
            json!({"key": key, "result": "EQUAL", "target": "VERSION", "version": "0"})
        );
        let put = &body["success"][0]["request_put"];
        assert_eq!(
            (put["key"].as_str(), put["lease"].as_str()),
            (Some(key.as_str()), Some("7587869735384096540"))
        );
        let value = base64::decode(put["value"].as_str().unwrap()).unwrap();
        assert_eq!(Mapping::decode_at(Some(&value), &record(1).digest), Some((record(1), 120)));
        assert_eq!(body["failure"][0]["request_range"]["key"], key);
        assert_eq!(s.grant().body, r#"{"TTL":"400"}"#);
        assert_eq!(s.key("demo/hello", "sha256:ab"), "/reg/demo/hello@sha256:ab");
        assert!(s.lease_fresh(&lease, 299) && !s.lease_fresh(&lease, 300));
    }

    #[test]
    fn reads_what_creating_found() {
        let s = settings();
        let records = [record(1), record(2)];
        let key = |r: &Mapping| s.key(&r.repository, &r.digest);
        let ok = br#"{"header": {"revision": "9"}, "succeeded": true, "responses": [{"response_put": {}}]}"#;
        assert_eq!(s.read_created(ok, &records, 0), Ok(Created::Stored { stale: vec![] }));
        let failed = |values: [Option<Vec<u8>>; 2]| {
            let responses: Vec<Value> = records
                .iter()
                .zip(&values)
                .map(|(r, v)| json!({"response_range": range_of(&key(r), v.as_deref())}))
                .collect();
            json!({"header": {}, "responses": responses}).to_string()
        };
        let same_old = Some(record(1).encode(0));
        let body = failed([same_old.clone(), None]);
        assert_eq!(s.read_created(body.as_bytes(), &records, 50), Ok(Created::Missing(vec![1])));
        let body = failed([same_old.clone(), Some(record(2).encode(90))]);
        assert_eq!(
            s.read_created(body.as_bytes(), &records, 101),
            Ok(Created::Stored { stale: vec![0] })
        );
        let other = Mapping { backend: "us".into(), ..record(2) };
        let body = failed([same_old, Some(other.encode(0))]);
        assert_eq!(s.read_created(body.as_bytes(), &records, 0), Ok(Created::Conflict));
    }

    #[test]
    fn reads_a_record_or_its_absence() {
        let s = settings();
        let r = record(3);
        let key = s.key(&r.repository, &r.digest);
        let found = range_of(&key, Some(&r.encode(42))).to_string();
        assert_eq!(
            s.read_record(found.as_bytes(), &r.repository, &r.digest),
            Ok(Some((r.encode(42), 42)))
        );
        let absent = range_of(&key, None).to_string();
        assert_eq!(s.read_record(absent.as_bytes(), &r.repository, &r.digest), Ok(None));
        assert_eq!(
            read_lease(br#"{"header":{},"ID":"7587869735384096540","TTL":"400"}"#, 9),
            Ok(Lease { id: 7_587_869_735_384_096_540, granted_s: 9 })
        );
    }

    #[test]
    fn only_a_503_is_asked_again() {
        assert!(StoreEvent::is_retried(Some(503)));
        for status in [None, Some(200), Some(500), Some(504), Some(404)] {
            assert!(!StoreEvent::is_retried(status), "{status:?}");
        }
    }

    #[test]
    fn a_hostile_answer_is_a_failed_call() {
        let s = settings();
        let r = record(4);
        let key = s.key(&r.repository, &r.digest);
        let other_key = s.key(&r.repository, &record(5).digest);
        let bad: Vec<String> = vec![
            "not json".into(),
            "[]".into(),
            r#"{"kvs": "x"}"#.into(),
            r#"{"kvs": [{"key": "!!", "value": ""}]}"#.into(),
            range_of(&other_key, Some(&record(5).encode(0))).to_string(),
            range_of(&key, Some(b"garbage")).to_string(),
            range_of(&key, Some(&Mapping { repository: "other".into(), ..r.clone() }.encode(0)))
                .to_string(),
            json!({"kvs": [{"key": base64::encode(key.as_bytes()), "value": "Zg"}]}).to_string(),
            format!(r#"{{"kvs": [], "pad": "{}"}}"#, "x".repeat(MAX_ANSWER_BYTES)),
        ];
        for body in &bad {
            assert_eq!(
                s.read_record(body.as_bytes(), &r.repository, &r.digest),
                Err(StoreError::Malformed),
                "{}",
                &body[..body.len().min(80)]
            );
        }
        let two = json!({"kvs": [range_of(&key, Some(&r.encode(0)))["kvs"][0], range_of(&key, Some(&r.encode(0)))["kvs"][0]]});
        assert_eq!(
            s.read_record(two.to_string().as_bytes(), &r.repository, &r.digest),
            Err(StoreError::Malformed)
        );
        // A transaction answer of the wrong length, or without ranges.
        let records = [r.clone()];
        for body in [r#"{"responses": []}"#, r#"{"responses": [{"response_put": {}}]}"#] {
            assert_eq!(
                s.read_created(body.as_bytes(), &records, 0),
                Err(StoreError::Malformed),
                "{body}"
            );
        }
        for body in [&b"{}"[..], br#"{"ID": 5}"#, br#"{"ID": "x"}"#] {
            assert_eq!(read_lease(body, 0), Err(StoreError::Malformed));
        }
    }
}
