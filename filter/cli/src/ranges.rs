//! `blobsteer ranges`: a filter configuration from the clouds' published IP range files.

use crate::args::{Parsed, Usage};
use blobsteer_core::ranges::refresh::{check_removals, DEFAULT_MAX_REMOVED_PERCENT};
use blobsteer_core::ranges::{
    import, providers, Claim, Cloud, FallbackTarget, ImportOptions, RegionKey,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Runs the command: the configuration on stdout, or every error on stderr and nothing on stdout.
pub fn run(argv: &[String]) -> Result<ExitCode, Usage> {
    let args = Parsed::new(
        argv,
        &[
            "aws",
            "gcp",
            "azure",
            "blob-url",
            "only",
            "exclude",
            "alias",
            "prefer",
            "base",
            "previous",
            "max-removed-percent",
            "default-backend",
            "fallbacks",
        ],
    )?;
    if !args.positional.is_empty() {
        return Err(Usage(format!("ranges takes no positional arguments: {:?}", args.positional)));
    }
    let options = options(&args)?;
    let max_removed = match args.get("max-removed-percent") {
        None => DEFAULT_MAX_REMOVED_PERCENT,
        Some(_) if args.get("previous").is_none() => {
            return Err(Usage("--max-removed-percent needs --previous CONFIG".into()));
        }
        Some(text) => text.parse().ok().filter(|p| *p <= 100).ok_or_else(|| {
            Usage(format!("--max-removed-percent {text:?} is not a whole percentage (0 to 100)"))
        })?,
    };
    let mut claims: Vec<Claim> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for cloud in Cloud::ALL {
        let Some(path) = args.get(cloud.as_str()) else {
            continue;
        };
        match std::fs::read(path) {
            Ok(bytes) => match providers::parse(cloud, path, &bytes) {
                Ok(mut found) => claims.append(&mut found),
                Err(e) => errors.push(e.to_string()),
            },
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
    if claims.is_empty() && errors.is_empty() {
        return Err(Usage("ranges needs at least one of --aws, --gcp, --azure".into()));
    }
    let base = args.get("base").and_then(|path| read_json(path, &mut errors));
    let previous = args.get("previous").map(|path| (path, read_json(path, &mut errors)));
    if errors.is_empty() {
        match import(&claims, &options, base) {
            Ok(config) => match guard(previous, &config, max_removed) {
                Ok(()) => {
                    print!("{config}");
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => errors.push(e),
            },
            Err(mut found) => errors.append(&mut found),
        }
    }
    for error in errors {
        eprintln!("blobsteer ranges: {error}");
    }
    Ok(ExitCode::FAILURE)
}

/// A JSON file, or `None` with the error recorded.
fn read_json(path: &str, errors: &mut Vec<String>) -> Option<Value> {
    let value = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}")));
    value.map_err(|e| errors.push(format!("{path}: {e}"))).ok()
}

/// With `--previous`, refuses a configuration that drops too many of its prefixes, and otherwise
/// says on stderr how many it drops.
fn guard(previous: Option<(&str, Option<Value>)>, config: &str, max: u8) -> Result<(), String> {
    let Some((path, Some(previous))) = previous else {
        return Ok(());
    };
    let next: Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
    let removal = check_removals(path, &previous, &next, max)?;
    eprintln!(
        "blobsteer ranges: {} of the {} prefixes of {path} dropped ({}; at most {max}% allowed)",
        removal.removed,
        removal.previous,
        removal.percent()
    );
    Ok(())
}

fn options(args: &Parsed) -> Result<ImportOptions, Usage> {
    let key = |text: &str| text.parse::<RegionKey>().map_err(Usage);
    let mut options = ImportOptions::default();
    for spec in args.all("blob-url", false) {
        let (cloud, template) = spec
            .split_once('=')
            .ok_or_else(|| Usage(format!("--blob-url {spec:?} is not CLOUD=TEMPLATE")))?;
        options.blob_urls.insert(cloud.parse().map_err(Usage)?, template.to_string());
    }
    let only = args.all("only", true);
    if !only.is_empty() {
        options.only = Some(only.into_iter().map(key).collect::<Result<_, _>>()?);
    }
    options.exclude = args.all("exclude", true).into_iter().map(key).collect::<Result<_, _>>()?;
    options.prefer = args.all("prefer", true).into_iter().map(key).collect::<Result<_, _>>()?;
    for spec in args.all("alias", true) {
        let (from, to) = spec
            .split_once('=')
            .ok_or_else(|| Usage(format!("--alias {spec:?} is not CLOUD:REGION=REGION")))?;
        options.aliases.insert(key(from)?, to.to_ascii_lowercase());
    }
    if let Some(spec) = args.get("default-backend") {
        let (name, url) = spec
            .split_once('=')
            .ok_or_else(|| Usage(format!("--default-backend {spec:?} is not NAME=BLOB_URL")))?;
        options.default_backend = Some((name.to_string(), url.to_string()));
    }
    if let Some(path) = args.get("fallbacks") {
        options.fallbacks =
            fallbacks(path).map_err(|e| Usage(format!("--fallbacks {path}: {e}")))?;
    }
    Ok(options)
}

/// A fallback rules file: `{"CLOUD:REGION": ["CLOUD:REGION" or "default", ...], ...}`.
fn fallbacks(path: &str) -> Result<BTreeMap<RegionKey, Vec<FallbackTarget>>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    // Keys starting with "_" are comments.
    let rules: BTreeMap<String, Value> =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a JSON object: {e}"))?;
    rules
        .into_iter()
        .filter(|(key, _)| !key.starts_with('_'))
        .map(|(key, targets)| {
            let Some(targets) = targets.as_array() else {
                return Err(format!("{key}: not a list of regions"));
            };
            let targets = targets
                .iter()
                .map(|t| match t.as_str() {
                    Some("default") => Ok(FallbackTarget::Default),
                    Some(region) => region.parse().map(FallbackTarget::Region),
                    None => Err(format!("{key}: {t} is not a region")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((key.parse()?, targets))
        })
        .collect()
}
