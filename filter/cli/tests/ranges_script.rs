//! `scripts/ranges` (`make ranges`), run as a refresh job runs it: with the CLI built by cargo,
//! the small fixtures of `testdata/ranges`, and a temporary `RANGES_OUT`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{root, testdata};

/// A fresh directory for one test: `RANGES_OUT` lives in `out/`, and `data/` is an empty
/// stand-in for `../shared/data`, so no real provider file is picked up by default.
struct Job {
    dir: PathBuf,
}

impl Job {
    fn new(name: &str) -> Job {
        let dir = std::env::temp_dir()
            .join(format!("blobsteer-ranges-script-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        Job { dir }
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out/filter-config.json")
    }

    /// Runs the script with `vars` on top of an environment holding none of its variables.
    fn run(&self, vars: &[(&str, &str)]) -> Output {
        let mut command = Command::new(root().join("scripts/ranges"));
        for (name, _) in std::env::vars() {
            if name.starts_with("RANGES_") || name.starts_with("BLOB_URL_") {
                command.env_remove(name);
            }
        }
        command
            .env("RANGES_CLI", env!("CARGO_BIN_EXE_blobsteer"))
            .env("RANGES_DATA", self.dir.join("data"))
            .env("RANGES_OUT", self.out())
            .env("BLOB_URL_AWS", "https://aws-{region}.example/containers/images/{digest}")
            .env("BLOB_URL_GCP", "https://gcp-{region}.example/containers/images/{digest}")
            .env("BLOB_URL_AZURE", "https://azure-{region}.example/containers/images/{digest}");
        command.envs(vars.iter().copied()).output().unwrap()
    }

    /// The files of `out/`, sorted.
    fn out_files(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("out")) else {
            return Vec::new();
        };
        let mut names: Vec<String> =
            entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str) -> String {
    testdata(&format!("ranges/{name}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn all_three() -> [(&'static str, String); 3] {
    [
        ("RANGES_AWS", fixture("aws.json")),
        ("RANGES_GCP", fixture("gcp.json")),
        ("RANGES_AZURE", fixture("azure.json")),
    ]
}

fn vars<'a>(list: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    list.iter().map(|(name, value)| (*name, value.as_str())).collect()
}

#[test]
fn a_file_named_explicitly_that_is_not_there_fails_the_run_in_one_line() {
    let job = Job::new("explicit");
    let nope = job.dir.join("nope.json").display().to_string();
    let [_, gcp, azure] = all_three();
    let out = job.run(&vars(&[("RANGES_AWS", nope.clone()), gcp, azure]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("ranges: RANGES_AWS={nope}: no such file\n"));
    assert_eq!(job.out_files(), Vec::<String>::new(), "nothing written");
    // Set but empty (a job's `RANGES_AWS=$UNSET`) is no file either, not "use the default".
    let out = job.run(&[("RANGES_AWS", "")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "ranges: RANGES_AWS is set but empty\n");
    // A directory is not a file.
    let dir = job.dir.join("data").display().to_string();
    let out = job.run(&[("RANGES_GCP", &dir)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), format!("ranges: RANGES_GCP={dir}: not a file\n"));
}

#[test]
fn only_an_absent_default_file_is_skipped_and_it_says_so() {
    let job = Job::new("defaults");
    let aws = fixture("aws.json");
    let out = job.run(&[("RANGES_AWS", &aws)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let data = job.dir.join("data").display().to_string();
    let err = stderr(&out);
    for (cloud, file, var) in [
        ("gcp", "gcp-cloud.json", "RANGES_GCP"),
        ("azure", "azure-service-tags.json", "RANGES_AZURE"),
    ] {
        let want = format!(
            "ranges: no {cloud} file at the default {data}/{file}: {cloud} skipped (set {var} to read one)\n"
        );
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    let config = std::fs::read_to_string(job.out()).unwrap();
    assert!(config.contains("\"aws-eu-west-3\""));
    assert!(!config.contains("gcp-") && !config.contains("azure-"));
}

#[test]
fn a_refresh_that_drops_too_many_prefixes_fails_and_keeps_the_output() {
    let job = Job::new("removals");
    let first = job.run(&vars(&all_three()));
    assert!(first.status.success(), "{}", stderr(&first));
    let before = std::fs::read(job.out()).unwrap();
    // The same files again: nothing dropped, the run passes.
    let again = job.run(&vars(&all_three()));
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(std::fs::read(job.out()).unwrap(), before);

    // GCP and Azure left out (their defaults are absent): 5 of the 12 prefixes gone.
    let aws = fixture("aws.json");
    let cut = job.run(&[("RANGES_AWS", &aws)]);
    assert_eq!(cut.status.code(), Some(1), "{}", stderr(&cut));
    let out = job.out().display().to_string();
    let err = stderr(&cut);
    assert!(
        err.contains(&format!(
            "blobsteer ranges: the new configuration drops 5 of the 12 prefixes of {out} (41.6%), \
             more than the 10% allowed"
        )),
        "{err}"
    );
    assert!(
        err.ends_with(&format!(
            "ranges: nothing written, {out} is as it was (RANGES_MAX_REMOVED_PERCENT=10 limits \
             the prefixes a run may drop; RANGES_ACCEPT_REMOVALS=1 accepts any)\n"
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(job.out()).unwrap(), before, "the output is not replaced");
    assert_eq!(job.out_files(), ["filter-config.json", "filter-config.json.prev"]);

    // A bad limit is one line, before anything runs.
    let bad = job.run(&[("RANGES_AWS", &aws), ("RANGES_MAX_REMOVED_PERCENT", "ten")]);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        stderr(&bad),
        "ranges: RANGES_MAX_REMOVED_PERCENT=ten is not a whole percentage (0 to 100)\n"
    );
    // A higher limit lets it through.
    let raised = job.run(&[("RANGES_AWS", &aws), ("RANGES_MAX_REMOVED_PERCENT", "50")]);
    assert!(raised.status.success(), "{}", stderr(&raised));
    assert_ne!(std::fs::read(job.out()).unwrap(), before);
    assert_eq!(std::fs::read(job.dir.join("out/filter-config.json.prev")).unwrap(), before);

    // And so does the explicit override, whatever the share.
    let restored = job.run(&vars(&all_three()));
    assert!(restored.status.success(), "{}", stderr(&restored));
    let accepted = job.run(&[("RANGES_AWS", &aws), ("RANGES_ACCEPT_REMOVALS", "1")]);
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    assert!(stderr(&accepted).contains("RANGES_ACCEPT_REMOVALS=1"));
    assert!(Path::new(&job.out()).is_file());
}

#[test]
fn with_ranges_ecds_the_map_is_also_installed_as_the_filters_ecds_resource() {
    let job = Job::new("ecds");
    let target = job.dir.join("live/blobsteer.json");
    let aws = fixture("aws.json");
    let ecds = target.display().to_string();
    let out = job.run(&[
        ("RANGES_AWS", &aws),
        ("RANGES_ECDS", &ecds),
        ("RANGES_WASM", "/opt/blobsteer.wasm"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let resource: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&target).unwrap()).unwrap();
    let config = &resource["resources"][0]["typed_config"]["config"];
    assert_eq!(config["configuration"]["value"], std::fs::read_to_string(job.out()).unwrap());
    assert_eq!(config["vm_config"]["code"]["local"]["filename"], "/opt/blobsteer.wasm");
    assert_eq!(resource["resources"][0]["name"], "blobsteer");
    let left: Vec<_> = std::fs::read_dir(job.dir.join("live")).unwrap().collect();
    assert_eq!(left.len(), 1, "only the resource, no temporary file");
}
