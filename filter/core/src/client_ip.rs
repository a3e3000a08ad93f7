//! Finding the client's address, with Envoy's own meaning of `xff_num_trusted_hops`.
//!
//! All `x-forwarded-for` lines are one list, joined in order. With `N` trusted hops the client is
//! the `(N+1)`th address from the right. Anything that is not an address means "no client IP",
//! never an error: the request then goes upstream untouched.

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How the client's address is found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientIpSettings {
    /// Proxies in front of Envoy whose entries in `x-forwarded-for` are trusted (Envoy's
    /// `xff_num_trusted_hops`): 0 takes the rightmost address.
    pub xff_num_trusted_hops: u32,
    /// Use the connection's address (`source.address`) when there is no `x-forwarded-for` at all.
    pub source_address_fallback: bool,
}

/// Where the client address came from, for operators reading a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpSource {
    /// An `x-forwarded-for` entry.
    ForwardedFor,
    /// The downstream connection's address.
    SourceAddress,
}

impl ClientIpSettings {
    /// The client address of a request: `xff_lines` are the `x-forwarded-for` header lines in the
    /// order received, `source_address` the `source.address` property (`ip:port`), consulted only
    /// when the header is absent and the fallback is on.
    pub fn client_ip(
        &self,
        xff_lines: &[&str],
        source_address: Option<&str>,
    ) -> Option<(IpAddr, ClientIpSource)> {
        if xff_lines.is_empty() {
            return match (self.source_address_fallback, source_address) {
                (true, Some(address)) => {
                    parse_address(address).map(|ip| (ip, ClientIpSource::SourceAddress))
                }
                _ => None,
            };
        }
        let wanted = usize::try_from(self.xff_num_trusted_hops).ok()?;
        let entry = xff_lines.iter().rev().flat_map(|line| line.rsplit(',')).nth(wanted)?;
        parse_address(entry).map(|ip| (ip, ClientIpSource::ForwardedFor))
    }
}

/// Parses one address as proxies write it: `v4`, `v6`, `[v6]`, `v4:port`, `[v6]:port`, with
/// surrounding whitespace. IPv4-mapped IPv6 becomes IPv4. Zone ids, hostnames, out-of-range
/// ports and empty text are rejected.
pub fn parse_address(text: &str) -> Option<IpAddr> {
    let text = text.trim_matches([' ', '\t']);
    let ip = if let Some(bracketed) = text.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']')?;
        if !after.is_empty() && !is_port(after.strip_prefix(':')?) {
            return None;
        }
        IpAddr::V6(inside.parse::<Ipv6Addr>().ok()?)
    } else if let Ok(v6) = text.parse::<Ipv6Addr>() {
        IpAddr::V6(v6)
    } else {
        let (host, port) = text.split_once(':').unwrap_or((text, ""));
        if text.contains(':') && !is_port(port) {
            return None;
        }
        IpAddr::V4(host.parse::<Ipv4Addr>().ok()?)
    };
    Some(ip.to_canonical())
}

fn is_port(text: &str) -> bool {
    (1..=5).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<u32>().is_ok_and(|port| port <= u32::from(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn settings(hops: u32) -> ClientIpSettings {
        ClientIpSettings { xff_num_trusted_hops: hops, source_address_fallback: false }
    }

    #[test]
    fn address_forms() {
        let cases = [
            ("1.2.3.4", Some("1.2.3.4")),
            (" 1.2.3.4\t", Some("1.2.3.4")),
            ("1.2.3.4:8080", Some("1.2.3.4")),
            ("1.2.3.4:65535", Some("1.2.3.4")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("::ffff:15.236.10.20", Some("15.236.10.20")),
            ("[::ffff:15.236.10.20]:1", Some("15.236.10.20")),
            ("1.2.3.4:65536", None),
            ("1.2.3.4:", None),
            ("1.2.3.4:-1", None),
            ("1.2.3.4:80:80", None),
            ("[2001:db8::1]:99999", None),
            ("[2001:db8::1]x", None),
            ("[1.2.3.4]", None),
            ("fe80::1%eth0", None),
            ("[fe80::1%25eth0]", None),
            ("01.2.3.4", None),
            ("1.2.3", None),
            ("unknown", None),
            ("", None),
            ("1.2.3.4\0", None),
            ("１.2.3.4", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_address(text), want.map(ip), "{text:?}");
        }
    }

    #[test]
    fn trusted_hops_count_from_the_right_across_lines() {
        let lines = ["198.51.100.1, 203.0.113.2", "192.0.2.3"];
        let pick = |hops| settings(hops).client_ip(&lines, None).map(|(ip, _)| ip);
        assert_eq!(pick(0), Some(ip("192.0.2.3")));
        assert_eq!(pick(1), Some(ip("203.0.113.2")));
        assert_eq!(pick(2), Some(ip("198.51.100.1")));
        assert_eq!(pick(3), None);
    }

    #[test]
    fn garbage_in_the_chosen_entry_means_no_client_ip() {
        let s = settings(0);
        assert_eq!(s.client_ip(&["1.2.3.4, garbage"], None), None);
        assert_eq!(s.client_ip(&["1.2.3.4,"], None), None);
        assert_eq!(s.client_ip(&[""], Some("1.2.3.4:5")), None);
        // Garbage further left than the trusted entry does not matter.
        assert_eq!(s.client_ip(&["garbage, 1.2.3.4"], None).map(|(ip, _)| ip), Some(ip("1.2.3.4")));
    }

    #[test]
    fn source_address_only_when_header_absent_and_enabled() {
        let off = settings(0);
        assert_eq!(off.client_ip(&[], Some("10.0.0.1:5555")), None);
        let on = ClientIpSettings { source_address_fallback: true, ..settings(0) };
        assert_eq!(
            on.client_ip(&[], Some("[2001:db8::7]:5555")),
            Some((ip("2001:db8::7"), ClientIpSource::SourceAddress))
        );
        assert_eq!(on.client_ip(&["bad"], Some("10.0.0.1:5555")), None);
    }

    #[test]
    fn ten_thousand_entries_are_fine() {
        let long = vec!["10.0.0.1"; 10_000].join(",");
        assert_eq!(
            settings(9_999).client_ip(&[&long], None).map(|(ip, _)| ip),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(settings(10_000).client_ip(&[&long], None), None);
    }
}
