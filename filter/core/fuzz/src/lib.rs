//! Oracles shared by the fuzz targets: slow, obviously-correct restatements of what the core
//! promises, so a target checks properties rather than only "does not panic".

use blobsteer_core::cidr_table::Entry;
use blobsteer_core::config::Target;
use blobsteer_core::Config;
use std::net::IpAddr;

/// The entry of the longest configured prefix containing `ip`, by brute force over every entry
/// (what the flattened, indexed table must answer).
pub fn longest_match(config: &Config, ip: IpAddr) -> Option<&Entry<Target>> {
    config
        .table()
        .entries()
        .iter()
        .filter(|entry| entry.prefix.contains(&ip))
        .max_by_key(|entry| entry.prefix.prefix_len())
}

/// The part of a blob URL template before its first placeholder: every URL rendered from the
/// template starts with it.
pub fn url_prefix(template: &str) -> &str {
    template.split('{').next().unwrap_or_default()
}

/// Checks a `Location` rendered from `template` for what request data must never bring into it:
/// CR, LF, whitespace or any other control character, and a dot segment. (`..` is allowed only
/// where the operator's template itself has it: the template is trusted, the request is not.)
pub fn assert_safe_location(location: &str, template: &str) {
    assert!(
        !location.chars().any(|c| c.is_whitespace() || c.is_control()),
        "location with whitespace or a control character: {location:?}"
    );
    if !template.contains("..") {
        assert!(!location.contains(".."), "location with '..': {location:?} from {template:?}");
    }
}

/// `sha256:` + 64 lowercase hex, or `sha512:` + 128, checked by hand (not with the core's parser).
pub fn is_supported_digest(text: &str) -> bool {
    let hex = |encoded: &str, len: usize| {
        encoded.len() == len
            && encoded.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match text.split_once(':') {
        Some(("sha256", encoded)) => hex(encoded, 64),
        Some(("sha512", encoded)) => hex(encoded, 128),
        _ => false,
    }
}

/// Addresses around a prefix: its first and last address and their neighbours outside it, where
/// a flattened range table is most likely to be off by one.
pub fn boundary_addresses(prefix: ipnet::IpNet) -> Vec<IpAddr> {
    match prefix {
        ipnet::IpNet::V4(net) => {
            let (first, last) = (u32::from(net.network()), u32::from(net.broadcast()));
            [Some(first), Some(last), first.checked_sub(1), last.checked_add(1)]
                .into_iter()
                .flatten()
                .map(|n| IpAddr::V4(n.into()))
                .collect()
        }
        ipnet::IpNet::V6(net) => {
            let (first, last) = (u128::from(net.network()), u128::from(net.broadcast()));
            [Some(first), Some(last), first.checked_sub(1), last.checked_add(1)]
                .into_iter()
                .flatten()
                .map(|n| IpAddr::V6(n.into()))
                .collect()
        }
    }
}
