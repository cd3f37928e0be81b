//! `poolbill serve` pipelines its input: lines are read while earlier ones are in flight, the
//! engine decides them in input order, each is answered in input order once its events are on
//! disk, and commands in flight together share group commits (one flush for many).

mod common;

use common::poolbill;
use poolbill_domain::Event;
use poolbill_replay::{replay, Upto};
use poolbill_store::EventStore;
use poolbill_store_sled::SledStore;
use poolbill_testkit::{d, t};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::Stdio;

/// The top-ups sent, over three accounts.
const TOP_UPS: usize = 2000;
const ACCOUNTS: [(&str, &str); 3] = [("a", "100.00"), ("b", "0.00"), ("c", "5.50")];

/// What a line must be answered with.
#[derive(Debug)]
enum Expect {
    /// A new command, accepted; a top-up credits `account` with `amount`.
    Accepted {
        id: String,
        credit: Option<(String, Decimal)>,
    },
    /// A new command, refused under `rule` (recorded, no effect).
    Rejected {
        id: String,
        rule: &'static str,
    },
    /// The same id as line `first` (1-based): its first answer again, nothing appended.
    Duplicate {
        id: String,
        first: usize,
    },
    /// Not a command: an error naming this text, nothing written.
    Error {
        id: Option<String>,
        names: &'static str,
    },
    Advanced,
}

fn instant(seconds: i64) -> String {
    (t("2023-04-01T00:00:00+08:00") + chrono::Duration::seconds(seconds)).to_rfc3339()
}

/// The input lines (blank lines counted in the numbering), and what each answer must be.
#[derive(Default)]
struct Input {
    lines: Vec<String>,
    expect: Vec<Option<Expect>>,
}

impl Input {
    fn push(&mut self, line: Value, e: Expect) {
        self.raw(line.to_string(), Some(e));
    }

    fn raw(&mut self, text: String, e: Option<Expect>) {
        self.lines.push(text);
        self.expect.push(e);
    }
}

fn input() -> Input {
    let mut input = Input::default();
    for (account, balance) in ACCOUNTS {
        input.push(
            json!({"id": format!("open-{account}"), "at": instant(0), "type": "open_account", "account": account, "balance": balance}),
            Expect::Accepted { id: format!("open-{account}"), credit: None },
        );
    }
    for k in 0..TOP_UPS {
        let id = format!("t{k}");
        let account = ACCOUNTS[k % ACCOUNTS.len()].0;
        let amount = format!("{}.{:02}", 1 + k % 7, k % 100);
        let at = instant(1 + k as i64);
        input.push(
            json!({"id": id, "at": at, "type": "top_up", "account": account, "amount": amount}),
            Expect::Accepted { id: id.clone(), credit: Some((account.to_string(), d(&amount))) },
        );
        match k {
            // An instant before the log's last one: refused under R1, recorded.
            400 => input.push(
                json!({"id": "late", "at": instant(-3600), "type": "top_up", "account": "a", "amount": "9.00"}),
                Expect::Rejected { id: "late".into(), rule: "R1" },
            ),
            // An account nobody opened: refused under R12, recorded.
            700 => input.push(
                json!({"id": "nobody", "at": at, "type": "top_up", "account": "nobody", "amount": "9.00"}),
                Expect::Rejected { id: "nobody".into(), rule: "R12" },
            ),
            // Not JSON at all, then a command without its amount: errors in their places.
            900 => {
                input.raw(r#"{"id": "broken", "type": "top_up", "#.to_string(), Some(Expect::Error { id: None, names: "not valid JSON" }));
                input.push(
                    json!({"id": "no-amount", "at": at, "type": "top_up", "account": "a"}),
                    Expect::Error { id: Some("no-amount".into()), names: "amount" },
                );
            }
            // A blank line is skipped (no answer, but it is counted).
            1000 => input.raw(String::new(), None),
            // The clock passes an instant between commands (nothing falls due for accounts).
            1100 => input.push(json!({"type": "advance", "at": at}), Expect::Advanced),
            // A retry of a command long done (3 openings, then t0 … t4, then t5).
            1500 => input.push(
                json!({"id": "t5", "at": instant(6), "type": "top_up", "account": "c", "amount": "6.05"}),
                Expect::Duplicate { id: "t5".into(), first: 3 + 5 + 1 },
            ),
            _ => {}
        }
    }
    // A retry sent right behind its original, most likely in the same group commit.
    let last = input.lines.len();
    let original: Value = serde_json::from_str(&input.lines[last - 1]).unwrap();
    input.push(original, Expect::Duplicate { id: format!("t{}", TOP_UPS - 1), first: last });
    input
}

/// `poolbill serve --store STORE` fed `input` in one write (closing stdin then ends it once
/// everything is answered), with `RUST_LOG` set when given.
fn serve(store: &std::path::Path, input: Vec<u8>, log: Option<&str>) -> std::process::Output {
    let mut command = poolbill();
    command.args(["serve", "--store", store.to_str().unwrap()]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(filter) = log {
        command.env("RUST_LOG", filter);
    }
    let mut child = command.spawn().expect("poolbill serve starts");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().expect("serve reads all of its input");
    out
}

#[test]
fn piped_commands_are_answered_in_order_once_durable_and_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    let Input { lines, expect } = input();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();

    // Each group commit's store write and flush is a debug event of the store.
    let out = serve(&store_path, text.into_bytes(), Some("poolbill_store_sled=debug"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "serve exits 0 once stdin closes: {:?}\n{stderr}", out.status);

    // One answer per non-blank line, in input order.
    let answers: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    let numbers: Vec<u64> = expect.iter().enumerate().filter(|(_, e)| e.is_some()).map(|(i, _)| i as u64 + 1).collect();
    assert_eq!(answers.iter().map(|a| a["line"].as_u64().unwrap()).collect::<Vec<_>>(), numbers, "one answer per line, in order");

    let mut by_line: HashMap<u64, &Value> = HashMap::new();
    let mut balances: BTreeMap<String, Decimal> = ACCOUNTS.iter().map(|(a, b)| (a.to_string(), d(b))).collect();
    let mut new_ids = Vec::new();
    let mut last_position = 0;
    for (answer, number) in answers.iter().zip(&numbers) {
        by_line.insert(*number, answer);
        let e = expect[*number as usize - 1].as_ref().unwrap();
        let first = answer["first_position"].as_u64();
        match e {
            Expect::Accepted { id, .. } | Expect::Rejected { id, .. } => {
                let status = if matches!(e, Expect::Accepted { .. }) { "accepted" } else { "rejected" };
                assert_eq!(
                    (answer["id"].as_str(), answer["status"].as_str(), &answer["duplicate"]),
                    (Some(id.as_str()), Some(status), &json!(false)),
                    "line {number}: {answer}"
                );
                if let Expect::Rejected { rule, .. } = e {
                    assert_eq!(answer["rule"], *rule, "line {number}: {answer}");
                }
                // Decided in input order: each new command's events follow the previous one's.
                let (first, last) = (first.unwrap(), answer["last_position"].as_u64().unwrap());
                assert!(last_position < first && first <= last, "line {number}: positions {first}..{last} after {last_position}");
                last_position = last;
                new_ids.push(id.clone());
                if let Expect::Accepted { credit: Some((account, amount)), .. } = e {
                    *balances.get_mut(account).unwrap() += amount;
                }
            }
            Expect::Duplicate { id, first: original } => {
                let before = by_line[&(*original as u64)];
                assert_eq!((answer["id"].as_str(), &answer["duplicate"]), (Some(id.as_str()), &json!(true)), "line {number}: {answer}");
                for field in ["status", "first_position", "last_position"] {
                    assert_eq!(answer[field], before[field], "line {number}: {field} of the retry of line {original}");
                }
            }
            Expect::Error { id, names } => {
                let error = answer["error"].as_str().unwrap_or_else(|| panic!("line {number}: {answer}"));
                assert!(error.contains(names), "line {number}: {error:?} names {names:?}");
                assert_eq!(answer["id"].as_str(), id.as_deref(), "line {number}: {answer}");
            }
            Expect::Advanced => assert_eq!(answer["events"], 0, "line {number}: {answer}"),
        }
    }

    // Everything answered is on disk: reopen the store.
    let store = SledStore::open(&store_path).unwrap();
    store.verify().unwrap();
    let projections = replay(&store, Upto::All).unwrap();
    for (account, balance) in &balances {
        assert_eq!(projections.state.accounts[account.as_str()].balance, *balance, "account {account}: opening + accepted top-ups");
    }
    // Every command once, in input order; the malformed ones not at all.
    let mut received = Vec::new();
    for envelope in store.read_all(1) {
        let envelope = envelope.unwrap();
        match poolbill_projections::event_of(&envelope).unwrap() {
            Event::CommandReceived { .. } => received.push(envelope.command_id.clone().expect("a command's id")),
            Event::AccountOpened { .. } | Event::ToppedUp { .. } | Event::CommandRejected { .. } => {}
            other => panic!("unexpected event at {}: {other:?}", envelope.position),
        }
    }
    assert_eq!(received, new_ids, "each command recorded once, in input order");
    for id in ["broken", "no-amount"] {
        assert!(store.command(id).unwrap().is_none(), "{id} changed nothing");
    }

    // Group commit: each new command is one append, and the appends went to disk in far fewer
    // flushes than commands (one a line would be {} flushes).
    let commits: Vec<u64> = stderr
        .lines()
        .filter(|l| l.contains("chain appended and flushed"))
        .map(|l| {
            let n = l.split("requests=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("{l}"));
            n.parse().unwrap_or_else(|e| panic!("{l}: {e}"))
        })
        .collect();
    assert_eq!(commits.iter().sum::<u64>(), new_ids.len() as u64, "every append is in a logged group commit:\n{stderr}");
    assert!(
        commits.len() * 10 <= new_ids.len(),
        "{} commands took {} flushes (batch sizes {commits:?}): lines are not sharing group commits",
        new_ids.len(),
        commits.len()
    );
}

/// A line that is not UTF-8 is answered with an error in its place, and serve goes on with the
/// lines after it (it used to stop reading there, silently, and exit 0).
#[test]
fn a_line_that_is_not_utf8_is_answered_in_its_place_and_serve_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    let mut input = Vec::new();
    let open = json!({"id": "open", "at": instant(0), "type": "open_account", "account": "a", "balance": "1.00"});
    let top_up = json!({"id": "top-up", "at": instant(1), "type": "top_up", "account": "a", "amount": "2.00"});
    input.extend(format!("{open}\r\n").as_bytes());
    input.extend(b"{\"id\": \"x\xff\"}\n");
    input.extend(format!("{top_up}").as_bytes()); // the last line without its newline
    let out = serve(&store_path, input, None);
    assert!(out.status.success(), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    let answers: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!((&answers[0]["line"], &answers[0]["status"]), (&json!(1), &json!("accepted")), "{answers:?}");
    assert_eq!(answers[1]["line"], 2, "{answers:?}");
    let error = answers[1]["error"].as_str().unwrap_or_else(|| panic!("{answers:?}"));
    assert!(error.contains("line 2: not valid UTF-8"), "{error}");
    assert_eq!((&answers[2]["line"], &answers[2]["status"]), (&json!(3), &json!("accepted")), "{answers:?}");
    let store = SledStore::open(&store_path).unwrap();
    assert_eq!(replay(&store, Upto::All).unwrap().state.accounts["a"].balance, d("3.00"));
}

/// Issue 12: an idempotency key reused for a different command is refused, naming both, and
/// changes nothing; the same command again is still the first answer (a duplicate). Across a
/// restart too: the fingerprint is kept in the store with the command's record.
#[test]
fn an_id_reused_for_another_command_is_refused_naming_both_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let line =
        |amount: &str, seconds: i64| json!({"id": "t1", "at": instant(seconds), "type": "top_up", "account": "a", "amount": amount}).to_string();
    let open = json!({"id": "open-a", "at": instant(0), "type": "open_account", "account": "a", "balance": "0.00"}).to_string();
    let answers = |out: std::process::Output| -> Vec<Value> {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let input = [open, line("1.00", 1), line("999.00", 1), line("1.00", 2), line("1.00", 1)].join("\n") + "\n";
    let first = answers(serve(&store, input.clone().into_bytes(), None));
    assert_eq!(first[1]["status"], "accepted", "{:?}", first[1]);
    assert_eq!(first[1]["duplicate"], false);
    for refused in [&first[2], &first[3]] {
        let error = refused["error"].as_str().unwrap_or_else(|| panic!("an error: {refused}"));
        assert!(error.contains("\"t1\"") && error.contains("already used for another command"), "{error}");
        assert!(error.contains("\"1.00\""), "names the first command: {error}");
    }
    assert!(first[2]["error"].as_str().unwrap().contains("\"999.00\""), "names the second command");
    assert_eq!(first[4]["duplicate"], true, "the same command again is the first answer: {:?}", first[4]);
    // After a restart, from the record in the store.
    let again = answers(serve(&store, input.into_bytes(), None));
    assert!(again[2]["error"].as_str().is_some_and(|e| e.contains("999.00")), "{:?}", again[2]);
    assert_eq!((again[1]["duplicate"].clone(), again[4]["duplicate"].clone()), (json!(true), json!(true)));
    let store = SledStore::open(&store).unwrap();
    let projections = replay(&store, Upto::All).unwrap();
    assert_eq!(projections.state.accounts["a"].balance, d("1.00"), "only the first top-up happened");
}
