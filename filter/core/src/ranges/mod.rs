//! Filter configurations made from the clouds' published IP ranges (`blobsteer ranges`).
//!
//! One backend per region, named `<cloud>-<region>`; AWS `GLOBAL` and GCP `global` become
//! non-routable, and so do regions the operator excludes, so a broader prefix of another region
//! cannot capture their clients. The same prefix listed once per service collapses to one entry;
//! a prefix that two regions claim with different outcomes is an error unless one is preferred.
//! The output is deterministic, so a weekly refresh is a reviewable diff, and [`refresh`] refuses
//! one that drops too much of the previous map.

pub mod providers;
pub mod refresh;

use crate::config::Config;
use crate::url_template::{braced, TemplateError, UrlTemplate, PLACEHOLDERS};
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A cloud whose range file blobsteer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cloud {
    /// Amazon Web Services, `ip-ranges.json`.
    Aws,
    /// Google Cloud, `cloud.json`.
    Gcp,
    /// Microsoft Azure, Service Tags (`AzureCloud.<region>`).
    Azure,
}

impl Cloud {
    /// Every cloud, in output order.
    pub const ALL: [Cloud; 3] = [Cloud::Aws, Cloud::Gcp, Cloud::Azure];

    /// The cloud's name in backend names and command-line options.
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Gcp => "gcp",
            Cloud::Azure => "azure",
        }
    }

    /// The label the provider uses for ranges that belong to no region.
    fn non_routable_label(self) -> Option<&'static str> {
        match self {
            Cloud::Aws | Cloud::Gcp => Some("global"),
            Cloud::Azure => None,
        }
    }
}

impl FromStr for Cloud {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Cloud::ALL
            .into_iter()
            .find(|c| c.as_str() == text.to_ascii_lowercase())
            .ok_or_else(|| format!("{text:?} is not a cloud (aws, gcp, azure)"))
    }
}

/// `cloud:region`, lower case: how options name a region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionKey {
    /// The cloud.
    pub cloud: Cloud,
    /// The region as published, lower-cased (`eu-west-3`, `global`, `eastus`).
    pub region: String,
}

impl RegionKey {
    /// A key, lower-casing the region.
    pub fn new(cloud: Cloud, region: &str) -> Self {
        RegionKey { cloud, region: region.to_ascii_lowercase() }
    }
}

impl FromStr for RegionKey {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (cloud, region) =
            text.split_once(':').ok_or_else(|| format!("{text:?} is not CLOUD:REGION"))?;
        if region.is_empty() {
            return Err(format!("{text:?} has an empty region"));
        }
        Ok(RegionKey::new(cloud.parse()?, region))
    }
}

impl fmt::Display for RegionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.cloud.as_str(), self.region)
    }
}

/// One row of a provider file: this prefix belongs to this region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The cloud.
    pub cloud: Cloud,
    /// The region, lower-cased.
    pub region: String,
    /// The prefix.
    pub prefix: IpNet,
}

impl Claim {
    /// A claim, lower-casing the region.
    pub fn new(cloud: Cloud, region: &str, prefix: IpNet) -> Self {
        Claim { cloud, region: region.to_ascii_lowercase(), prefix }
    }

    fn key(&self) -> RegionKey {
        RegionKey { cloud: self.cloud, region: self.region.clone() }
    }
}

/// What the operator asked for, beyond the files.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Per cloud, the blob URL template; `{region}` is replaced by the (aliased) region.
    pub blob_urls: BTreeMap<Cloud, String>,
    /// When set, only these regions get backends; every other region is non-routable.
    pub only: Option<BTreeSet<RegionKey>>,
    /// Regions that get no backend and stay non-routable.
    pub exclude: BTreeSet<RegionKey>,
    /// Regions whose clients go to another region's backend of the same cloud.
    pub aliases: BTreeMap<RegionKey, String>,
    /// Regions that win when several claim the very same prefix.
    pub prefer: BTreeSet<RegionKey>,
    /// A backend (name, blob URL) for clients no prefix covers: the `default_backend`.
    pub default_backend: Option<(String, String)>,
    /// Per region with a backend, the backends its clients fall back to, in order.
    pub fallbacks: BTreeMap<RegionKey, Vec<FallbackTarget>>,
}

/// A fallback rule's target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum FallbackTarget {
    /// The backend of a region (after aliasing).
    Region(RegionKey),
    /// The default backend.
    Default,
}

/// Where the clients of a prefix go.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// The backend of this cloud and (aliased) region.
    Backend(Cloud, String),
    NonRoutable,
}

/// Builds a complete filter configuration from provider claims: `base` (another config, as JSON)
/// keeps every setting but `backends` and `non_routable`. The result is validated exactly as
/// the filter validates it, and pretty-printed JSON with sorted keys, one prefix per line.
pub fn import(
    claims: &[Claim],
    options: &ImportOptions,
    base: Option<Value>,
) -> Result<String, Vec<String>> {
    let mut errors = check_options(claims, options);
    // A bad template is said once, not once per backend made from it.
    let mut bad_templates = BTreeSet::new();
    for (cloud, template) in &options.blob_urls {
        if let Err(e) = check_template(*cloud, template) {
            errors.push(e);
            bad_templates.insert(*cloud);
        }
    }
    let mut outcomes: BTreeMap<IpNet, BTreeMap<Outcome, BTreeSet<RegionKey>>> = BTreeMap::new();
    for claim in claims {
        outcomes
            .entry(claim.prefix)
            .or_default()
            .entry(outcome(claim, options))
            .or_default()
            .insert(claim.key());
    }
    let mut backends: BTreeMap<(Cloud, String), Vec<IpNet>> = BTreeMap::new();
    let mut non_routable = Vec::new();
    for (prefix, candidates) in outcomes {
        let chosen = if candidates.len() == 1 {
            candidates.into_keys().next()
        } else {
            let preferred: Vec<&Outcome> = candidates
                .iter()
                .filter(|(_, keys)| keys.iter().any(|k| options.prefer.contains(k)))
                .map(|(outcome, _)| outcome)
                .collect();
            match preferred.as_slice() {
                [one] => Some((*one).clone()),
                _ => {
                    let claimants: Vec<String> =
                        candidates.values().flatten().map(ToString::to_string).collect();
                    errors.push(format!(
                        "{prefix} is claimed by {}; choose with --prefer CLOUD:REGION",
                        claimants.join(" and ")
                    ));
                    None
                }
            }
        };
        match chosen {
            Some(Outcome::Backend(cloud, region)) => {
                backends.entry((cloud, region)).or_default().push(prefix)
            }
            Some(Outcome::NonRoutable) => non_routable.push(prefix),
            None => {}
        }
    }
    let mut config = match base {
        Some(Value::Object(map)) => map,
        Some(_) => {
            errors.push("--base: the configuration is not a JSON object".into());
            Map::new()
        }
        None => Map::new(),
    };
    let mut backend_values = Vec::with_capacity(backends.len());
    for ((cloud, region), cidrs) in backends {
        let Some(template) = options.blob_urls.get(&cloud) else {
            errors.push(format!(
                "{} ranges were given without --blob-url {}=TEMPLATE",
                cloud.as_str(),
                cloud.as_str()
            ));
            continue;
        };
        if bad_templates.contains(&cloud) {
            continue;
        }
        backend_values.push(json!({
            "name": format!("{}-{region}", cloud.as_str()),
            "blob_url": template.replace("{region}", &region),
            "cidrs": cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }));
    }
    let made: BTreeSet<String> =
        backend_values.iter().filter_map(|b| b["name"].as_str().map(str::to_string)).collect();
    for value in &mut backend_values {
        let name = value["name"].as_str().unwrap_or_default().to_string();
        let Some((key, targets)) = options.fallbacks.iter().find(|(k, _)| backend_name(k) == name)
        else {
            continue;
        };
        let mut chain = Vec::new();
        for target in targets {
            match fallback_name(target, options) {
                Ok(next) if made.contains(&next) || Some(&next) == default_name(options) => {
                    chain.push(next)
                }
                Ok(next) => errors.push(format!("--fallbacks {key}: {next} is not a backend made")),
                Err(why) => errors.push(format!("--fallbacks {key}: {why}")),
            }
        }
        value["fallback"] = json!(chain);
    }
    for key in options.fallbacks.keys() {
        if !made.contains(&backend_name(key)) {
            errors.push(format!(
                "--fallbacks {key}: no backend of its own (a typo, or aliased or kept out)"
            ));
        }
    }
    if let Some((name, url)) = &options.default_backend {
        match UrlTemplate::parse(url) {
            Ok(_) => {
                backend_values.push(json!({"name": name, "blob_url": url, "cidrs": []}));
                config.insert("default_backend".into(), json!(name));
            }
            Err(e) => errors.push(format!("--default-backend {name}: {url:?} {e}")),
        }
    }
    if !errors.is_empty() {
        errors.dedup();
        return Err(errors);
    }
    config.insert("backends".into(), Value::Array(backend_values));
    config.insert("non_routable".into(), non_routable.iter().map(ToString::to_string).collect());
    let text = serde_json::to_string_pretty(&Value::Object(config))
        .map_err(|e| vec![e.to_string()])?
        + "\n";
    Config::from_json(text.as_bytes()).map_err(|e| {
        e.0.iter()
            .map(|e| format!("the generated configuration is invalid: {e}"))
            .collect::<Vec<_>>()
    })?;
    Ok(text)
}

/// The name of the backend `key` gets.
fn backend_name(key: &RegionKey) -> String {
    format!("{}-{}", key.cloud.as_str(), key.region)
}

fn default_name(options: &ImportOptions) -> Option<&String> {
    options.default_backend.as_ref().map(|(name, _)| name)
}

/// The backend a fallback target names (a region's, after aliasing; or the default).
fn fallback_name(target: &FallbackTarget, options: &ImportOptions) -> Result<String, String> {
    match target {
        FallbackTarget::Default => default_name(options)
            .cloned()
            .ok_or_else(|| "\"default\" needs --default-backend".into()),
        FallbackTarget::Region(key) => {
            let region = options.aliases.get(key).cloned().unwrap_or_else(|| key.region.clone());
            Ok(backend_name(&RegionKey::new(key.cloud, &region)))
        }
    }
}

fn outcome(claim: &Claim, options: &ImportOptions) -> Outcome {
    let key = claim.key();
    if is_non_routable(&key) || is_excluded(&key, options) {
        return Outcome::NonRoutable;
    }
    let region = options.aliases.get(&key).cloned().unwrap_or(key.region);
    Outcome::Backend(claim.cloud, region)
}

/// The provider's own label for ranges of no region (AWS `GLOBAL`, GCP `global`).
fn is_non_routable(key: &RegionKey) -> bool {
    key.cloud.non_routable_label() == Some(key.region.as_str())
}

/// Kept out of the backends by `--exclude` or `--only`.
fn is_excluded(key: &RegionKey, options: &ImportOptions) -> bool {
    options.exclude.contains(key) || options.only.as_ref().is_some_and(|only| !only.contains(key))
}

/// `{region}`: filled in by [`import`], before the filter sees the template.
const REGION: &str = "region";

/// Checks a `--blob-url` template as the filter will, with `{region}` filled in.
fn check_template(cloud: Cloud, template: &str) -> Result<(), String> {
    // Region names are letters, digits and '-': any one of them stands for all.
    let filled = template.replace(&format!("{{{REGION}}}"), REGION);
    UrlTemplate::parse(&filled).map(|_| ()).map_err(|e| {
        let why = match e {
            TemplateError::UnknownPlaceholder(name) => {
                let mut known = vec![REGION];
                known.extend(PLACEHOLDERS);
                format!("unknown placeholder {{{name}}} (known: {})", braced(&known))
            }
            other => format!("{template:?} {other}"),
        };
        format!("--blob-url {}: {why}", cloud.as_str())
    })
}

/// Options that name a region no file has are typos: refuse them.
fn check_options(claims: &[Claim], options: &ImportOptions) -> Vec<String> {
    let known: BTreeSet<RegionKey> = claims.iter().map(Claim::key).collect();
    let mut errors = Vec::new();
    let mut check = |option: &str, key: &RegionKey| {
        if !known.contains(key) {
            errors.push(format!("{option} {key}: no such region in the files given"));
        }
    };
    options.only.iter().flatten().for_each(|k| check("--only", k));
    options.exclude.iter().for_each(|k| check("--exclude", k));
    options.prefer.iter().for_each(|k| check("--prefer", k));
    options.aliases.keys().for_each(|k| check("--alias", k));
    for (key, target) in &options.aliases {
        if target.is_empty()
            || !target.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errors.push(format!("--alias {key}={target}: the target must be a region name"));
            continue;
        }
        // The target's clients keep their own backend, so the aliased ones share a bucket that
        // exists: a target with no backend of its own would be a bucket nobody made.
        let to = RegionKey::new(key.cloud, target);
        let why = if !known.contains(&to) {
            Some(format!("no such region {to} in the files given"))
        } else if is_non_routable(&to) {
            Some(format!("{to} is non-routable, it has no backend"))
        } else if is_excluded(&to, options) {
            Some(format!("{to} is kept out by --exclude or --only, it has no backend"))
        } else {
            options
                .aliases
                .get(&to)
                .filter(|next| **next != to.region)
                .map(|next| format!("{to} is itself aliased to {next}, it has no backend"))
        };
        if let Some(why) = why {
            errors.push(format!("--alias {key}={target}: {why}"));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn claim(cloud: Cloud, region: &str, prefix: &str) -> Claim {
        Claim::new(cloud, region, prefix.parse().unwrap())
    }

    fn claims() -> Vec<Claim> {
        vec![
            claim(Cloud::Aws, "GLOBAL", "15.193.0.0/19"),
            claim(Cloud::Aws, "ap-northeast-1", "15.193.1.0/24"),
            claim(Cloud::Aws, "eu-west-3", "15.236.0.0/15"),
            claim(Cloud::Aws, "eu-west-3", "15.236.0.0/15"), // once per service
            claim(Cloud::Aws, "eu-west-3", "2a05:d012::/36"),
            claim(Cloud::Aws, "cn-north-1", "52.80.0.0/16"),
            claim(Cloud::Gcp, "global", "34.1.0.0/20"),
            claim(Cloud::Gcp, "europe-north1", "34.88.0.0/16"),
            claim(Cloud::Azure, "eastus", "20.42.0.0/17"),
        ]
    }

    fn options() -> ImportOptions {
        ImportOptions {
            blob_urls: Cloud::ALL
                .into_iter()
                .map(|c| (c, format!("https://{}-{{region}}.example/{{digest}}", c.as_str())))
                .collect(),
            ..ImportOptions::default()
        }
    }

    fn run(claims: &[Claim], options: &ImportOptions) -> Value {
        serde_json::from_str(&import(claims, options, None).unwrap()).unwrap()
    }

    fn names(config: &Value) -> Vec<&str> {
        config["backends"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect()
    }

    #[test]
    fn one_backend_per_region_and_global_is_non_routable() {
        let config = run(&claims(), &options());
        assert_eq!(
            names(&config),
            [
                "aws-ap-northeast-1",
                "aws-cn-north-1",
                "aws-eu-west-3",
                "gcp-europe-north1",
                "azure-eastus"
            ]
        );
        assert_eq!(config["backends"][2]["cidrs"], json!(["15.236.0.0/15", "2a05:d012::/36"]));
        assert_eq!(config["backends"][2]["blob_url"], "https://aws-eu-west-3.example/{digest}");
        assert_eq!(config["non_routable"], json!(["15.193.0.0/19", "34.1.0.0/20"]));
    }

    #[test]
    fn output_is_deterministic_whatever_the_input_order() {
        let mut reversed = claims();
        reversed.reverse();
        assert_eq!(import(&claims(), &options(), None), import(&reversed, &options(), None));
    }

    #[test]
    fn only_exclude_and_alias() {
        let mut o = options();
        o.exclude.insert("aws:eu-west-3".parse().unwrap());
        o.aliases.insert("aws:cn-north-1".parse().unwrap(), "ap-northeast-1".into());
        let config = run(&claims(), &o);
        assert_eq!(names(&config), ["aws-ap-northeast-1", "gcp-europe-north1", "azure-eastus"]);
        assert_eq!(config["backends"][0]["cidrs"], json!(["15.193.1.0/24", "52.80.0.0/16"]));
        assert_eq!(
            config["non_routable"],
            json!(["15.193.0.0/19", "15.236.0.0/15", "34.1.0.0/20", "2a05:d012::/36"])
        );
        let mut only = options();
        only.only = Some(["gcp:europe-north1".parse().unwrap()].into());
        let config = run(&claims(), &only);
        assert_eq!(names(&config), ["gcp-europe-north1"]);
        assert_eq!(config["non_routable"].as_array().unwrap().len(), 7);
    }

    #[test]
    fn a_prefix_claimed_twice_needs_a_preference() {
        let mut both = claims();
        both.push(claim(Cloud::Azure, "westeurope", "15.236.0.0/15"));
        let errors = import(&both, &options(), None).unwrap_err();
        assert_eq!(
            errors,
            ["15.236.0.0/15 is claimed by aws:eu-west-3 and azure:westeurope; choose with --prefer CLOUD:REGION"]
        );
        let mut o = options();
        o.prefer.insert("azure:westeurope".parse().unwrap());
        let config = run(&both, &o);
        let azure = config["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "azure-westeurope")
            .unwrap();
        assert_eq!(azure["cidrs"], json!(["15.236.0.0/15"]));
        // Two regions aliased to one backend do not conflict: their clients go to the same place.
        let mut same = claims();
        same.push(claim(Cloud::Aws, "cn-north-1", "15.193.1.0/24"));
        let mut o = options();
        o.aliases.insert("aws:cn-north-1".parse().unwrap(), "ap-northeast-1".into());
        assert!(import(&same, &o, None).is_ok());
    }

    #[test]
    fn base_keeps_every_other_setting() {
        let base = json!({"blobs": {"mode": "verify_upstream"}, "decision_header": "x-d", "backends": [], "non_routable": ["1.0.0.0/8"]});
        let config: Value =
            serde_json::from_str(&import(&claims(), &options(), Some(base)).unwrap()).unwrap();
        assert_eq!(config["blobs"]["mode"], "verify_upstream");
        assert_eq!(config["decision_header"], "x-d");
        assert_eq!(names(&config).len(), 5);
    }

    #[test]
    fn an_alias_target_must_be_a_mapped_region_of_the_files() {
        let errors_for = |target: &str, extra: &dyn Fn(&mut ImportOptions)| {
            let mut o = options();
            o.aliases.insert("aws:cn-north-1".parse().unwrap(), target.into());
            extra(&mut o);
            import(&claims(), &o, None).unwrap_err()
        };
        // A region no file has would get a backend for a bucket that does not exist.
        assert_eq!(
            errors_for("ap-east-9", &|_| {}),
            ["--alias aws:cn-north-1=ap-east-9: no such region aws:ap-east-9 in the files given"]
        );
        // Another cloud's region is not this cloud's: the backend would be aws-europe-north1.
        assert_eq!(
            errors_for("europe-north1", &|_| {}),
            ["--alias aws:cn-north-1=europe-north1: no such region aws:europe-north1 in the files given"]
        );
        assert_eq!(
            errors_for("global", &|_| {}),
            ["--alias aws:cn-north-1=global: aws:global is non-routable, it has no backend"]
        );
        assert_eq!(
            errors_for("eu-west-3", &|o| {
                o.exclude.insert("aws:eu-west-3".parse().unwrap());
            }),
            ["--alias aws:cn-north-1=eu-west-3: aws:eu-west-3 is kept out by --exclude or --only, it has no backend"]
        );
        assert_eq!(
            errors_for("eu-west-3", &|o| {
                o.aliases.insert("aws:eu-west-3".parse().unwrap(), "ap-northeast-1".into());
            }),
            ["--alias aws:cn-north-1=eu-west-3: aws:eu-west-3 is itself aliased to ap-northeast-1, it has no backend"]
        );
        // The target is compared in lower case, as the files' regions are.
        let mut o = options();
        o.aliases.insert("aws:cn-north-1".parse().unwrap(), "ap-northeast-1".into());
        assert!(import(&claims(), &o, None).is_ok());
    }

    #[test]
    fn a_bad_template_is_one_error_naming_the_option_not_one_per_backend() {
        let mut o = options();
        o.blob_urls.insert(Cloud::Aws, "https://b-{regoin}.s3.amazonaws.com/{digest}".into());
        assert_eq!(
            import(&claims(), &o, None).unwrap_err(),
            ["--blob-url aws: unknown placeholder {regoin} (known: {region}, {digest}, {algorithm}, {encoded}, {repository})"]
        );
        let mut o = options();
        o.blob_urls.insert(Cloud::Aws, "https://b-{region}.example/{encoded}".into());
        o.blob_urls.insert(Cloud::Gcp, "gs://{region}/{digest}".into());
        assert_eq!(
            import(&claims(), &o, None).unwrap_err(),
            [
                "--blob-url aws: \"https://b-{region}.example/{encoded}\" must contain {digest}",
                "--blob-url gcp: \"gs://{region}/{digest}\" must start with http:// or https:// and a host",
            ]
        );
        // {region} in the host is what the templates are for.
        let mut o = options();
        o.blob_urls
            .insert(Cloud::Aws, "https://b-{region}.s3.{region}.amazonaws.com/{digest}".into());
        assert!(import(&claims(), &o, None).is_ok());
    }

    #[test]
    fn typos_and_missing_templates_are_errors() {
        let mut o = options();
        o.exclude.insert("aws:eu-west-33".parse().unwrap());
        o.aliases.insert("aws:cn-north-1".parse().unwrap(), "ap north".into());
        o.blob_urls.remove(&Cloud::Azure);
        assert_eq!(
            import(&claims(), &o, None).unwrap_err(),
            [
                "--exclude aws:eu-west-33: no such region in the files given",
                "--alias aws:cn-north-1=ap north: the target must be a region name",
                "azure ranges were given without --blob-url azure=TEMPLATE",
            ]
        );
        let mut bad = options();
        bad.blob_urls.insert(Cloud::Gcp, "gs://{region}/{digest}".into());
        assert_eq!(
            import(&claims(), &bad, None).unwrap_err(),
            ["--blob-url gcp: \"gs://{region}/{digest}\" must start with http:// or https:// and a host"]
        );
        assert_eq!("aws".parse::<Cloud>(), Ok(Cloud::Aws));
        assert!("aws".parse::<RegionKey>().is_err());
    }
}
