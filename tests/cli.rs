//! The command line itself: help, version, option syntax, usage errors and exit codes.

mod common;

use common::{fixtures_dir, run};

/// Each subcommand with the options its help must mention.
const TOOLS: [(&str, &[&str]); 11] = [
    ("run", &["--at", "--format", "--store", "--postgres", "--export", "SCENARIO.json", "[default: table]"]),
    ("serve", &["--store", "--postgres", "--http", "--tokens"]),
    ("replay", &["--store", "--postgres", "LOG.jsonl", "--at", "--upto", "--format", "--policy", "LOG.jsonl"]),
    ("audit", &["--store", "--postgres", "LOG.jsonl", "--charged", "--format"]),
    ("explain", &["--store", "--postgres", "LOG.jsonl", "--bill", "--resource", "--at", "--format", "[default: text]"]),
    ("diff", &["--store", "--postgres", "LOG.jsonl", "--at", "--policy", "--format"]),
    ("bills", &["--store", "--postgres", "LOG.jsonl", "--month", "--format", "csv"]),
    ("timeline", &["--store", "--postgres", "LOG.jsonl", "--resource", "--svg"]),
    ("verify", &["--store", "--postgres", "LOG.jsonl"]),
    ("export", &["--store", "--postgres", "--out", "--force"]),
    ("completions", &["bash", "zsh", "fish"]),
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_subcommand_has_help_with_its_options_and_an_example() {
    for (tool, options) in TOOLS {
        for flag in ["--help", "-h"] {
            let out = run(&[tool, flag]);
            let help = text(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{tool} {flag}: {}", text(&out.stderr));
            assert!(help.contains(&format!("poolbill {tool}")), "{tool} {flag}: usage line: {help}");
            for option in options {
                assert!(help.contains(option), "{tool} {flag}: mentions {option}: {help}");
            }
            assert!(help.contains("Example:\n  ") && help.contains(&format!("poolbill {tool} ")), "{tool}: an example: {help}");
        }
        // `poolbill help TOOL` says the same.
        let out = run(&["help", tool]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(text(&out.stdout), text(&run(&[tool, "--help"]).stdout), "help {tool}");
    }
}

#[test]
fn the_top_level_help_lists_every_subcommand_and_the_exit_codes() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for (tool, _) in TOOLS {
        assert!(help.contains(&format!("\n  {tool} ")), "lists {tool}: {help}");
    }
    assert!(help.contains("Exit status: 0"), "{help}");
}

#[test]
fn version_prints_the_package_version() {
    for args in [&["--version"][..], &["-V"], &["run", "--version"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(text(&out.stdout).starts_with("poolbill"), "{args:?}: {}", text(&out.stdout));
        assert!(text(&out.stdout).trim_end().ends_with(env!("CARGO_PKG_VERSION")), "{args:?}: {}", text(&out.stdout));
    }
}

#[test]
fn an_option_takes_its_value_after_a_space_or_an_equals_sign() {
    let scenario = fixtures_dir().join("subscription-upgrade/scenario.json");
    let scenario = scenario.to_str().unwrap();
    let spaced = run(&["run", scenario, "--format", "json", "--at", "2023-04-12T00:00:00+08:00"]);
    let joined = run(&["run", scenario, "--format=json", "--at=2023-04-12T00:00:00+08:00"]);
    assert_eq!(spaced.status.code(), Some(0), "{}", text(&spaced.stderr));
    assert_eq!(joined.status.code(), Some(0), "{}", text(&joined.stderr));
    assert_eq!(spaced.stdout, joined.stdout);
    let document: serde_json::Value = serde_json::from_slice(&joined.stdout).unwrap();
    // As of 2023-04-12 the upgrade of 04-18 has not happened: one bill.
    assert_eq!(document["bills"].as_array().unwrap().len(), 1, "{document}");
}

#[test]
fn usage_errors_exit_2_naming_what_is_wrong_and_print_nothing_on_stdout() {
    let scenario = fixtures_dir().join("subscription-upgrade/scenario.json");
    let log = fixtures_dir().join("subscription-upgrade/log.jsonl");
    let (scenario, log) = (scenario.to_str().unwrap(), log.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "Usage"),
        (vec!["frobnicate"], "frobnicate"),
        (vec!["run", scenario, "--frobnicate", "1"], "--frobnicate"),
        (vec!["run"], "SCENARIO.json"),
        (vec!["run", scenario, "--format", "xml"], "xml"),
        (vec!["run", scenario, "--at", "2023-04-12"], "RFC 3339"),
        (vec!["run", scenario, "--at"], "--at"),
        (vec!["run", scenario, "--format", "json", "--format", "table"], "--format"),
        (vec!["run", scenario, scenario], "unexpected argument"),
        (vec!["serve"], "--store"),
        (vec!["replay", log, "--at", "2023-04-12T00:00:00+08:00", "--upto", "3"], "--upto"),
        (vec!["replay", log, "--upto", "three"], "three"),
        (vec!["audit", log], "--charged"),
        (vec!["explain", log], "--bill"),
        (vec!["explain", log, "--bill", "0"], "--bill"),
        (vec!["explain", log, "--resource", "pool-1"], "--at"),
        (vec!["explain", log, "--bill", "1", "--resource", "pool-1"], "--resource"),
        (vec!["diff", log], "--at"),
        (vec!["bills", log], "--month"),
        (vec!["bills", log, "--month", "2023-04", "--format", "xml"], "xml"),
        (vec!["timeline", log, "--resource", "pool-1"], "--svg"),
        (vec!["replay"], "--store"),
        (vec!["replay", log, "--store", "store/"], "--store"),
        (vec!["audit", "--charged", log], "LOG.jsonl"),
        (vec!["audit", log, "--store", "store/", "--charged", log], "--store"),
        (vec!["explain", "--store", "store/", log, "--bill", "1"], "--store"),
        (vec!["diff", "--at", "2023-04-12T00:00:00+08:00"], "--store"),
        (vec!["bills", log, "--store", "store/", "--month", "2023-04"], "--store"),
        (vec!["timeline", "--resource", "pool-1", "--svg", "x.svg"], "LOG.jsonl"),
        (vec!["export"], "--store"),
        (vec!["export", "--store", "store/", "--force"], "--out"),
        (vec!["export", "--store", "store/", log], "unexpected argument"),
        (vec!["verify"], "--store"),
        (vec!["verify", "--store", "x", log], "LOG.jsonl"),
        (vec!["completions", "cmd.exe"], "cmd.exe"),
        (vec!["run", scenario, "--store", "store/", "--postgres", "postgres://u@127.0.0.1:1/db"], "--postgres"),
        (vec!["serve", "--store", "store/", "--postgres", "postgres://u@127.0.0.1:1/db"], "--postgres"),
        (vec!["replay", log, "--postgres", "postgres://u@127.0.0.1:1/db"], "--postgres"),
        (vec!["export", "--store", "store/", "--postgres", "postgres://u@127.0.0.1:1/db"], "--postgres"),
        (vec!["verify", "--postgres", "postgres://u@127.0.0.1:1/db", log], "LOG.jsonl"),
        // Not a URL: refused before anything is opened.
        (vec!["replay", "--postgres", "postgres://u@h:notaport/db"], "--postgres"),
        (vec!["run", scenario, "--postgres", "postgres://u@h:notaport/db"], "--postgres"),
    ];
    for (args, named) in cases {
        let out = run(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(named), "{args:?}: names {named:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: stdout: {}", text(&out.stdout));
    }
}

#[test]
fn completions_are_scripts_that_name_every_subcommand() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for (tool, _) in TOOLS {
            assert!(script.contains(tool), "{shell}: completes {tool}");
        }
        assert!(script.contains("format") && script.contains("charged"), "{shell}: completes options");
    }
}

#[test]
fn diagnostics_go_to_stderr_by_verbosity_or_rust_log_never_into_the_json() {
    let scenario = fixtures_dir().join("subscription-upgrade/scenario.json");
    let scenario = scenario.to_str().unwrap();
    let with = |flags: &[&str], rust_log: Option<&str>| {
        let mut command = common::poolbill();
        command.args(["run", scenario, "--format", "json"]).args(flags).env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let out = command.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{flags:?}: {}", text(&out.stderr));
        let document: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{flags:?}: stdout is JSON: {e}"));
        assert_eq!(document["events"], 10);
        text(&out.stderr)
    };
    assert_eq!(with(&[], None), "", "quiet by default");
    assert_eq!(with(&["-q"], None), "");
    let info = with(&["-v"], None);
    assert!(info.contains("INFO") && info.contains("scenario checked") && !info.contains("DEBUG"), "{info}");
    let debug = with(&["-vv"], None);
    assert!(debug.contains("DEBUG") && debug.contains("command{id=subscription-upgrade:1 type=\"scale\""), "spans per command: {debug}");
    // Hourly settlement: an on-demand pool.
    let on_demand = fixtures_dir().join("on-demand-two-cycles/scenario.json");
    let out = common::poolbill().args(["run", on_demand.to_str().unwrap(), "--format", "json", "-vvv"]).env_remove("RUST_LOG").output().unwrap();
    let trace = text(&out.stderr);
    assert!(trace.contains("settlement{to=") && trace.contains("time-driven events"), "a span per settlement: {trace}");
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("stdout is the document alone");
    let filtered = with(&[], Some("poolbill_engine=debug"));
    assert!(filtered.contains("poolbill_engine") && !filtered.contains("scenario checked"), "RUST_LOG decides: {filtered}");
    // A replay has its span too.
    let log = fixtures_dir().join("subscription-upgrade/log.jsonl");
    let out = run(&["replay", log.to_str().unwrap(), "--format", "json", "-vv"]);
    assert!(text(&out.stderr).contains("replay{upto=All}"), "{}", text(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("stdout is the document alone");
}

const HELP_BEGIN: &str = "<!-- help:begin: generated from the binary's help by `UPDATE_README=1 cargo test --test cli readme` -->";
const HELP_END: &str = "<!-- help:end -->";

/// The README's command-line section, from the binary's own help.
fn help_section() -> String {
    let mut section = format!("{HELP_BEGIN}\n");
    let tools: Vec<&str> = TOOLS.iter().map(|(tool, _)| *tool).collect();
    for args in std::iter::once(vec!["--help"]).chain(tools.iter().map(|tool| vec![*tool, "--help"])) {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        section.push_str(&format!("\n```text\n$ poolbill {}\n{}\n```\n", args.join(" "), text(&out.stdout).trim_end()));
    }
    section.push('\n');
    section.push_str(HELP_END);
    section
}

/// The README's help blocks are the binary's help, word for word (`UPDATE_README=1` rewrites
/// them).
#[test]
fn readme_shows_the_real_help() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (Some(begin), Some(end)) = (readme.find(HELP_BEGIN), readme.find(HELP_END)) else {
        panic!("README.md has no generated help section ({HELP_BEGIN} … {HELP_END})");
    };
    let current = &readme[begin..end + HELP_END.len()];
    let wanted = help_section();
    if std::env::var("UPDATE_README").is_ok_and(|v| v == "1") {
        std::fs::write(&path, readme.replacen(current, &wanted, 1)).unwrap();
    } else {
        assert!(current == wanted, "README.md's help differs from the binary's: UPDATE_README=1 cargo test --test cli readme");
    }
}
