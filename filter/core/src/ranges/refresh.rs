//! Guarding a refresh: a new map that drops too many of the previous map's prefixes is refused.
//!
//! The clouds add ranges every week and rarely withdraw many; a refresh that loses a large share
//! of the prefixes the filter serves today is far more likely a truncated download, a cloud left
//! out, or a wrong option than a real change, and would quietly stop steering those clients.
//! A prefix counts as removed when the new configuration no longer lists it at all (in a
//! backend's `cidrs` or in `non_routable`); one that moves to another backend is not removed.

use crate::cidr_table::parse_prefix;
use ipnet::IpNet;
use serde_json::Value;
use std::collections::BTreeSet;

/// The limit `blobsteer ranges --previous` applies unless told otherwise: at most this percent
/// of the previous configuration's prefixes may disappear in one refresh.
pub const DEFAULT_MAX_REMOVED_PERCENT: u8 = 10;

/// How much of the previous configuration a new one keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// Distinct prefixes the previous configuration lists.
    pub previous: usize,
    /// Of those, how many the new configuration no longer lists.
    pub removed: usize,
}

impl Removal {
    /// Compares two configurations (as JSON): the prefixes of `previous` that `next` lacks.
    pub fn between(previous: &Value, next: &Value) -> Result<Removal, String> {
        let before = prefixes(previous)?;
        let after = prefixes(next)?;
        Ok(Removal { previous: before.len(), removed: before.difference(&after).count() })
    }

    /// Whether more than `max_percent` percent of the previous prefixes are gone.
    pub fn exceeds(&self, max_percent: u8) -> bool {
        // removed / previous > max / 100, in integers.
        self.removed.saturating_mul(100) > self.previous.saturating_mul(usize::from(max_percent))
    }

    /// The removed share, in tenths of a percent, rounded down (`25` is 2.5%).
    pub fn per_mille(&self) -> usize {
        self.removed.saturating_mul(1000).checked_div(self.previous).unwrap_or(0)
    }

    /// The removed share, as text: `"2.5%"`.
    pub fn percent(&self) -> String {
        let per_mille = self.per_mille();
        format!("{}.{}%", per_mille / 10, per_mille % 10)
    }
}

/// Refuses `next` when it drops more than `max_percent` percent of the prefixes of `previous`
/// (named `previous_name` in the message); otherwise says how many it drops.
pub fn check_removals(
    previous_name: &str,
    previous: &Value,
    next: &Value,
    max_percent: u8,
) -> Result<Removal, String> {
    let removal = Removal::between(previous, next).map_err(|e| format!("{previous_name}: {e}"))?;
    if removal.exceeds(max_percent) {
        return Err(format!(
            "the new configuration drops {} of the {} prefixes of {previous_name} ({}), more \
             than the {max_percent}% allowed (--max-removed-percent); nothing written",
            removal.removed,
            removal.previous,
            removal.percent()
        ));
    }
    Ok(removal)
}

/// Every prefix a configuration lists, in `backends[].cidrs` and `non_routable`, normalised.
fn prefixes(config: &Value) -> Result<BTreeSet<IpNet>, String> {
    let mut found = BTreeSet::new();
    let mut add = |at: String, value: &Value| {
        value
            .as_str()
            .and_then(parse_prefix)
            .map(|prefix| found.insert(prefix.trunc()))
            .ok_or_else(|| format!("{at}: {value} is not a CIDR prefix"))
    };
    let Value::Object(_) = config else {
        return Err("the configuration is not a JSON object".into());
    };
    for (i, backend) in list(config.get("backends"), "backends")?.iter().enumerate() {
        let at = format!("backends[{i}].cidrs");
        for (j, cidr) in list(backend.get("cidrs"), &at)?.iter().enumerate() {
            add(format!("{at}[{j}]"), cidr)?;
        }
    }
    for (i, cidr) in list(config.get("non_routable"), "non_routable")?.iter().enumerate() {
        add(format!("non_routable[{i}]"), cidr)?;
    }
    Ok(found)
}

/// The items of a list that may be absent.
fn list<'a>(value: Option<&'a Value>, at: &str) -> Result<&'a [Value], String> {
    match value {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("{at} is not a list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// A configuration with `n` backend prefixes (10.0.i.0/24) and two non-routable ones.
    fn config(n: u8) -> Value {
        let cidrs: Vec<String> = (0..n).map(|i| format!("10.0.{i}.0/24")).collect();
        json!({
            "backends": [{"name": "aws-eu-west-3", "blob_url": "https://x/{digest}", "cidrs": cidrs}],
            "non_routable": ["15.193.0.0/19", "2600:9000:3000::/36"],
        })
    }

    #[test]
    fn counts_prefixes_the_new_map_no_longer_lists() {
        // 20 backend prefixes and 2 non-routable; the new one keeps 15 of the 20.
        let removal = Removal::between(&config(20), &config(15)).unwrap();
        assert_eq!(removal, Removal { previous: 22, removed: 5 });
        assert_eq!(removal.percent(), "22.7%");
        // Added prefixes are not removals; nor is a prefix that moved to another backend or to
        // non_routable, nor one written with host bits.
        assert_eq!(Removal::between(&config(15), &config(20)).unwrap().removed, 0);
        let moved = json!({
            "backends": [{"name": "aws-us-east-1", "cidrs": ["10.0.0.0/24", "10.0.1.1/24"]}],
            "non_routable": ["15.193.0.0/19", "2600:9000:3000::/36", "10.0.2.0/24"],
        });
        assert_eq!(Removal::between(&config(3), &moved).unwrap().removed, 0);
    }

    #[test]
    fn more_than_the_limit_is_refused_and_the_limit_itself_passes() {
        // 100 prefixes before (98 + 2 non-routable).
        let before = config(98);
        let ten = check_removals("old.json", &before, &config(88), 10).unwrap();
        assert_eq!(ten, Removal { previous: 100, removed: 10 });
        assert_eq!(
            check_removals("old.json", &before, &config(87), 10).unwrap_err(),
            "the new configuration drops 11 of the 100 prefixes of old.json (11.0%), more than \
             the 10% allowed (--max-removed-percent); nothing written"
        );
        assert!(check_removals("old.json", &before, &config(87), 11).is_ok());
        // 0 allows no removal at all; 100 allows everything.
        assert!(check_removals("old.json", &before, &config(97), 0).is_err());
        assert!(check_removals("old.json", &before, &json!({}), 100).is_ok());
        // An empty previous map cannot lose anything.
        assert!(check_removals("old.json", &json!({}), &json!({}), 0).is_ok());
        assert_eq!(DEFAULT_MAX_REMOVED_PERCENT, 10);
    }

    #[test]
    fn a_previous_map_that_is_not_a_configuration_is_an_error() {
        let bad = json!({"backends": [{"cidrs": ["10.0.0.0/33"]}]});
        assert_eq!(
            check_removals("old.json", &bad, &config(1), 10).unwrap_err(),
            "old.json: backends[0].cidrs[0]: \"10.0.0.0/33\" is not a CIDR prefix"
        );
        assert_eq!(
            check_removals("old.json", &json!([]), &config(1), 10).unwrap_err(),
            "old.json: the configuration is not a JSON object"
        );
        assert_eq!(
            check_removals("old.json", &json!({"non_routable": "x"}), &config(1), 10).unwrap_err(),
            "old.json: non_routable is not a list"
        );
    }
}
