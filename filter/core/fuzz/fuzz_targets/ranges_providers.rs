//! `ranges::providers::parse` on arbitrary bytes, read as each cloud's file format.
//!
//! Properties:
//! - never panics, for AWS, Google Cloud and Azure alike;
//! - an error names the file and displays as non-empty text with a non-empty message;
//! - every claim read is of that cloud, has a lower-case region and a canonical prefix (no host
//!   bits);
//! - `ranges::import` of the claims never panics, and a configuration it returns is one the
//!   filter accepts.

#![no_main]

use blobsteer_core::ranges::{self, providers, Cloud, ImportOptions};
use blobsteer_core::Config;
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.json";

fuzz_target!(|data: &[u8]| {
    for cloud in Cloud::ALL {
        match providers::parse(cloud, FILE, data) {
            Ok(claims) => {
                for claim in &claims {
                    assert_eq!(claim.cloud, cloud);
                    assert_eq!(claim.region, claim.region.to_ascii_lowercase());
                    assert_eq!(claim.prefix, claim.prefix.trunc(), "{claim:?} has host bits");
                }
                import(cloud, &claims);
            }
            Err(error) => {
                let text = error.to_string();
                assert!(text.starts_with(&format!("{FILE}: ")), "{text:?}");
                assert!(text.len() > FILE.len() + 2, "{text:?}");
                assert!(!error.message.trim().is_empty(), "{error:?}");
            }
        }
    }
});

fn import(cloud: Cloud, claims: &[ranges::Claim]) {
    let template = format!(
        "https://{}-{{region}}.mirror.example/containers/images/{{digest}}",
        cloud.as_str()
    );
    let options = ImportOptions {
        blob_urls: [(cloud, template)].into_iter().collect(),
        ..ImportOptions::default()
    };
    match ranges::import(claims, &options, None) {
        Ok(text) => {
            if let Err(errors) = Config::from_json(text.as_bytes()) {
                panic!("import produced a config the filter refuses: {errors}\n{text}");
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            assert!(errors.iter().all(|e| !e.trim().is_empty()), "{errors:?}");
        }
    }
}
