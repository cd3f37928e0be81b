//! A full disk, end to end: `poolbill serve` keeps its store on a small tmpfs that fills up
//! while it runs. While the disk is full every line is answered at once, "not written" (a
//! promise) or `"outcome": "unknown"` (its write failed at or after its commit); once space is
//! freed the same process writes again by itself. Every failed id is then sent again: one that
//! was answered "not written" must be done now (never a duplicate), one whose outcome was unknown
//! is settled either way. Nothing acknowledged is lost or doubled.
//!
//! It needs to mount a tmpfs (root, or a container that allows it); where it cannot, it says so
//! and checks nothing.

mod common;

use common::poolbill;
use poolbill_domain::Event;
use poolbill_store::EventStore;
use poolbill_store_sled::SledStore;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The tmpfs's size, and the ballast file that leaves the store only `FREE` of it.
const TMPFS_MB: u64 = 16;
const FREE_MB: u64 = 3;
/// Lines sent while the disk is full (the measure: 4,000 lines took 54 s).
const WHILE_FULL: usize = 4000;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, megabytes: u64) -> Option<Tmpfs> {
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"]).arg(dir).stderr(Stdio::null()).status().ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a test that failed may leave a serve process with files open there.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `poolbill serve` in a child process, fed and read a chunk at a time.
struct Serve {
    child: Child,
    lines: std::sync::mpsc::Sender<Option<String>>,
    answers: std::io::Lines<BufReader<ChildStdout>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Serve {
    fn start(store: &Path) -> Serve {
        let mut child = poolbill()
            .args(["serve", "--store", store.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("poolbill serve starts");
        let mut stdin = child.stdin.take().unwrap();
        let (lines, rx) = std::sync::mpsc::channel::<Option<String>>();
        // Written on a thread of its own, so that a long chunk never blocks on unread answers.
        let writer = std::thread::spawn(move || {
            while let Ok(Some(line)) = rx.recv() {
                if writeln!(stdin, "{line}").and_then(|_| stdin.flush()).is_err() {
                    return;
                }
            }
        });
        let answers = BufReader::new(child.stdout.take().unwrap()).lines();
        Serve { child, lines, answers, writer: Some(writer) }
    }

    /// Send the lines and read their answers (one each, in order).
    fn exchange(&mut self, lines: &[Value]) -> Vec<Value> {
        for line in lines {
            self.lines.send(Some(line.to_string())).unwrap();
        }
        (0..lines.len())
            .map(|_| serde_json::from_str(&self.answers.next().expect("an answer per line").expect("readable")).expect("an answer is JSON"))
            .collect()
    }

    fn finish(mut self) {
        self.lines.send(None).unwrap();
        self.writer.take().unwrap().join().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve ends cleanly when its input closes: {status}");
    }
}

fn top_up(id: &str) -> Value {
    // One instant for all: a line sent again later is decided at the same instant (R1 allows it).
    json!({"id": id, "at": "2023-04-01T00:00:00+08:00", "type": "top_up", "account": "a", "amount": "1.00"})
}

/// What became of each command id, over all its answers.
#[derive(Default)]
struct Ledger {
    /// Acknowledged ids and their positions.
    acknowledged: HashMap<String, (Option<u64>, Option<u64>)>,
    /// Ids answered "outcome unknown" (and not acknowledged since).
    unknown: HashMap<String, u32>,
    /// Ids answered "not written", never "unknown" before: a promise that nothing is written.
    not_written: HashMap<String, u32>,
    duplicates_of_unknown: u32,
    /// Ids ever answered "outcome unknown", and how many "not written" answers there were.
    ever_unknown: std::collections::HashSet<String>,
    not_written_answers: u32,
}

impl Ledger {
    fn note(&mut self, answer: &Value) {
        let id = answer["id"].as_str().unwrap_or_else(|| panic!("an answer with its id: {answer}")).to_string();
        if let Some(error) = answer.get("error").and_then(Value::as_str) {
            if answer["outcome"] == "unknown" {
                // An unknown outcome may have been written: a later duplicate is allowed.
                self.not_written.remove(&id);
                self.ever_unknown.insert(id.clone());
                *self.unknown.entry(id).or_default() += 1;
            } else {
                assert!(error.starts_with("not written, retry"), "a failed line is either not written or unknown: {answer}");
                assert!(!self.acknowledged.contains_key(&id), "{id} was acknowledged, then answered not written: {answer}");
                self.not_written_answers += 1;
                if !self.unknown.contains_key(&id) {
                    *self.not_written.entry(id).or_default() += 1;
                }
            }
            return;
        }
        assert_eq!(answer["status"], "accepted", "{answer}");
        let positions = (answer["first_position"].as_u64(), answer["last_position"].as_u64());
        if answer["duplicate"] == true {
            // The one thing a "not written" promise forbids.
            assert!(!self.not_written.contains_key(&id), "{id} was answered not written, but it had been written: {answer}");
            if let Some(first) = self.acknowledged.get(&id) {
                assert_eq!(*first, positions, "{id} answered with other positions");
            } else {
                assert!(self.unknown.contains_key(&id), "a duplicate of an id never sent before: {answer}");
                self.duplicates_of_unknown += 1;
            }
        } else {
            assert!(!self.acknowledged.contains_key(&id), "{id} appended twice: {answer}");
        }
        self.not_written.remove(&id);
        self.unknown.remove(&id);
        self.acknowledged.insert(id, positions);
    }

    fn failed(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.unknown.keys().chain(self.not_written.keys()).cloned().collect();
        ids.sort();
        ids
    }
}

#[test]
fn a_full_disk_refuses_fast_keeps_its_promises_and_writes_again_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(dir.path(), TMPFS_MB) else {
        eprintln!("disk_full: cannot mount a tmpfs here (not root?): nothing checked");
        return;
    };
    // Ballast leaves the store FREE_MB; deleting it is the space that returns.
    let ballast = tmpfs.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; ((TMPFS_MB - FREE_MB) * 1024 * 1024) as usize]).unwrap();
    let store = tmpfs.0.join("store");
    let mut serve = Serve::start(&store);
    let mut ledger = Ledger::default();
    for answer in
        serve.exchange(&[json!({"id": "open", "at": "2023-04-01T00:00:00+08:00", "type": "open_account", "account": "a", "balance": "0.00"})])
    {
        ledger.note(&answer);
    }

    // Fill the disk: chunks of top-ups until one is refused.
    let mut next = 0;
    let mut ids = |n: usize| -> Vec<Value> {
        let chunk = (next..next + n).map(|k| top_up(&format!("t{k}"))).collect();
        next += n;
        chunk
    };
    let mut filled = false;
    for _ in 0..200 {
        let answers = serve.exchange(&ids(100));
        answers.iter().for_each(|a| ledger.note(a));
        if answers.iter().any(|a| a.get("error").is_some()) {
            filled = true;
            break;
        }
    }
    assert!(filled, "the disk never filled up");
    let acknowledged_when_full = ledger.acknowledged.len();

    // While it is full: every line answered at once, none acknowledged.
    let started = Instant::now();
    let answers = serve.exchange(&ids(WHILE_FULL));
    let full_took = started.elapsed();
    answers.iter().for_each(|a| ledger.note(a));
    assert!(answers.iter().all(|a| a.get("error").is_some()), "nothing is written while the disk is full");
    assert!(full_took < Duration::from_secs(10), "{WHILE_FULL} lines on a full store took {full_took:?}");

    // Opening a store on the full disk is refused before sled touches its files (sled can
    // damage them when it cannot write as it opens), and that is not called damage.
    let verify = poolbill().args(["verify", "--store", store.to_str().unwrap()]).output().unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert_eq!(verify.status.code(), Some(1), "{said}");
    assert!(said.contains("needed to open it safely") && !said.contains("DAMAGED"), "{said}");

    // Space returns: the same process writes again by itself (after its next recovery attempt).
    std::fs::remove_file(&ballast).unwrap();
    let freed = Instant::now();
    let mut resumed_after = None;
    let mut rounds = 0;
    while !ledger.failed().is_empty() {
        rounds += 1;
        assert!(freed.elapsed() < Duration::from_secs(60), "still failing 60 s after space was freed: {} ids", ledger.failed().len());
        let resend: Vec<Value> = ledger.failed().iter().map(|id| top_up(id)).collect();
        let answers = serve.exchange(&resend);
        answers.iter().for_each(|a| ledger.note(a));
        if resumed_after.is_none() && answers.iter().any(|a| a.get("error").is_none()) {
            resumed_after = Some(freed.elapsed());
        }
        if answers.iter().all(|a| a.get("error").is_some()) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // New commands too.
    for answer in serve.exchange(&ids(10)) {
        ledger.note(&answer);
        assert!(answer.get("error").is_none(), "a new command after space returned: {answer}");
    }
    serve.finish();

    // Reopened: every acknowledged id once, at its positions, and the balance the log implies.
    let reopened = SledStore::open(&store).expect("the store reopens");
    reopened.verify().expect("the store is sound");
    for (id, positions) in &ledger.acknowledged {
        let record = reopened.command(id).unwrap().unwrap_or_else(|| panic!("acknowledged {id} is lost"));
        assert_eq!((record.first_position, record.last_position), *positions, "{id} moved");
    }
    let mut top_ups = 0u64;
    for envelope in reopened.read_all(1) {
        if let Event::ToppedUp { .. } = poolbill_projections::event_of(&envelope.unwrap()).unwrap() {
            top_ups += 1;
        }
    }
    let sent = next as u64;
    assert_eq!(top_ups, sent, "each of the {sent} top-ups written exactly once");
    let balance = poolbill_replay::replay(&reopened, poolbill_replay::Upto::All).unwrap().state.accounts["a"].balance;
    assert_eq!(balance, Decimal::from(sent), "the balance is one per top-up");
    println!(
        "disk full: {acknowledged_when_full} commands acknowledged before the {FREE_MB} MB filled; {WHILE_FULL} lines on the full store answered in {:.2} s; \
         writing again {:.2} s after space was freed ({rounds} resend rounds); {} \"not written\" answers, none written; {} ids answered unknown, \
         {} of them found written (duplicates); {sent} top-ups in the log, each once",
        full_took.as_secs_f64(),
        resumed_after.unwrap_or_default().as_secs_f64(),
        ledger.not_written_answers,
        ledger.ever_unknown.len(),
        ledger.duplicates_of_unknown
    );
}
