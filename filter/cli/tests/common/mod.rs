//! Running the `blobsteer` binary as a user does, for the CLI's tests.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file under `testdata/`.
pub fn testdata(path: &str) -> String {
    root().join("testdata").join(path).display().to_string()
}

/// Runs `blobsteer` with `args`, `stdin` written from another thread (explain streams its
/// output while reading, so a large input must not block on a full pipe).
pub fn blobsteer(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_blobsteer"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    // A command that fails early exits without reading its input: a broken pipe is fine here.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

/// A directory of this test's own (per process and thread), created if need be.
pub fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "blobsteer-cli-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
