//! Longest-prefix match over IPv4 and IPv6, built once and immutable after.
//!
//! Prefixes either nest or are disjoint, so the set flattens into sorted, non-overlapping ranges,
//! each owned by the longest prefix that covers it. A lookup is one binary search over the range
//! starts: O(log n), no allocation, and the same answer as walking a trie for the longest match.

use ipnet::IpNet;
use std::net::IpAddr;

/// One prefix of the table and what it leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    /// The prefix as configured.
    pub prefix: IpNet,
    /// What a match on this prefix means.
    pub target: T,
}

/// An immutable longest-prefix-match table over both address families.
#[derive(Debug, Clone)]
pub struct CidrTable<T> {
    entries: Vec<Entry<T>>,
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

impl<T> CidrTable<T> {
    /// Builds the table. A prefix listed twice makes the table ambiguous: the pairs of entry
    /// indexes (first, repeated) are returned instead.
    pub fn new(entries: Vec<Entry<T>>) -> Result<Self, Vec<(usize, usize)>> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let index = index_u32(index);
            match entry.prefix {
                IpNet::V4(net) => v4.push(Span {
                    start: u32::from(net.network()),
                    end: u32::from(net.broadcast()),
                    len: net.prefix_len(),
                    index,
                }),
                IpNet::V6(net) => v6.push(Span {
                    start: u128::from(net.network()),
                    end: u128::from(net.broadcast()),
                    len: net.prefix_len(),
                    index,
                }),
            }
        }
        let mut duplicates = Vec::new();
        let v4 = Ranges::flatten(v4, &mut duplicates);
        let v6 = Ranges::flatten(v6, &mut duplicates);
        if !duplicates.is_empty() {
            duplicates.sort_unstable_by_key(|&(_, repeated)| repeated);
            return Err(duplicates);
        }
        Ok(CidrTable { entries, v4, v6 })
    }

    /// The entry of the longest prefix containing `ip`, if any.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Entry<T>> {
        let index = match ip {
            IpAddr::V4(v4) => self.v4.find(u32::from(v4)),
            IpAddr::V6(v6) => self.v6.find(u128::from(v6)),
        }?;
        self.entries.get(usize::try_from(index).ok()?)
    }

    /// Every configured entry, in configuration order.
    pub fn entries(&self) -> &[Entry<T>] {
        &self.entries
    }

    /// Number of flattened ranges searched per family (IPv4, IPv6), for sizing reports.
    pub fn range_counts(&self) -> (usize, usize) {
        (self.v4.starts.len(), self.v6.starts.len())
    }
}

/// Parses `address/length` in canonical form or not (the caller checks host bits). Faster than
/// the general parser of `ipnet`, which matters when every VM parses tens of thousands.
pub fn parse_prefix(text: &str) -> Option<IpNet> {
    let (address, length) = text.split_once('/')?;
    let well_formed = (1..=3).contains(&length.len())
        && length.bytes().all(|b| b.is_ascii_digit())
        && (length == "0" || !length.starts_with('0'));
    if !well_formed {
        return None;
    }
    let length: u8 = length.parse().ok()?;
    IpNet::new(address.parse().ok()?, length).ok()
}

fn index_u32(index: usize) -> u32 {
    // A table with more than 4 billion prefixes cannot be configured in a wasm32 VM's memory.
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// An address family's integer form.
trait Bits: Copy + Ord + Default {
    fn checked_next(self) -> Option<Self>;
    fn prev(self) -> Self;
    /// The top 16 bits: the bucket of the first-level index.
    fn bucket(self) -> usize;
    /// Whether a bucket's ranges are searched through [`Ranges::fences`] rather than directly.
    const FENCED: bool;
}

impl Bits for u32 {
    fn checked_next(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn prev(self) -> Self {
        self.saturating_sub(1)
    }
    fn bucket(self) -> usize {
        (self >> 16) as usize
    }
    // IPv4 prefixes spread over thousands of /16s with a few ranges each: a plain search.
    const FENCED: bool = false;
}

impl Bits for u128 {
    fn checked_next(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn prev(self) -> Self {
        self.saturating_sub(1)
    }
    fn bucket(self) -> usize {
        (self >> 112) as usize
    }
    // IPv6 prefixes cluster in a few /16s (16 for all of AWS, GCP and Azure, thousands of
    // ranges in the largest): fenced.
    const FENCED: bool = true;
}

/// Buckets of the first-level index: one per value of the top 16 bits, plus an end marker.
const BUCKETS: usize = (1 << 16) + 1;

/// Below this many ranges a plain binary search is as fast, and the index (256 KiB) not worth it.
const INDEXED_FROM: usize = 256;

/// Ranges per block behind a fence: a fenced lookup binary-searches the fences (one start in
/// `FANOUT`: dense, so mostly cached) and then counts through one block of consecutive starts.
const FANOUT: usize = 16;

/// A prefix as an inclusive integer range.
#[derive(Debug, Clone, Copy)]
struct Span<B> {
    start: B,
    end: B,
    len: u8,
    index: u32,
}

/// Disjoint, sorted ranges: `starts[i]..=ends[i]` belongs to entry `owners[i]`.
///
/// `buckets[h]` is the first range starting at or after bucket `h` (top 16 bits), so a lookup
/// searches only the ranges that start in its own bucket, plus the one before them: a few
/// probes instead of a search over the whole table. In a fenced family the search of a bucket
/// runs over `fences` first, then through one block of at most [`FANOUT`] starts.
#[derive(Debug, Clone, Default)]
struct Ranges<B> {
    starts: Vec<B>,
    ends: Vec<B>,
    owners: Vec<u32>,
    buckets: Vec<u32>,
    /// `fences[j]` is `starts[j * FANOUT]` (empty unless [`Bits::FENCED`]).
    fences: Vec<B>,
}

impl<B: Bits> Ranges<B> {
    fn find(&self, key: B) -> Option<u32> {
        let bucket = key.bucket();
        let (low, high) = match (self.buckets.get(bucket), self.buckets.get(bucket + 1)) {
            (Some(&low), Some(&high)) => (low as usize, high as usize),
            _ => (0, self.starts.len()),
        };
        let after = if B::FENCED {
            let (low, high) = self.block(low, high, key)?;
            // At most FANOUT starts: counting them all has no data-dependent branch, and beats
            // the dependent steps of a binary search on 128-bit keys.
            low + self.starts.get(low..high)?.iter().filter(|&&start| start <= key).count()
        } else {
            low + self.starts.get(low..high)?.partition_point(|&start| start <= key)
        };
        let i = after.checked_sub(1)?;
        if *self.ends.get(i)? >= key {
            self.owners.get(i).copied()
        } else {
            None
        }
    }

    /// The block of `low..high` holding the last range that starts at or before `key`: the one
    /// after the last fence passed, or the ranges before the first fence if none was.
    fn block(&self, low: usize, high: usize, key: B) -> Option<(usize, usize)> {
        let (first, last) = (low.div_ceil(FANOUT), high.div_ceil(FANOUT));
        let passed = self.fences.get(first..last)?.partition_point(|&fence| fence <= key);
        let block_low = match passed.checked_sub(1) {
            Some(fence) => (first + fence) * FANOUT,
            None => low,
        };
        Some((block_low, high.min((first + passed) * FANOUT)))
    }

    /// Sweeps the prefixes in address order with a stack of the ones still open: the top of the
    /// stack is always the longest prefix covering the sweep position.
    /// Repeated prefixes are reported as (first, repeated) entry indexes in `duplicates`.
    fn flatten(mut spans: Vec<Span<B>>, duplicates: &mut Vec<(usize, usize)>) -> Self {
        // Broader first at equal starts; a repeated prefix sits right after its first listing.
        spans.sort_unstable_by(|a, b| {
            a.start.cmp(&b.start).then(a.len.cmp(&b.len)).then(a.index.cmp(&b.index))
        });
        let mut listed_first: Option<Span<B>> = None;
        for span in &spans {
            match listed_first {
                Some(first) if first.start == span.start && first.len == span.len => {
                    duplicates.push((first.index as usize, span.index as usize));
                }
                _ => listed_first = Some(*span),
            }
        }
        let mut out = Ranges::default();
        let mut open: Vec<Span<B>> = Vec::new();
        // Next address not yet assigned to a range; None once the sweep passed the last address.
        let mut cursor: Option<B> = None;
        for span in spans {
            while let Some(top) = open.last().copied() {
                if top.end >= span.start {
                    break;
                }
                out.emit(&mut cursor, top.end, top.index);
                open.pop();
            }
            if let Some(top) = open.last() {
                if cursor.is_some_and(|c| c < span.start) {
                    out.emit(&mut cursor, span.start.prev(), top.index);
                }
            }
            cursor = Some(span.start);
            open.push(span);
        }
        while let Some(top) = open.pop() {
            out.emit(&mut cursor, top.end, top.index);
        }
        if B::FENCED {
            out.fences = out.starts.iter().step_by(FANOUT).copied().collect();
        }
        if out.starts.len() >= INDEXED_FROM {
            out.buckets = Vec::with_capacity(BUCKETS);
            let mut next = 0;
            for bucket in 0..BUCKETS {
                while out.starts.get(next).is_some_and(|start| start.bucket() < bucket) {
                    next += 1;
                }
                out.buckets.push(index_u32(next));
            }
        }
        out
    }

    /// Assigns `cursor..=end` to `owner` (if not empty) and moves the cursor past `end`.
    fn emit(&mut self, cursor: &mut Option<B>, end: B, owner: u32) {
        if let Some(start) = *cursor {
            if start <= end {
                self.starts.push(start);
                self.ends.push(end);
                self.owners.push(owner);
            }
        }
        *cursor = end.checked_next().filter(|_| cursor.is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn table(prefixes: &[&str]) -> CidrTable<usize> {
        try_table(prefixes).unwrap()
    }

    fn try_table(prefixes: &[&str]) -> Result<CidrTable<usize>, Vec<(usize, usize)>> {
        CidrTable::new(
            prefixes
                .iter()
                .enumerate()
                .map(|(i, p)| Entry { prefix: p.parse().unwrap(), target: i })
                .collect(),
        )
    }

    fn owner(t: &CidrTable<usize>, ip: &str) -> Option<String> {
        t.lookup(ip.parse().unwrap()).map(|e| e.prefix.to_string())
    }

    #[test]
    fn longest_prefix_wins_and_gaps_fall_back_to_the_parent() {
        let t = table(&["15.193.0.0/19", "15.193.1.0/24", "15.193.1.128/25", "0.0.0.0/0"]);
        assert_eq!(owner(&t, "15.193.1.5").as_deref(), Some("15.193.1.0/24"));
        assert_eq!(owner(&t, "15.193.1.200").as_deref(), Some("15.193.1.128/25"));
        assert_eq!(owner(&t, "15.193.0.255").as_deref(), Some("15.193.0.0/19"));
        assert_eq!(owner(&t, "15.193.2.0").as_deref(), Some("15.193.0.0/19"));
        assert_eq!(owner(&t, "15.193.31.255").as_deref(), Some("15.193.0.0/19"));
        assert_eq!(owner(&t, "15.193.32.0").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(owner(&t, "255.255.255.255").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(owner(&t, "0.0.0.0").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(owner(&t, "2001:db8::1"), None);
    }

    #[test]
    fn families_are_separate_and_edges_are_exact() {
        let t = table(&[
            "10.0.0.0/8",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "ffff::/16",
            "255.255.255.255/32",
        ]);
        assert_eq!(owner(&t, "9.255.255.255"), None);
        assert_eq!(owner(&t, "10.0.0.0").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(owner(&t, "10.255.255.255").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(owner(&t, "11.0.0.0"), None);
        assert_eq!(owner(&t, "255.255.255.255").as_deref(), Some("255.255.255.255/32"));
        assert_eq!(owner(&t, "2001:db8:1:ffff::").as_deref(), Some("2001:db8:1::/48"));
        assert_eq!(owner(&t, "2001:db8:2::").as_deref(), Some("2001:db8::/32"));
        assert_eq!(
            owner(&t, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").as_deref(),
            Some("ffff::/16")
        );
        assert_eq!(owner(&t, "::").as_deref(), None);
    }

    #[test]
    fn repeated_prefixes_are_reported_not_guessed() {
        let got = try_table(&[
            "10.0.0.0/8",
            "10.0.0.0/16",
            "2001:db8::/32",
            "10.0.0.0/8",
            "2001:db8::/32",
        ]);
        assert_eq!(got.unwrap_err(), [(0, 3), (2, 4)]);
    }

    #[test]
    fn parses_prefixes_strictly() {
        for good in
            ["0.0.0.0/0", "10.0.0.0/8", "1.2.3.4/32", "2001:db8::/32", "::/0", "::ffff:1.2.3.0/120"]
        {
            assert_eq!(parse_prefix(good), Some(good.parse().unwrap()), "{good}");
        }
        assert_eq!(
            parse_prefix("10.1.2.3/8").map(|p| p.to_string()).as_deref(),
            Some("10.1.2.3/8")
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "10.0.0/8",
            "010.0.0.0/8",
            "2001:db8::/129",
            "2001:db8::/0032",
            "/8",
            "10.0.0.0/8/8",
            " 10.0.0.0/8",
            "10.0.0.0/ 8",
        ] {
            assert_eq!(parse_prefix(bad), None, "{bad}");
        }
    }

    #[test]
    fn empty_table_matches_nothing() {
        let t = table(&[]);
        assert_eq!(owner(&t, "1.2.3.4"), None);
        assert_eq!(t.range_counts(), (0, 0));
    }

    /// The flattened table agrees with a brute-force longest match on a dense nested set, large
    /// enough to be indexed.
    #[test]
    fn agrees_with_brute_force() {
        let mut prefixes = Vec::new();
        for len in [8u8, 12, 16, 17, 20, 24, 28, 32] {
            for k in 0..60u32 {
                let addr = 0x0a00_0000u32
                    | (k.wrapping_mul(0x0012_3457)
                        & !u32::MAX.checked_shr(u32::from(len)).unwrap_or(0));
                prefixes.push(format!("{}/{}", std::net::Ipv4Addr::from(addr), len));
            }
        }
        prefixes.sort();
        prefixes.dedup();
        let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let t = table(&refs);
        assert!(t.range_counts().0 >= INDEXED_FROM, "{:?}", t.range_counts());
        let nets: Vec<IpNet> = refs.iter().map(|p| p.parse().unwrap()).collect();
        let mut probes: Vec<IpAddr> =
            (0..0x1001u32).map(|i| IpAddr::V4((0x09ff_ff00 + i * 0x0fed).into())).collect();
        for net in &nets {
            if let IpNet::V4(n) = net {
                for edge in [u32::from(n.network()), u32::from(n.broadcast())] {
                    probes.extend(
                        [edge.wrapping_sub(1), edge, edge.wrapping_add(1)]
                            .map(|a| IpAddr::V4(a.into())),
                    );
                }
            }
        }
        assert_brute_force(&t, &nets, &probes);
    }

    #[test]
    fn agrees_with_brute_force_v6() {
        let t = brute_force_v6(50);
        assert!(t.range_counts().1 >= INDEXED_FROM, "{:?}", t.range_counts());
    }

    /// Small enough to go without the first-level index, large enough for several fences.
    #[test]
    fn agrees_with_brute_force_v6_unindexed() {
        let t = brute_force_v6(6);
        let ranges = t.range_counts().1;
        assert!((3 * FANOUT..INDEXED_FROM).contains(&ranges), "{ranges}");
    }

    /// `per_length` prefixes of each of several lengths, nested and disjoint, in 2600::/16;
    /// the table is checked against brute force at and around the edges of every prefix.
    fn brute_force_v6(per_length: u128) -> CidrTable<usize> {
        let mut prefixes = Vec::new();
        for len in [16u8, 20, 32, 33, 36, 48, 64, 128] {
            for k in 0..per_length {
                let addr = (0x2600u128 << 112) | (k.wrapping_mul(0x0123_4567_89ab_cdef_0011) << 40);
                let net = ipnet::Ipv6Net::new(addr.into(), len).unwrap().trunc();
                prefixes.push(net.to_string());
            }
        }
        prefixes.sort();
        prefixes.dedup();
        let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        let t = table(&refs);
        let nets: Vec<IpNet> = refs.iter().map(|p| p.parse().unwrap()).collect();
        let mut probes = Vec::new();
        for net in &nets {
            if let IpNet::V6(n) = net {
                for edge in [u128::from(n.network()), u128::from(n.broadcast())] {
                    probes.extend(
                        [edge.wrapping_sub(1), edge, edge.wrapping_add(1)]
                            .map(|a| IpAddr::V6(a.into())),
                    );
                }
            }
        }
        assert_brute_force(&t, &nets, &probes);
        t
    }

    fn assert_brute_force(t: &CidrTable<usize>, nets: &[IpNet], probes: &[IpAddr]) {
        for ip in probes {
            let want = nets.iter().filter(|n| n.contains(ip)).max_by_key(|n| n.prefix_len());
            assert_eq!(t.lookup(*ip).map(|e| e.prefix), want.copied(), "{ip}");
        }
    }
}
