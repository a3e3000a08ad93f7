//! `blobsteer ranges`: a filter configuration from the clouds' published IP range files.

use crate::args::{Parsed, Usage};
use blobsteer_core::ranges::{import, providers, Claim, Cloud, ImportOptions, RegionKey};
use std::process::ExitCode;

/// Runs the command: the configuration on stdout, or every error on stderr and nothing on stdout.
pub fn run(argv: &[String]) -> Result<ExitCode, Usage> {
    let args = Parsed::new(
        argv,
        &["aws", "gcp", "azure", "blob-url", "only", "exclude", "alias", "prefer", "base"],
    )?;
    if !args.positional.is_empty() {
        return Err(Usage(format!("ranges takes no positional arguments: {:?}", args.positional)));
    }
    let options = options(&args)?;
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
    let base = match args.get("base") {
        None => None,
        Some(path) => match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}")))
        {
            Ok(value) => Some(value),
            Err(e) => {
                errors.push(format!("{path}: {e}"));
                None
            }
        },
    };
    if errors.is_empty() {
        match import(&claims, &options, base) {
            Ok(config) => {
                print!("{config}");
                return Ok(ExitCode::SUCCESS);
            }
            Err(mut found) => errors.append(&mut found),
        }
    }
    for error in errors {
        eprintln!("blobsteer ranges: {error}");
    }
    Ok(ExitCode::FAILURE)
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
    Ok(options)
}
