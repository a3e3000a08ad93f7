//! The record of a digest the filter produced: what makes `/manifests/<new digest>` resolve,
//! kept in this Envoy's shared data (two candidate slots per digest) and, in a fleet, in the
//! fleet's store (`crate::store`).

use crate::digest::Digest;
use sha2::{Digest as _, Sha256};

/// What the filter remembers of a digest it produced, so `/manifests/<new digest>` resolves:
/// the upstream is asked for `original` and its answer rewritten for `backend` again.
///
/// Kept in Envoy shared data over `mapping_slots` keys `blobsteer.manifest.<slot>`, two-way:
/// each digest has two candidate slots, chosen by SHA-256 of a secret of the Envoy
/// ([`SECRET_KEY`], made at first use) and the digest, so nobody who can push a manifest can
/// choose where a digest lands or aim at another's slots. A new digest takes the candidate that
/// already holds it, else an empty one, else the one written longer ago. A forgotten digest is
/// passed to the upstream, which does not know it: the registry's own 404.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The digest the filter produced.
    pub digest: String,
    /// The backend whose URLs the rewrite added.
    pub backend: String,
    /// The repository the manifest came from.
    pub repository: String,
    /// The upstream's digest of the original manifest.
    pub original: String,
}

/// The shared-data key of the Envoy's secret that places produced digests.
pub const SECRET_KEY: &str = "blobsteer.manifest.secret";

impl Mapping {
    /// The shared-data keys of the two candidate slots of `digest`.
    pub fn places(digest: &str, slots: u32, secret: &[u8]) -> [String; 2] {
        let hash = Sha256::new().chain_update(secret).chain_update(digest.as_bytes()).finalize();
        let slots = u64::from(slots.max(1));
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(hash.get(at..at + 8).unwrap_or(&[0; 8]));
            u64::from_le_bytes(bytes) % slots
        };
        let first = word(0);
        let mut second = word(8);
        if second == first && slots > 1 {
            second = (first + 1) % slots;
        }
        [first, second].map(|slot| format!("blobsteer.manifest.{slot}"))
    }

    /// The slot's value, written at `at_s` (seconds since the epoch).
    pub fn encode(&self, at_s: u64) -> Vec<u8> {
        let Mapping { digest, backend, repository, original } = self;
        format!("{digest} {backend} {repository} {original} {at_s}").into_bytes()
    }

    /// The mapping of `digest` in a slot's value, if the slot holds it.
    pub fn decode(value: Option<&[u8]>, digest: &str) -> Option<Mapping> {
        Self::decode_at(value, digest).map(|(mapping, _)| mapping)
    }

    /// The same, with when it was written (seconds since the epoch).
    pub fn decode_at(value: Option<&[u8]>, digest: &str) -> Option<(Mapping, u64)> {
        let (mapping, at) = Self::parse(value?)?;
        (mapping.digest == digest).then_some((mapping, at))
    }

    /// Which of the two candidate slots (their values now) a new mapping of `digest` takes:
    /// the one that holds it, else an empty or unreadable one, else the one written earlier.
    pub fn choose(digest: &str, held: [Option<&[u8]>; 2]) -> usize {
        let parsed = held.map(|value| value.and_then(Self::parse));
        if let Some(at) =
            parsed.iter().position(|p| p.as_ref().is_some_and(|(m, _)| m.digest == digest))
        {
            return at;
        }
        match parsed {
            [None, _] => 0,
            [_, None] => 1,
            [Some((_, first)), Some((_, second))] => usize::from(second < first),
        }
    }

    fn parse(value: &[u8]) -> Option<(Mapping, u64)> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.split(' ');
        let (digest, backend, repository, original, at) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || Digest::parse(digest).is_err()
            || Digest::parse(original).is_err()
        {
            return None;
        }
        let mapping = Mapping {
            digest: digest.to_string(),
            backend: backend.to_string(),
            repository: repository.to_string(),
            original: original.to_string(),
        };
        Some((mapping, at.parse().ok()?))
    }
}
