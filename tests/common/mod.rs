//! Helpers shared by the end-to-end tests: the `poolbill` binary, the fixtures, JSON.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary, without a `POOLBILL_POSTGRES` of the caller's (it would stand for a missing
/// `--store`): a test that wants PostgreSQL says so.
pub fn poolbill() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_poolbill"));
    command.env_remove("POOLBILL_POSTGRES");
    command
}

pub fn run(args: &[&str]) -> Output {
    poolbill().args(args).output().expect("poolbill runs")
}

/// `poolbill run … --format json`, which must succeed; its document.
pub fn run_json(args: &[&str]) -> Value {
    let out = run(args);
    assert!(out.status.success(), "poolbill {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json output")
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every fixture directory (one with a scenario.json), sorted.
pub fn fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("scenario.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Only the named fields of each object of an array.
pub fn pick(items: &Value, keys: &[&str]) -> Vec<Value> {
    items.as_array().expect("array").iter().map(|item| Value::Object(keys.iter().map(|k| (k.to_string(), item[*k].clone())).collect())).collect()
}

pub const BILL_FIELDS: [&str; 10] = ["resource", "account", "mode", "item", "start", "end", "list_price", "discount", "round_off", "payable"];
pub const RESOURCE_FIELDS: [&str; 4] = ["id", "state", "nodes", "expires_at"];

/// A copy of a directory tree (a store's files, as they stand).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
