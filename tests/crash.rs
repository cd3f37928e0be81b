//! Nothing acknowledged is lost: `poolbill serve` runs in a child process, takes commands,
//! and is killed with SIGKILL at varying points (also with commands in flight). After each
//! kill the store is reopened: every acknowledged command is there, once, at the positions it
//! was acknowledged with, and the state rebuilt from the log agrees with it.

mod common;

use common::poolbill;
use poolbill_domain::Event;
use poolbill_replay::{replay, Upto};
use poolbill_store::EventStore;
use poolbill_store_sled::SledStore;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A small deterministic generator, so that a failing run can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn instant(seconds: u64) -> String {
    let base = poolbill_testkit::t("2023-01-01T00:00:00+08:00");
    (base + chrono::Duration::seconds(seconds as i64)).to_rfc3339()
}

#[test]
fn killing_the_process_loses_nothing_acknowledged() {
    // CI kills it 120 times; POOLBILL_LONG=1 a thousand, within ten minutes.
    let long = std::env::var("POOLBILL_LONG").is_ok();
    let kills: u64 = std::env::var("POOLBILL_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(if long { 1000 } else { 120 });
    let seed: u64 = std::env::var("POOLBILL_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20231123);
    let budget = Duration::from_secs(if long { 600 } else { 60 });
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    let mut rng = Lcg(seed);
    let mut acknowledged: HashMap<String, (Option<u64>, Option<u64>)> = HashMap::new();
    // Every command line sent, by id: a retry repeats its command exactly.
    let mut sent_lines: HashMap<String, Value> = HashMap::new();
    let mut survived = 0;
    let mut resent = 0;

    for round in 0..kills {
        if started.elapsed() > budget {
            break;
        }
        let mut child = poolbill()
            .args(["serve", "--store", store_path.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("poolbill serve starts");
        let mut stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        // Each round's instants lie after everything an earlier round may have written.
        let base = round * 100_000;
        let sent = 20 + rng.below(60);
        let kill_after = rng.below(sent);
        // Some acknowledged commands of earlier rounds are sent again, exactly as they were
        // first sent: retries after a restart.
        let mut lines: Vec<Value> = acknowledged.keys().filter(|id| id.starts_with('r')).take(3).map(|id| sent_lines[id].clone()).collect();
        lines.extend([
            json!({"id": "setup-price", "at": instant(0), "type": "set_price", "spec": "cpu", "hourly": "3.60"}),
            json!({"id": "setup-account", "at": instant(0), "type": "open_account", "account": "a", "balance": "0.00"}),
        ]);
        for k in 0..sent {
            let at = instant(base + 1 + k * 60);
            let line = match k % 10 {
                3 => json!({"id": format!("r{round}-{k}"), "at": at, "type": "purchase", "account": "a",
                            "pool": format!("p{round}-{k}"), "spec": "cpu", "nodes": 1, "mode": "on_demand", "ready": true}),
                7 => json!({"id": format!("r{round}-{k}"), "at": at, "type": "delete", "pool": format!("p{round}-{}", k - 4)}),
                _ => json!({"id": format!("r{round}-{k}"), "at": at, "type": "top_up", "account": "a", "amount": "1.00"}),
            };
            sent_lines.insert(format!("r{round}-{k}"), line.clone());
            lines.push(line);
        }
        let writer = std::thread::spawn(move || {
            for line in lines {
                if writeln!(stdin, "{line}").and_then(|_| stdin.flush()).is_err() {
                    return; // killed
                }
            }
        });
        let mut acks_this_round = 0;
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            let ack: Value = serde_json::from_str(&line).expect("an acknowledgement is JSON");
            assert!(ack.get("error").is_none(), "round {round}: {ack}");
            let id = ack["id"].as_str().unwrap().to_string();
            let positions = (ack["first_position"].as_u64(), ack["last_position"].as_u64());
            // A retry of an acknowledged id returns its first result and appends nothing.
            if let Some(first) = acknowledged.get(&id) {
                assert_eq!(ack["duplicate"], true, "round {round} (seed {seed}): {id} appended twice");
                assert_eq!(positions, *first, "round {round} (seed {seed}): {id} answered differently");
                resent += 1;
            }
            acknowledged.insert(id, positions);
            acks_this_round += 1;
            if acks_this_round == kill_after + 2 {
                break;
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        let _ = writer.join();
        survived += 1;

        // Reopen what the killed process left.
        let store = SledStore::open(&store_path).unwrap_or_else(|e| panic!("round {round} (seed {seed}): reopen: {e}"));
        store.verify().unwrap_or_else(|e| panic!("round {round} (seed {seed}): verify: {e}"));
        for (id, positions) in &acknowledged {
            let record = store.command(id).unwrap().unwrap_or_else(|| panic!("round {round} (seed {seed}): acknowledged {id} is lost"));
            assert_eq!((record.first_position, record.last_position), *positions, "round {round} (seed {seed}): {id} moved");
        }
        // The rebuilt balance is what the recorded top-ups and charges make it, and every
        // recorded top-up's balance-after agrees with the events before it.
        let projections = replay(&store, Upto::All).unwrap();
        let mut expected = Decimal::ZERO;
        for envelope in store.read_all(1) {
            let envelope = envelope.unwrap();
            match poolbill_projections::event_of(&envelope).unwrap() {
                Event::ToppedUp { balance_after, .. } => {
                    expected += Decimal::ONE;
                    assert_eq!(balance_after, expected, "round {round}: balance after top-up at {}", envelope.position);
                }
                Event::Charged { line } => expected -= line.amounts.payable,
                _ => {}
            }
        }
        assert_eq!(projections.state.accounts["a"].balance, expected, "round {round}");
        drop(store);
    }
    assert!(survived >= 20, "at least a few dozen kills within the time budget");
    println!(
        "crash test: survived {survived} SIGKILLs; {} acknowledged commands all present exactly once; {resent} retries after a restart answered with their first result (seed {seed})",
        acknowledged.len()
    );
}
