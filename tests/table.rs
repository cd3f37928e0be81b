//! `--format table` through the binary: `run`, `replay LOG.jsonl` and `replay --store DIR` print
//! the same table, and its rows are the JSON document's, aligned in columns.

mod common;

use common::*;
use serde_json::Value;

fn stdout_of(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The rows of a section (its header first), up to the blank line that ends it.
fn section<'a>(table: &'a str, title: &str) -> Vec<&'a str> {
    let start = table.find(&format!("{title}\n")).unwrap_or_else(|| panic!("no {title} in\n{table}")) + title.len() + 1;
    table[start..].lines().take_while(|line| !line.is_empty()).collect()
}

/// Where each cell of a row starts (in characters): cells are two or more spaces apart (the
/// fixtures' cells hold no spaces).
fn starts(row: &str) -> Vec<usize> {
    let chars: Vec<char> = row.chars().collect();
    (2..chars.len()).filter(|&i| chars[i] != ' ' && chars[i - 1] == ' ').collect()
}

#[test]
fn run_and_replay_print_the_documents_rows_in_aligned_columns() {
    let mut checked_rejections = false;
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let out = tempfile::tempdir().unwrap();
        let store = out.path().join("store");
        let (scenario, store) = (dir.join("scenario.json"), store.to_str().unwrap());
        let table = stdout_of(&["run", scenario.to_str().unwrap(), "--store", store]);
        // Run again on its store: its commands are there already, so this is the same log.
        let doc = run_json(&["run", scenario.to_str().unwrap(), "--store", store, "--format", "json"]);
        let log = out.path().join("log.jsonl");
        stdout_of(&["export", "--store", store, "--out", log.to_str().unwrap()]);
        assert_eq!(stdout_of(&["replay", "--store", store]), table, "{name}: replay --store");
        assert_eq!(stdout_of(&["replay", log.to_str().unwrap()]), table, "{name}: replay LOG.jsonl");

        let bills = doc["bills"].as_array().unwrap();
        let rows = section(&table, "BILLS (flow)");
        let fields = ["start", "end", "resource", "account", "mode", "item", "list_price", "discount", "round_off", "payable"];
        if bills.is_empty() {
            assert_eq!(rows, ["  (none)"], "{name}");
        } else {
            assert_eq!(rows.len(), bills.len() + 1, "{name}: a header and a row per bill");
            let columns = starts(rows[0]);
            for (i, (row, bill)) in rows[1..].iter().zip(bills).enumerate() {
                let mut expected = vec![(i + 1).to_string()];
                expected.extend(fields.iter().map(|f| bill[f].as_str().unwrap().to_string()));
                assert_eq!(row.split_whitespace().collect::<Vec<_>>(), expected, "{name}: bill {}", i + 1);
                assert_eq!(starts(row), columns, "{name}: bill {} is aligned with the header", i + 1);
            }
        }
        let rejections = doc["rejections"].as_array().unwrap();
        assert_eq!(table.contains("\nREJECTIONS\n"), !rejections.is_empty(), "{name}: a rejections section only with rejections");
        if !rejections.is_empty() {
            assert_eq!(section(&table, "REJECTIONS").len(), rejections.len() + 1, "{name}: a header and a row per rejection");
            checked_rejections = true;
        }
        assert_eq!(section(&table, "RESOURCES").len(), doc["resources"].as_array().unwrap().len() + 1, "{name}: resources");
        assert!(table.ends_with(&format!("\n\n{} events\n", doc["events"])), "{name}: the count of events ends it");
    }
    assert!(checked_rejections, "some fixture has rejections");
}

#[test]
fn as_of_an_instant_run_and_replay_print_the_same_table() {
    let dir = fixtures_dir().join("arrears-grace-frozen-recovery");
    let out = tempfile::tempdir().unwrap();
    let store = out.path().join("store");
    let (scenario, store) = (dir.join("scenario.json"), store.to_str().unwrap());
    let whole = stdout_of(&["run", scenario.to_str().unwrap(), "--store", store]);
    let at = "2023-04-18T20:00:00+08:00";
    let then = stdout_of(&["run", scenario.to_str().unwrap(), "--store", store, "--at", at]);
    assert_ne!(then, whole, "fewer bills then");
    assert_eq!(stdout_of(&["replay", "--store", store, "--at", at]), then);
    let doc: Value = run_json(&["replay", "--store", store, "--at", at, "--format", "json"]);
    assert_eq!(section(&then, "BILLS (flow)").len(), doc["bills"].as_array().unwrap().len() + 1);
}
