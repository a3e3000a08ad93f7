//! Micro-benchmarks of the request path on the full table of every AWS, GCP and Azure region
//! (`../shared/data`): one longest-prefix lookup (blobsteer's table, and the `prefix-trie` crate
//! on the very same prefixes as a yardstick), client-IP parsing of `x-forwarded-for`, one whole
//! decision, and building the table from the configuration (what each wasm VM does at load).
//!
//! Every request pays for one client-IP parse and one lookup, so these set the filter's floor.
//! `cargo bench -p blobsteer-core --bench lookup`; medians are what the README quotes. Without
//! `../shared/data` it prints a SKIPPED line and exits 0.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use blobsteer_core::client_ip::ClientIpSettings;
use blobsteer_core::decision::decide_request;
use blobsteer_core::ranges::{import, providers, Cloud, ImportOptions};
use blobsteer_core::{Config, Request, Target};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
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
                // Host bits of the prefix; `checked_shr`, since a /32 (or /128) has none and a
                // plain shift by the width overflows (and in release wraps to all bits).
                if i % 2 == 0 {
                    let (base, span) = match inside {
                        true => (
                            u32::from(v4[r % v4.len()].network()),
                            u32::MAX.checked_shr(v4[r % v4.len()].prefix_len().into()).unwrap_or(0),
                        ),
                        false => (0, u32::MAX),
                    };
                    IpAddr::V4(Ipv4Addr::from(base | (next() as u32 & span)))
                } else {
                    let (base, span) = match inside {
                        true => (
                            u128::from(v6[r % v6.len()].network()),
                            u128::MAX
                                .checked_shr(v6[r % v6.len()].prefix_len().into())
                                .unwrap_or(0),
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

/// The same prefixes (every backend's `cidrs` and `non_routable`) in `prefix-trie` maps, one per
/// family as blobsteer's table has, each prefix leading to the same [`Target`].
struct Tries {
    v4: PrefixMap<Ipv4Net, Target>,
    v6: PrefixMap<Ipv6Net, Target>,
}

impl Tries {
    /// The longest match's target, as [`blobsteer_table`](lookup::blobsteer_table) gets it.
    #[inline]
    fn lookup(&self, ip: IpAddr) -> Option<Target> {
        match ip {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, t)| *t),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, t)| *t),
        }
    }
}

/// The `prefix-trie` maps, checked (once, before any timing) to give blobsteer's answer for
/// every address of the set and at both edges of every prefix, so the comparison is honest.
fn tries() -> &'static Tries {
    static TRIES: OnceLock<Tries> = OnceLock::new();
    TRIES.get_or_init(|| {
        let table = full_config().table();
        let mut tries = Tries { v4: PrefixMap::new(), v6: PrefixMap::new() };
        for entry in table.entries() {
            let previous = match entry.prefix {
                IpNet::V4(net) => tries.v4.insert(net, entry.target),
                IpNet::V6(net) => tries.v6.insert(net, entry.target),
            };
            assert!(previous.is_none(), "{} listed twice", entry.prefix);
        }
        let mut probes = addresses().to_vec();
        for entry in table.entries() {
            for edge in [entry.prefix.network(), entry.prefix.broadcast()] {
                probes.push(edge);
                probes.extend(match edge {
                    IpAddr::V4(a) => {
                        let a = u32::from(a);
                        [a.wrapping_sub(1), a.wrapping_add(1)].map(|a| IpAddr::V4(a.into()))
                    }
                    IpAddr::V6(a) => {
                        let a = u128::from(a);
                        [a.wrapping_sub(1), a.wrapping_add(1)].map(|a| IpAddr::V6(a.into()))
                    }
                });
            }
        }
        let mut matched = 0;
        for &ip in &probes {
            let ours = table.lookup(ip).map(|e| e.target);
            assert_eq!(ours, tries.lookup(ip), "blobsteer and prefix-trie disagree on {ip}");
            matched += usize::from(ours.is_some());
        }
        assert!(matched > probes.len() / 2, "too few probes match: {matched}/{}", probes.len());
        tries
    })
}

/// The addresses of one family of the set (`ipv4`, `ipv6`), or all of them (`mixed`): a power
/// of two in length either way, half the set per family.
fn family(name: &str) -> Vec<IpAddr> {
    let keep = |ip: &IpAddr| match name {
        "ipv4" => ip.is_ipv4(),
        "ipv6" => ip.is_ipv6(),
        _ => true,
    };
    let set: Vec<IpAddr> = addresses().iter().copied().filter(keep).collect();
    assert!(set.len().is_power_of_two(), "{name}: {}", set.len());
    set
}

/// One longest-prefix match on the full table, address to target (backend index or
/// non-routable): blobsteer's table, then `prefix-trie` on the same prefixes and addresses.
/// `mixed` is the request path's figure; `ipv4` and `ipv6` show each family alone.
#[divan::bench_group(sample_size = 256)]
mod lookup {
    use super::*;

    const FAMILIES: [&str; 3] = ["mixed", "ipv4", "ipv6"];

    #[divan::bench(args = FAMILIES)]
    fn blobsteer_table(bencher: divan::Bencher, family: &str) {
        tries(); // Same answers checked before timing, whichever bench runs first.
        let table = full_config().table();
        let set = super::family(family);
        let mask = set.len() - 1;
        let mut i = 0;
        bencher.bench_local(|| {
            i = (i + 1) & mask;
            table.lookup(black_box(set[i])).map(|e| e.target)
        });
    }

    #[divan::bench(args = FAMILIES)]
    fn prefix_trie(bencher: divan::Bencher, family: &str) {
        let tries = tries();
        let set = super::family(family);
        let mask = set.len() - 1;
        let mut i = 0;
        bencher.bench_local(|| {
            i = (i + 1) & mask;
            tries.lookup(black_box(set[i]))
        });
    }
}

/// One `x-forwarded-for` value to the client address, through the filter's own function.
#[divan::bench_group(sample_size = 256)]
mod client_ip_from_xff {
    use super::*;

    /// Three entries, the rightmost taken, over the whole address set (half IPv6).
    #[divan::bench]
    fn mixed_set(bencher: divan::Bencher) {
        let config = full_config();
        let lines: Vec<String> =
            addresses().iter().map(|a| format!("198.51.100.1, 10.0.0.1, {a}")).collect();
        let mut i = 0;
        bencher.bench_local(|| {
            i = (i + 1) & (SET - 1);
            config.client_ip.client_ip(black_box(&[lines[i].as_str()]), None)
        });
    }

    /// Realistic header shapes: a lone IPv4 or IPv6 client, and a client behind two trusted
    /// proxies (`xff_num_trusted_hops: 2`, the third entry from the right).
    #[divan::bench(args = ["ipv4", "ipv6", "chain3_trusted2"])]
    fn shape(bencher: divan::Bencher, shape: &str) {
        let (value, hops, want) = match shape {
            "ipv4" => ("203.0.113.195", 0, "203.0.113.195"),
            "ipv6" => {
                ("2001:db8:85a3:8d3:1319:8a2e:370:7348", 0, "2001:db8:85a3:8d3:1319:8a2e:370:7348")
            }
            _ => ("198.51.100.17, 10.12.0.3, 172.16.4.20", 2, "198.51.100.17"),
        };
        let settings =
            ClientIpSettings { xff_num_trusted_hops: hops, source_address_fallback: false };
        let got = settings.client_ip(&[value], None).map(|(ip, _)| ip);
        assert_eq!(got, Some(want.parse().unwrap()), "{shape}");
        bencher.bench_local(|| settings.client_ip(black_box(&[value]), None));
    }
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
        decide_request(
            config,
            black_box(&Request {
                method: "GET",
                path,
                forwarded_for: &xff,
                source_address: None,
                user_agent: None,
                has_body: false,
            }),
        )
    });
}

/// Parsing and validating the full configuration and building its table (natively; each wasm
/// VM does the same at load).
#[divan::bench(sample_count = 20)]
fn config_from_json_full(bencher: divan::Bencher) {
    let json = full_config_json().unwrap();
    bencher.bench_local(|| Config::from_json(black_box(json.as_bytes())).unwrap());
}

/// A blob decision for a client whose backend is checked, with a fallback chain of `len`
/// checked backends: the chain's URLs and checks are built with every such decision, used or
/// not (the cost a chain adds to each request; `0` is the same backend without one).
#[divan::bench(args = [0, 4], sample_size = 256)]
fn decide_checked_blob_request(bencher: divan::Bencher, len: usize) {
    let chain: Vec<String> = (0..len).map(|i| format!("\"fb{i}\"")).collect();
    let fallbacks: String = (0..4)
        .map(|i| {
            format!(
                r#", {{"name": "fb{i}", "blob_url": "https://fb{i}.example/{{repository}}/{{digest}}", "cidrs": [], "cluster": "m{i}"}}"#
            )
        })
        .collect();
    let json = format!(
        r#"{{"backends": [{{"name": "eu", "blob_url": "https://eu.example/{{digest}}",
            "cidrs": ["15.236.0.0/15"], "cluster": "m_eu", "fallback": [{}]}}{fallbacks}]}}"#,
        chain.join(", ")
    );
    let config = Config::from_json(json.as_bytes()).unwrap();
    let path = "/v2/demo/hello/blobs/sha256:d0852262d08fb507d7786cc9a96e1646d59476e1d849fefc8a0cc097b19a7e90";
    let request = Request {
        method: "GET",
        path,
        forwarded_for: &["15.236.10.20"],
        source_address: None,
        user_agent: None,
        has_body: false,
    };
    assert_eq!(decide_request(&config, &request).fallbacks.backends().count(), len);
    bencher.bench_local(|| decide_request(&config, black_box(&request)));
}
