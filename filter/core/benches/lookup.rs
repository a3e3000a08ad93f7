//! Micro-benchmarks of the request path on the full table of every AWS, GCP and Azure region
//! (`../shared/data`): one longest-prefix lookup, one client-IP parse, one whole decision, and
//! building the table from the configuration (what each wasm VM does at load).
//!
//! `cargo bench -p blobsteer-core --bench lookup`; medians are what the README quotes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use blobsteer_core::ranges::{import, providers, Cloud, ImportOptions};
use blobsteer_core::{Config, Request};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::OnceLock;

/// Addresses per set: a power of two, so the index wraps with a mask.
const SET: usize = 4096;

fn main() {
    if full_config_json().is_none() {
        eprintln!(
            "SKIPPED: ../shared/data is absent; the full-table benchmarks need the provider files"
        );
        return;
    }
    divan::main();
}

/// The full configuration, as `blobsteer ranges` makes it from the three provider files.
fn full_config_json() -> Option<&'static String> {
    static JSON: OnceLock<Option<String>> = OnceLock::new();
    JSON.get_or_init(|| {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
        let mut claims = Vec::new();
        for (cloud, file) in [
            (Cloud::Aws, "aws-ip-ranges.json"),
            (Cloud::Gcp, "gcp-cloud.json"),
            (Cloud::Azure, "azure-service-tags.json"),
        ] {
            let bytes = std::fs::read(data.join(file)).ok()?;
            claims.extend(providers::parse(cloud, file, &bytes).unwrap());
        }
        let options = ImportOptions {
            blob_urls: Cloud::ALL
                .into_iter()
                .map(|c| {
                    (
                        c,
                        format!(
                            "https://{}-{{region}}.example/containers/images/{{digest}}",
                            c.as_str()
                        ),
                    )
                })
                .collect(),
            ..ImportOptions::default()
        };
        Some(import(&claims, &options, None).unwrap())
    })
    .as_ref()
}

fn full_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::from_json(full_config_json().unwrap().as_bytes()).unwrap())
}

/// A deterministic mix: half IPv4, half IPv6; three in four inside a configured prefix (at a
/// pseudo-random offset), one in four anywhere.
fn addresses() -> &'static [IpAddr] {
    static ADDRESSES: OnceLock<Vec<IpAddr>> = OnceLock::new();
    ADDRESSES.get_or_init(|| {
        let entries = full_config().table().entries();
        let v4: Vec<Ipv4Net> = entries
            .iter()
            .filter_map(|e| match e.prefix {
                IpNet::V4(n) => Some(n),
                _ => None,
            })
            .collect();
        let v6: Vec<Ipv6Net> = entries
            .iter()
            .filter_map(|e| match e.prefix {
                IpNet::V6(n) => Some(n),
                _ => None,
            })
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            // xorshift64: reproducible, no dependency.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..SET)
            .map(|i| {
                let inside = i % 4 != 3;
                let r = next() as usize;
                if i % 2 == 0 {
                    let (base, span) = match inside {
                        true => (
                            u32::from(v4[r % v4.len()].network()),
                            u32::MAX >> v4[r % v4.len()].prefix_len(),
                        ),
                        false => (0, u32::MAX),
                    };
                    IpAddr::V4(Ipv4Addr::from(base | (next() as u32 & span)))
                } else {
                    let (base, span) = match inside {
                        true => (
                            u128::from(v6[r % v6.len()].network()),
                            u128::MAX >> v6[r % v6.len()].prefix_len(),
                        ),
                        false => (0, u128::MAX),
                    };
                    let random = u128::from(next()) << 64 | u128::from(next());
                    IpAddr::V6(Ipv6Addr::from(base | (random & span)))
                }
            })
            .collect()
    })
}

/// One longest-prefix match on the full table.
#[divan::bench(sample_size = 256)]
fn lookup_full_table(bencher: divan::Bencher) {
    let table = full_config().table();
    let set = addresses();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) & (SET - 1);
        table.lookup(black_box(set[i]))
    });
}

/// One `x-forwarded-for` value parsed (three entries, the rightmost taken).
#[divan::bench(sample_size = 256)]
fn client_ip_from_xff(bencher: divan::Bencher) {
    let config = full_config();
    let lines: Vec<String> =
        addresses().iter().map(|a| format!("198.51.100.1, 10.0.0.1, {a}")).collect();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) & (SET - 1);
        config.client_ip.client_ip(black_box(&[lines[i].as_str()]), None)
    });
}

/// The whole request decision for a blob GET: path grammar, client IP, lookup, Location.
#[divan::bench(sample_size = 256)]
fn decide_blob_request(bencher: divan::Bencher) {
    let config = full_config();
    let lines: Vec<String> = addresses().iter().map(ToString::to_string).collect();
    let path = "/v2/demo/hello/blobs/sha256:d0852262d08fb507d7786cc9a96e1646d59476e1d849fefc8a0cc097b19a7e90";
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) & (SET - 1);
        let xff = [lines[i].as_str()];
        config.decide_request(black_box(&Request {
            method: "GET",
            path,
            forwarded_for: &xff,
            source_address: None,
        }))
    });
}

/// Parsing and validating the full configuration and building its table (natively; each wasm
/// VM does the same at load).
#[divan::bench(sample_count = 20)]
fn config_from_json_full(bencher: divan::Bencher) {
    let json = full_config_json().unwrap();
    bencher.bench_local(|| Config::from_json(black_box(json.as_bytes())).unwrap());
}
