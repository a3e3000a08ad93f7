//! `x-forwarded-for` and the source address: `ClientIpSettings::client_ip` and `parse_address`.
//!
//! Input layout (readable, so seeds can be written by hand):
//! - byte 0: `xff_num_trusted_hops` as `(byte - b'0') % 17`, so `'0'`..`'9'` mean 0..9;
//! - byte 1: flags as `byte - b'0'`: bit 0 `source_address_fallback`, bit 1 "no `source.address`";
//! - the rest, as (lossy) UTF-8, split on `\n`: the first line is the `source.address` property,
//!   every further line one `x-forwarded-for` header line (none at all: the header is absent).
//!
//! Properties:
//! - never panics;
//! - the entry chosen is the `(N+1)`th from the right of all lines joined in order, and the
//!   source address is used only when the header is absent and the fallback is on;
//! - an address found prints (`to_string`) to text that `parse_address` reads back as the same
//!   address, also in the `[v6]:port` / `v4:port` forms proxies write;
//! - results are canonical: never an IPv4-mapped IPv6 address;
//! - an accepted entry holds only address characters (no hostname, zone id, NUL...).

#![no_main]

use blobsteer_core::client_ip::{parse_address, ClientIpSettings, ClientIpSource};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    let [hops, flags, rest @ ..] = data else { return };
    let hops = hops.wrapping_sub(b'0') % 17;
    let flags = flags.wrapping_sub(b'0');
    let settings = ClientIpSettings {
        xff_num_trusted_hops: u32::from(hops),
        source_address_fallback: flags & 1 != 0,
    };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let source = lines.next().filter(|_| flags & 2 == 0);
    let xff: Vec<&str> = lines.collect();

    let got = settings.client_ip(&xff, source);

    // The same choice, stated the slow way: all entries left to right, count from the right.
    let entries: Vec<&str> = xff.iter().flat_map(|line| line.split(',')).collect();
    let chosen = entries.len().checked_sub(1 + usize::from(hops)).and_then(|i| entries.get(i));
    let expected = if xff.is_empty() {
        match (settings.source_address_fallback, source) {
            (true, Some(address)) => {
                parse_address(address).map(|ip| (ip, ClientIpSource::SourceAddress))
            }
            _ => None,
        }
    } else {
        chosen.and_then(|entry| parse_address(entry)).map(|ip| (ip, ClientIpSource::ForwardedFor))
    };
    assert_eq!(got, expected, "xff {xff:?}, source {source:?}, hops {hops}");

    let Some((ip, from)) = got else { return };
    check_address(ip);
    let entry = match from {
        ClientIpSource::ForwardedFor => chosen.copied(),
        ClientIpSource::SourceAddress => source,
    };
    if let Some(entry) = entry {
        assert!(
            entry.chars().all(|c| c.is_ascii_hexdigit() || ".:[] \t".contains(c)),
            "{entry:?} was accepted as the address {ip}"
        );
    }
});

fn check_address(ip: IpAddr) {
    if let IpAddr::V6(v6) = ip {
        assert!(v6.to_ipv4_mapped().is_none(), "IPv4-mapped result {ip} (not canonical)");
    }
    let text = ip.to_string();
    assert_eq!(parse_address(&text), Some(ip), "{ip} does not read back from {text:?}");
    let with_port = match ip {
        IpAddr::V4(v4) => format!(" {v4}:65535\t"),
        IpAddr::V6(v6) => format!("\t[{v6}]:1 "),
    };
    assert_eq!(parse_address(&with_port), Some(ip), "{ip} does not read back from {with_port:?}");
}
