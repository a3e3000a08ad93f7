//! Where a record lives in a direct-mapped store of fixed slots (the existence cache, the memory
//! of produced digests, each VM's rewrite cache).
//!
//! Envoy never frees a shared-data key, so every bounded store of the filter reuses a fixed set
//! of keys; the slot of a record is a hash of what identifies it, the same in every worker and
//! every restart.

/// FNV-1a over the parts (separated by NUL), reduced to `0..slots` (`slots` 0 counts as 1).
pub fn slot_of(parts: &[&str], slots: u32) -> u64 {
    fnv1a(parts) % u64::from(slots.max(1))
}

/// FNV-1a (64 bits) over the parts, separated by NUL: cheap and stable, not secret (never the
/// only thing standing between an attacker and a slow path).
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        let separator = if i == 0 { None } else { Some(0u8) };
        for byte in separator.into_iter().chain(part.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn stable_bounded_and_separated() {
        assert_eq!(slot_of(&["eu", "sha256:1"], 1024), slot_of(&["eu", "sha256:1"], 1024));
        assert!(slot_of(&["anything"], 7) < 7);
        assert_eq!(slot_of(&["anything"], 0), 0);
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(slot_of(&["ab", "c"], u32::MAX), slot_of(&["a", "bc"], u32::MAX));
    }
}
