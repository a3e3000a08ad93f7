//! Rewrites a VM already made, kept so that a hot tag's manifest is not read, rewritten and
//! hashed again (nor an index's children fetched again) for every client of the same backend.
//!
//! Without existence checks a rewrite depends only on the original bytes, their content type,
//! the backend and the repository, so an entry is used only when all four are equal: the
//! original bytes are compared whole, never trusted by a digest. Entries are direct-mapped over
//! `slots` by the upstream's `Docker-Content-Digest`, the repository and the backend (a
//! manifest served without that header is not kept), a new entry replacing whatever held its
//! slot; a manifest whose original and rewrite
//! together pass [`MAX_ENTRY_BYTES`] is not kept, which bounds the cache to
//! `slots × MAX_ENTRY_BYTES`.

use super::Rewritten;
use crate::slot::slot_of;
use std::rc::Rc;

/// The largest original plus rewrite kept: image manifests and indexes are a few KiB.
pub const MAX_ENTRY_BYTES: usize = 64 << 10;

/// What a rewrite was made from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The backend's index in the configuration.
    pub backend: usize,
    /// The repository the manifest was asked for in.
    pub repository: &'a str,
    /// The upstream's `Content-Type`.
    pub content_type: Option<&'a str>,
    /// The upstream's bytes.
    pub original: &'a [u8],
    /// The upstream's `Docker-Content-Digest`: where the entry lives.
    pub upstream_digest: Option<&'a str>,
}

#[derive(Debug)]
struct Entry {
    backend: usize,
    repository: String,
    content_type: Option<String>,
    original: Vec<u8>,
    rewritten: Rc<Rewritten>,
}

impl Entry {
    fn made_from(&self, origin: &Origin<'_>) -> bool {
        self.backend == origin.backend
            && self.repository == origin.repository
            && self.content_type.as_deref() == origin.content_type
            && self.original == origin.original
    }
}

/// A VM's rewrites, direct-mapped (see the module's documentation).
#[derive(Debug, Default)]
pub struct RewriteCache {
    slots: Vec<Option<Entry>>,
}

impl RewriteCache {
    /// A cache of `slots` entries (0: nothing is kept).
    pub fn new(slots: u32) -> Self {
        RewriteCache { slots: (0..slots).map(|_| None).collect() }
    }

    /// The rewrite made earlier from exactly this origin, if it is still kept (shared, not
    /// copied: a hit costs no allocation).
    pub fn get(&self, origin: &Origin<'_>) -> Option<Rc<Rewritten>> {
        let entry = self.slots.get(self.slot(origin)?)?.as_ref()?;
        entry.made_from(origin).then(|| Rc::clone(&entry.rewritten))
    }

    /// Keeps `rewritten` as made from `origin` (unless it is too large, or has no digest
    /// header to be found by).
    pub fn insert(&mut self, origin: &Origin<'_>, rewritten: &Rc<Rewritten>) {
        if origin.original.len() + rewritten.bytes.len() > MAX_ENTRY_BYTES {
            return;
        }
        let Some(index) = self.slot(origin) else { return };
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(Entry {
                backend: origin.backend,
                repository: origin.repository.to_string(),
                content_type: origin.content_type.map(str::to_string),
                original: origin.original.to_vec(),
                rewritten: Rc::clone(rewritten),
            });
        }
    }

    fn slot(&self, origin: &Origin<'_>) -> Option<usize> {
        let slots = u32::try_from(self.slots.len()).ok().filter(|&n| n > 0)?;
        let backend = origin.backend.to_string();
        let index = slot_of(&[origin.upstream_digest?, origin.repository, &backend], slots);
        usize::try_from(index).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn rewritten(text: &str) -> Rc<Rewritten> {
        let bytes = text.as_bytes().to_vec();
        Rc::new(Rewritten { bytes, digest: format!("d-{text}"), children: vec![] })
    }

    fn origin<'a>(original: &'a [u8], backend: usize) -> Origin<'a> {
        Origin {
            backend,
            repository: "library/sample",
            content_type: Some("application/vnd.oci.image.manifest.v1+json"),
            original,
            upstream_digest: Some("sha256:0f"),
        }
    }

    #[test]
    fn found_only_when_made_from_the_same_origin() {
        let mut cache = RewriteCache::new(8);
        let bytes = br#"{"schemaVersion":2}"#;
        assert_eq!(cache.get(&origin(bytes, 0)), None);
        cache.insert(&origin(bytes, 0), &rewritten("new"));
        assert_eq!(cache.get(&origin(bytes, 0)), Some(rewritten("new")));
        // Another backend, repository, content type, or other bytes under the same digest
        // header: a miss, never the rewrite of something else.
        assert_eq!(cache.get(&origin(bytes, 1)), None);
        assert_eq!(cache.get(&Origin { repository: "other", ..origin(bytes, 0) }), None);
        assert_eq!(cache.get(&Origin { content_type: None, ..origin(bytes, 0) }), None);
        assert_eq!(cache.get(&origin(br#"{"schemaVersion":3}"#, 0)), None);
    }

    #[test]
    fn keeps_nothing_without_a_digest_header_slots_or_room() {
        let bytes = br#"{"schemaVersion":2}"#;
        let mut none = RewriteCache::new(0);
        none.insert(&origin(bytes, 0), &rewritten("new"));
        assert_eq!(none.get(&origin(bytes, 0)), None);

        let mut cache = RewriteCache::new(8);
        let headless = Origin { upstream_digest: None, ..origin(bytes, 0) };
        cache.insert(&headless, &rewritten("new"));
        assert_eq!(cache.get(&headless), None);

        let big = vec![b' '; MAX_ENTRY_BYTES];
        cache.insert(&origin(&big, 0), &rewritten("new"));
        assert_eq!(cache.get(&origin(&big, 0)), None);
    }

    #[test]
    fn one_manifest_is_kept_for_several_backends() {
        let mut cache = RewriteCache::new(64);
        let bytes = br#"{"schemaVersion":2}"#;
        for backend in 0..4 {
            cache.insert(&origin(bytes, backend), &rewritten(&format!("for-{backend}")));
        }
        let kept = (0..4).filter(|&b| cache.get(&origin(bytes, b)).is_some()).count();
        assert_eq!(kept, 4, "each backend has a slot of its own here");
    }

    #[test]
    fn a_new_entry_replaces_its_slot() {
        let mut cache = RewriteCache::new(1);
        let (a, b) = (br#"{"a":1}"#, br#"{"b":1}"#);
        let b_origin = Origin { upstream_digest: Some("sha256:1f"), ..origin(b, 0) };
        cache.insert(&origin(a, 0), &rewritten("a"));
        cache.insert(&b_origin, &rewritten("b"));
        assert_eq!(cache.get(&origin(a, 0)), None);
        assert_eq!(cache.get(&b_origin), Some(rewritten("b")));
    }
}
