//! `blobsteer`: check a filter configuration and explain its decisions, with the filter's own code.

mod args;
mod explain;
mod ranges;
mod rewrite;

use blobsteer_core::Config;
use std::process::ExitCode;

/// Each command's usage, in the order `--help` lists them.
const COMMANDS: [(&str, &str); 4] = [
    (
        "check",
        "  blobsteer check CONFIG
      validate a filter configuration; prints a summary, or every error with its field
",
    ),
    (
        "explain",
        "  blobsteer explain --config CONFIG [--method M] [--path P] [--source ADDR]
                    [--user-agent AGENT] [XFF... | -]
      print, one JSON object per x-forwarded-for value, what the filter does with the request
      (XFF '-' reads one value per line from stdin; no XFF means the header is absent)
",
    ),
    (
        "ranges",
        "  blobsteer ranges [--aws FILE] [--gcp FILE] [--azure FILE] --blob-url CLOUD=TEMPLATE...
                   [--only CLOUD:REGION,...] [--exclude CLOUD:REGION,...]
                   [--alias CLOUD:REGION=REGION...] [--prefer CLOUD:REGION...] [--base CONFIG]
                   [--previous CONFIG [--max-removed-percent N]]
                   [--default-backend NAME=BLOB_URL] [--fallbacks RULES.json]
      write a filter configuration with one backend per region of the providers' range files
      ({region} in a template is the region; AWS GLOBAL and GCP global are non-routable);
      with --previous, refuse one that drops more than N% (default 10) of its prefixes;
      --default-backend adds the backend of clients no prefix covers; --fallbacks gives
      regions their fallback chains (a JSON object: CLOUD:REGION -> [CLOUD:REGION or default])
",
    ),
    (
        "rewrite",
        "  blobsteer rewrite --config CONFIG --backend NAME [--content-type TYPE] [--repository NAME]
                    [--children OCI_BLOBS_DIR] [--max-bytes N] FILE|-
      write the manifest a client of that backend gets for a tag request (the original bytes
      where it is left untouched); on stderr, `sha256:<hex> rewritten` or `... unchanged: <why>`
",
    ),
];

/// The usage of `command`, or of every command.
fn usage(command: Option<&str>) -> String {
    let sections = COMMANDS.iter().filter(|(name, _)| command.map_or(true, |c| c == *name));
    std::iter::once("usage:\n").chain(sections.map(|(_, text)| *text)).collect()
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let command = argv.first().map(String::as_str);
    let rest = argv.get(1..).unwrap_or_default();
    if let Some(name) = command.filter(|c| COMMANDS.iter().any(|(n, _)| n == c)) {
        if args::wants_help(rest) {
            print!("{}", usage(Some(name)));
            return ExitCode::SUCCESS;
        }
    }
    let result = match command {
        Some("check") => check(rest),
        Some("explain") => explain::run(rest),
        Some("ranges") => ranges::run(rest),
        Some("rewrite") => rewrite::run(rest),
        Some("-h" | "--help" | "help") => {
            print!("{}", usage(None));
            Ok(ExitCode::SUCCESS)
        }
        Some("-V" | "--version") => {
            println!("blobsteer {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(args::Usage("expected a command: check, explain, ranges or rewrite".into())),
    };
    match result {
        Ok(code) => code,
        Err(args::Usage(message)) => {
            let command = command.filter(|c| COMMANDS.iter().any(|(n, _)| n == c));
            eprintln!("blobsteer: {message}\n{}", usage(command));
            ExitCode::from(2)
        }
    }
}

/// Reads and validates a configuration file, printing every error with its field.
pub(crate) fn load_config(path: &str) -> Result<Config, ExitCode> {
    let bytes = std::fs::read(path).map_err(|e| {
        eprintln!("blobsteer: cannot read {path}: {e}");
        ExitCode::FAILURE
    })?;
    Config::from_json(&bytes).map_err(|errors| {
        for error in &errors.0 {
            eprintln!("{path}: {error}");
        }
        ExitCode::FAILURE
    })
}

fn check(argv: &[String]) -> Result<ExitCode, args::Usage> {
    let [path] = argv else {
        return Err(args::Usage("check takes exactly one CONFIG".into()));
    };
    Ok(match load_config(path) {
        Ok(config) => {
            println!("{path}: ok: {}", config.summary());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    })
}
