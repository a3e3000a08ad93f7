//! `blobsteer rewrite`: the bytes the filter sends for a tag request from a client of a backend.

use crate::args::{Parsed, Usage};
use blobsteer_core::manifest::{rewrite_for_backend, sha256_digest, Child, DEFAULT_MAX_BYTES};
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

/// Runs the command: the bytes on stdout, `sha256:<hex> rewritten` or
/// `sha256:<hex> unchanged: <reason>` on stderr.
pub fn run(argv: &[String]) -> Result<ExitCode, Usage> {
    let args = Parsed::new(
        argv,
        &["config", "backend", "content-type", "repository", "children", "max-bytes"],
    )?;
    let [input] = args.positional.as_slice() else {
        return Err(Usage("rewrite takes one FILE (or - for stdin)".into()));
    };
    let config_path =
        args.get("config").ok_or_else(|| Usage("rewrite needs --config CONFIG".into()))?;
    let name = args.get("backend").ok_or_else(|| Usage("rewrite needs --backend NAME".into()))?;
    let max_bytes = match args.get("max-bytes") {
        Some(text) => {
            text.parse().map_err(|_| Usage(format!("--max-bytes {text:?} is not a number")))?
        }
        None => DEFAULT_MAX_BYTES,
    };
    let config = match crate::load_config(config_path) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let Some(backend) = config.backends().iter().find(|b| b.name == name) else {
        eprintln!("blobsteer rewrite: no backend {name:?} in {config_path}");
        return Ok(ExitCode::FAILURE);
    };
    let children = args.get("children").map(Path::new);
    // A directory that is not there would make every index "unchanged: child_unavailable".
    if let Some(dir) = children {
        let problem = match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => None,
            Ok(_) => Some("not a directory".to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(problem) = problem {
            eprintln!("blobsteer rewrite: --children {}: {problem}", dir.display());
            return Ok(ExitCode::FAILURE);
        }
    }
    let bytes = match read_input(input) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("blobsteer rewrite: {input}: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // A child is read from an OCI layout's blobs directory: <dir>/<algorithm>/<hex>.
    let child = |digest: &str| {
        let (algorithm, hex) = digest.split_once(':')?;
        let bytes = std::fs::read(children?.join(algorithm).join(hex)).ok()?;
        Some(Child { bytes, content_type: None })
    };
    let repository = args.get("repository").unwrap_or("library/sample");
    // The CLI has no existence cache: every blob may be advertised.
    let result = rewrite_for_backend(
        &backend.blob_url,
        repository,
        &bytes,
        args.get("content-type"),
        None,
        max_bytes,
        child,
        |_| true,
    );
    let (out, status) = match &result {
        Ok(rewritten) => (rewritten.bytes.as_slice(), format!("{} rewritten", rewritten.digest)),
        Err(reason) => {
            (bytes.as_slice(), format!("{} unchanged: {}", sha256_digest(&bytes), reason.as_str()))
        }
    };
    if let Err(e) = std::io::stdout().lock().write_all(out) {
        eprintln!("blobsteer rewrite: writing stdout: {e}");
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("{status}");
    Ok(ExitCode::SUCCESS)
}

fn read_input(input: &str) -> std::io::Result<Vec<u8>> {
    if input == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().lock().read_to_end(&mut bytes)?;
        Ok(bytes)
    } else {
        std::fs::read(input)
    }
}
