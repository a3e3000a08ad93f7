//! The fleet's store: arbitrary bytes as an answer of etcd's JSON gateway (a range, a
//! transaction, a lease grant), for a fixed record.
//!
//! Properties:
//! - never panics;
//! - a record read back is exactly one of the digest and repository asked for, and its value
//!   decodes to it;
//! - what creating records found names only indices of the records given;
//! - base64 of any bytes decodes back to them.

#![no_main]

use blobsteer_core::base64;
use blobsteer_core::mapping::Mapping;
use blobsteer_core::store::{read_lease, Created, StoreSettings};
use libfuzzer_sys::fuzz_target;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let settings = StoreSettings {
        cluster: "etcd".into(),
        prefix: "/r/".into(),
        ttl_s: 400,
        timeout_ms: 500,
    };
    let record = Mapping {
        digest: DIGEST.into(),
        backend: "eu".into(),
        repository: "demo/hello".into(),
        original: format!("sha256:{}", "0".repeat(64)),
    };
    if let Ok(Some((value, at))) = settings.read_record(data, "demo/hello", DIGEST) {
        let (held, held_at) = Mapping::decode_at(Some(&value), DIGEST).expect("a record");
        assert_eq!((held.repository.as_str(), held_at), ("demo/hello", at));
    }
    let records = [record.clone(), Mapping { digest: format!("sha256:{}", "f".repeat(64)), ..record }];
    match settings.read_created(data, &records, 1_000) {
        Ok(Created::Stored { stale }) => assert!(stale.iter().all(|&i| i < records.len())),
        Ok(Created::Missing(missing)) => {
            assert!(!missing.is_empty() && missing.iter().all(|&i| i < records.len()))
        }
        Ok(Created::Conflict) | Err(_) => {}
    }
    let _ = read_lease(data, 0);
    assert_eq!(base64::decode(&base64::encode(data)).as_deref(), Some(data));
});
