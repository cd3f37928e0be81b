//! The HTTP command API end to end: `poolbill serve --http 127.0.0.1:0` started as a process,
//! called over real sockets with a small HTTP/1.1 client: idempotency, problem+json, tokens and
//! scopes (refusals change nothing), the body limit, health, the OpenAPI document, paged bills,
//! the streamed document, and a graceful shutdown that finishes a command in flight.

mod common;

use common::poolbill;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

const ADMIN: &str = "admin-token-0123456789";
/// Read-write on acct-1 only.
const ONE: &str = "acct-1-token-0123456789";
/// Read-only on acct-1.
const READER: &str = "reader-token-0123456789";
/// Read-write on acct-2 only.
const TWO: &str = "acct-2-token-0123456789";
const SPEC: &str = "modelarts.vm.cpu.8ud";

fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.json");
    let tokens = json!({"tokens": [
        {"token": ADMIN, "accounts": "*", "access": "read-write"},
        {"token": ONE, "accounts": ["acct-1"], "access": "read-write"},
        {"token": READER, "accounts": ["acct-1"], "access": "read"},
        {"token": TWO, "accounts": ["acct-2"], "access": "read-write"},
    ]});
    std::fs::write(&path, tokens.to_string()).unwrap();
    path
}

/// A running `poolbill serve --http`, killed when dropped (unless it was stopped).
struct Server {
    child: Child,
    addr: SocketAddr,
    store: PathBuf,
    /// Where the store and tokens are: taken by [`Server::into_dir`] to start another server on them.
    dir: Option<tempfile::TempDir>,
}

impl Server {
    fn start() -> Server {
        Server::start_in(tempfile::tempdir().unwrap())
    }

    /// A server on the store (and tokens) of `dir`, new or kept from an earlier server.
    fn start_in(dir: tempfile::TempDir) -> Server {
        let store = dir.path().join("store");
        let tokens = tokens_file(dir.path());
        let mut child = poolbill()
            .args(["serve", "--store", store.to_str().unwrap(), "--http", "127.0.0.1:0", "--tokens", tokens.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("poolbill serve starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "serve ended before it listened");
            if let Some(addr) = line.trim().strip_prefix("poolbill: listening on http://") {
                break addr.parse().unwrap();
            }
        };
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Server { child, addr, store, dir: Some(dir) }
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
        request(self.addr, method, path, token, headers, body)
    }

    fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), &[], None)
    }

    fn command(&self, token: &str, key: &str, body: &Value) -> Reply {
        self.call("POST", "/v1/commands", Some(token), &[("Idempotency-Key", key)], Some(body.to_string().as_bytes()))
    }

    /// The log's last position, from the health check.
    fn last_position(&self) -> u64 {
        let health = self.call("GET", "/healthz", None, &[], None);
        assert_eq!(health.status, 200, "{}", health.text());
        health.json()["last_position"].as_u64().unwrap()
    }

    /// The directory of a stopped server's store, kept for another.
    fn into_dir(mut self) -> tempfile::TempDir {
        self.dir.take().expect("a server has its directory")
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let killed = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// A problem document with this status and code; its body.
    fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/problem+json"));
        let p = self.json();
        assert_eq!(p["code"], code, "{p}");
        assert_eq!(p["status"], status);
        assert_eq!(p["type"], format!("urn:poolbill:problem:{code}"));
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()) && p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
        p
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), the whole reply read.
fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    if let Some(body) = body {
        // The server may answer (413) and close before reading a large body.
        let _ = stream.write_all(body);
    }
    read_reply(stream)
}

fn read_reply(stream: TcpStream) -> Reply {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("status line {line:?}")).parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').unwrap();
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap_or_else(|_| panic!("chunk size {line:?}"));
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        reader.read_to_end(&mut body).unwrap();
    }
    Reply { status, headers, body }
}

fn at(hours: i64) -> String {
    (chrono::DateTime::parse_from_rfc3339("2023-04-01T10:00:00+08:00").unwrap() + chrono::Duration::hours(hours)).to_rfc3339()
}

/// A price, two accounts, and on-demand pools (three of acct-1's, one of acct-2's) that have
/// run `hours` hours: bills to read.
fn set_up(server: &Server, hours: i64) {
    let admin = |key: &str, body: Value| {
        let reply = server.command(ADMIN, key, &body);
        assert_eq!(reply.status, 200, "{key}: {}", reply.text());
        assert_eq!(reply.json()["status"], "accepted", "{key}: {}", reply.text());
    };
    admin("price", json!({"type": "set_price", "at": at(0), "spec": SPEC, "hourly": "3.50", "monthly": "1750.00"}));
    admin("open-1", json!({"type": "open_account", "at": at(0), "account": "acct-1", "balance": "100000.00"}));
    admin("open-2", json!({"type": "open_account", "at": at(0), "account": "acct-2", "balance": "50000.00"}));
    for (i, (token, account)) in [(ONE, "acct-1"), (ONE, "acct-1"), (ONE, "acct-1"), (TWO, "acct-2")].into_iter().enumerate() {
        let body = json!({"type": "purchase", "at": at(0), "account": account, "pool": format!("pool-{i}"), "spec": SPEC, "nodes": 1,
                          "mode": "on_demand", "ready": true});
        let reply = server.command(token, &format!("buy-{i}"), &body);
        assert_eq!(reply.json()["status"], "accepted", "{}", reply.text());
    }
    let advanced = server.call("POST", "/v1/advance", Some(ADMIN), &[], Some(json!({"at": at(hours)}).to_string().as_bytes()));
    assert_eq!(advanced.status, 200, "{}", advanced.text());
    assert!(advanced.json()["events"].as_u64().unwrap() > 0);
}

fn balance(server: &Server, account: &str) -> String {
    let reply = server.get(&format!("/v1/accounts/{account}"), ADMIN);
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["balance"].as_str().unwrap().to_string()
}

#[test]
fn a_resent_key_gets_the_first_answer_and_another_body_under_it_is_422() {
    let server = Server::start();
    set_up(&server, 1);
    let top_up = json!({"type": "top_up", "at": at(2), "account": "acct-1", "amount": "10.00"});
    let first = server.command(ONE, "top-up-1", &top_up);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("content-type"), Some("application/json"));
    let answer = first.json();
    assert_eq!((answer["id"].as_str(), answer["status"].as_str(), answer["duplicate"].as_bool()), (Some("top-up-1"), Some("accepted"), Some(false)));
    let last = answer["last_position"].as_u64().unwrap();
    assert!(answer["first_position"].as_u64().unwrap() <= last);
    assert_eq!(server.last_position(), last);
    let balance_after = balance(&server, "acct-1");

    // Resent: the first answer, marked duplicate; nothing appended, nothing credited again.
    let again = server.command(ONE, "top-up-1", &top_up).json();
    let mut expected = answer.clone();
    expected["duplicate"] = json!(true);
    assert_eq!(again, expected);
    assert_eq!(server.last_position(), last);
    assert_eq!(balance(&server, "acct-1"), balance_after);

    // The same key for another amount: 422, nothing done.
    let other = json!({"type": "top_up", "at": at(2), "account": "acct-1", "amount": "99.00"});
    let p = server.command(ONE, "top-up-1", &other).problem(422, "idempotency-key-reused");
    assert_eq!(p["field"], "Idempotency-Key");
    assert!(p["detail"].as_str().unwrap().contains("was already used for another command"), "{p}");
    assert_eq!(server.last_position(), last);
    assert_eq!(balance(&server, "acct-1"), balance_after);

    // A refused command is answered with its rule, and recorded.
    let unknown = server.command(ADMIN, "nobody", &json!({"type": "top_up", "at": at(2), "account": "nobody", "amount": "1.00"})).json();
    assert_eq!((unknown["status"].as_str(), unknown["rule"].as_str()), (Some("rejected"), Some("R12")), "{unknown}");
    assert!(unknown["reason"].as_str().is_some_and(|r| !r.is_empty()));
}

#[test]
fn bad_input_is_a_problem_naming_the_field_with_the_clis_message_and_changes_nothing() {
    let server = Server::start();
    set_up(&server, 1);
    let before = server.last_position();
    let bad = json!({"type": "purchase", "at": at(2), "account": "acct-1", "pool": "p9", "spec": SPEC, "nodes": -1, "mode": "on_demand"});
    let p = server.command(ONE, "bad-1", &bad).problem(400, "invalid-command");
    assert_eq!(p["field"], "nodes");
    // The message `poolbill serve` gives for the same command, but for where it was read.
    let dir = tempfile::tempdir().unwrap();
    let mut line = bad.clone();
    line["id"] = json!("bad-1");
    let mut serve =
        poolbill().args(["serve", "--store", dir.path().join("s").to_str().unwrap()]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    serve.stdin.take().unwrap().write_all(format!("{line}\n").as_bytes()).unwrap();
    let out = serve.wait_with_output().unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cli_error = cli["error"].as_str().unwrap();
    assert_eq!(cli_error.strip_prefix("line 1"), p["detail"].as_str().unwrap().strip_prefix("body"), "{cli_error} vs {p}");

    let no_key = server.call("POST", "/v1/commands", Some(ONE), &[], Some(bad.to_string().as_bytes())).problem(400, "missing-idempotency-key");
    assert_eq!(no_key["field"], "Idempotency-Key");
    let not_json = server.call("POST", "/v1/commands", Some(ONE), &[("Idempotency-Key", "x")], Some(b"{\"type\": ")).problem(400, "invalid-command");
    assert!(not_json["detail"].as_str().unwrap().starts_with("not valid JSON"), "{not_json}");
    let other_id = json!({"id": "other", "type": "top_up", "at": at(2), "account": "acct-1", "amount": "1.00"});
    assert_eq!(server.command(ONE, "mine", &other_id).problem(400, "invalid-command")["field"], "id");
    let no_at = server.call("POST", "/v1/advance", Some(ADMIN), &[], Some(b"{\"at\": \"soon\"}")).problem(400, "invalid-command");
    assert_eq!(no_at["field"], "at");
    assert_eq!(server.get("/v1/bills?month=2023-13", ADMIN).problem(400, "invalid-parameter")["field"], "month");
    assert_eq!(server.get("/v1/bills?month=2023-04&limit=0", ADMIN).problem(400, "invalid-parameter")["field"], "limit");
    assert_eq!(server.get("/v1/bills?month=2023-04&colour=red", ADMIN).problem(400, "invalid-parameter")["field"], "colour");
    assert_eq!(server.get("/v1/resources/pool-0?at=yesterday", ADMIN).problem(400, "invalid-parameter")["field"], "at");
    assert_eq!(server.get("/v1/bills/0/explain", ADMIN).problem(400, "invalid-parameter")["field"], "n");
    server.get("/v1/bills/9999/explain", ADMIN).problem(404, "not-found");
    server.get("/v1/accounts/nobody", ADMIN).problem(404, "not-found");
    server.get("/v1/nothing-here", ADMIN).problem(404, "not-found");
    server.call("DELETE", "/v1/commands", Some(ADMIN), &[], None).problem(405, "method-not-allowed");

    // A body over the limit: 413, nothing written.
    let mut big = bad.clone();
    big["note"] = json!("x".repeat(100 * 1024));
    server.command(ADMIN, "big", &big).problem(413, "body-too-large");
    assert_eq!(server.last_position(), before);
}

#[test]
fn tokens_keep_everyone_to_their_own_accounts_and_refusals_change_nothing() {
    let server = Server::start();
    set_up(&server, 3);
    let before = server.last_position();
    let (one, two) = (balance(&server, "acct-1"), balance(&server, "acct-2"));
    let top_up = json!({"type": "top_up", "at": at(4), "account": "acct-1", "amount": "5.00"});

    // No token, a malformed header, an unknown token: 401, with the Bearer challenge.
    let none = server.call("POST", "/v1/commands", None, &[("Idempotency-Key", "t")], Some(top_up.to_string().as_bytes()));
    none.problem(401, "unauthorized");
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    server.call("GET", "/v1/accounts/acct-1", None, &[("Authorization", "Basic abc")], None).problem(401, "unauthorized");
    server.command("not-a-token-0123456789", "t", &top_up).problem(401, "unauthorized");
    server.get("/openapi.json", "admin-token-012345678").problem(401, "unauthorized");

    // Read-only, another account's, a pool of another account, platform-wide: 403.
    server.command(READER, "t", &top_up).problem(403, "forbidden");
    server.command(TWO, "t", &top_up).problem(403, "forbidden");
    server.command(TWO, "scale", &json!({"type": "scale", "at": at(4), "pool": "pool-0", "nodes": 3})).problem(403, "forbidden");
    server.command(TWO, "ghost", &json!({"type": "delete", "at": at(4), "pool": "no-such-pool"})).problem(403, "forbidden");
    server.command(ONE, "price", &json!({"type": "set_price", "at": at(4), "spec": SPEC, "hourly": "0.01"})).problem(403, "forbidden");
    server.call("POST", "/v1/advance", Some(ONE), &[], Some(json!({"at": at(9)}).to_string().as_bytes())).problem(403, "forbidden");
    server.get("/v1/accounts/acct-1", TWO).problem(403, "forbidden");
    server.get("/v1/resources/pool-0", TWO).problem(403, "forbidden");
    server.get("/v1/document", ONE).problem(403, "forbidden");
    server.get("/v1/bills?month=2023-04&account=acct-1", TWO).problem(403, "forbidden");
    let explained = server.get("/v1/bills/1/explain", ADMIN);
    assert_eq!(explained.status, 200, "{}", explained.text());
    let owner = explained.json()["bill"]["account"].as_str().unwrap().to_string();
    let outsider = if owner == "acct-1" { TWO } else { ONE };
    server.get("/v1/bills/1/explain", outsider).problem(403, "forbidden");

    // None of that changed anything.
    assert_eq!(server.last_position(), before);
    assert_eq!((balance(&server, "acct-1"), balance(&server, "acct-2")), (one, two));

    // In scope: allowed.
    assert_eq!(server.get("/v1/accounts/acct-1", READER).json()["id"], "acct-1");
    let pool = server.get("/v1/resources/pool-0", READER).json();
    assert_eq!((pool["account"].as_str(), pool["kind"].as_str()), (Some("acct-1"), Some("pool")));
    let scaled = server.command(ONE, "scale", &json!({"type": "scale", "at": at(4), "pool": "pool-0", "nodes": 2})).json();
    assert_eq!(scaled["status"], "accepted", "{scaled}");
    assert_eq!(server.get("/v1/resources/pool-0", READER).json()["nodes"], 2);
    // Reusing another account's key: 422, without a word of the other account's command.
    let p = server
        .command(TWO, "scale", &json!({"type": "top_up", "at": at(4), "account": "acct-2", "amount": "1.00"}))
        .problem(422, "idempotency-key-reused");
    let detail = p["detail"].as_str().unwrap();
    assert!(!detail.contains("pool-0") && !detail.contains("acct-1"), "{detail}");
    // As of an instant before the scale: one node.
    assert_eq!(server.get(&format!("/v1/resources/pool-0?at={}", at(1).replace('+', "%2B")), READER).json()["nodes"], 1);
    // The same with the offset's `+` unescaped, as typed into curl.
    assert_eq!(server.get(&format!("/v1/resources/pool-0?at={}", at(1)), READER).json()["nodes"], 1);
}

#[test]
fn bills_come_in_pages_as_json_or_csv_within_the_tokens_scope() {
    let server = Server::start();
    set_up(&server, 5);
    let all = server.get("/v1/bills?month=2023-04&limit=1000", ADMIN).json();
    let rows = all["rows"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 4, "{all}");
    assert_eq!(all["count"], 4);
    assert_eq!(all["next_cursor"], Value::Null);
    // Five hours of one node at 3.50 on each of four pools.
    assert_eq!(all["totals"]["payable"], "70.00", "{all}");

    // Pages of 3: three rows and a cursor, then the last row and none.
    let first = server.get("/v1/bills?month=2023-04&limit=3", ADMIN);
    assert_eq!(first.header("next-cursor"), Some("3"));
    let first = first.json();
    let second = server.get("/v1/bills?month=2023-04&limit=3&cursor=3", ADMIN);
    assert_eq!(second.header("next-cursor"), None);
    let second = second.json();
    let paged: Vec<Value> = first["rows"].as_array().unwrap().iter().chain(second["rows"].as_array().unwrap()).cloned().collect();
    assert_eq!(paged, rows);
    assert_eq!((first["next_cursor"].as_str(), &second["next_cursor"]), (Some("3"), &Value::Null));

    // A scoped token sees its own account's rows only; naming it gives the same.
    let mine = server.get("/v1/bills?month=2023-04", TWO).json();
    let mine_rows = mine["rows"].as_array().unwrap();
    assert_eq!(mine_rows.len(), 1);
    assert_eq!(mine_rows[0]["account"], "acct-2");
    assert_eq!(mine["totals"]["payable"], "17.50");
    assert_eq!(server.get("/v1/bills?month=2023-04&account=acct-2", TWO).json()["rows"], mine["rows"]);

    let csv = server.get("/v1/bills?month=2023-04&account=acct-1&format=csv", READER);
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let text = csv.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 3 + 1, "{text}");
    assert!(lines[1..4].iter().all(|l| l.contains("acct-1")), "{text}");
    assert!(lines[4].starts_with("total,") && lines[4].contains("52.50"), "{text}");
}

#[test]
fn health_needs_no_token_and_the_openapi_document_lists_every_route() {
    let server = Server::start();
    let health = server.call("GET", "/healthz", None, &[], None);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let api = server.get("/openapi.json", READER);
    assert_eq!(api.status, 200, "{}", api.text());
    let api = api.json();
    let paths = api["paths"].as_object().unwrap();
    let routes = [
        ("/v1/commands", "post"),
        ("/v1/advance", "post"),
        ("/v1/document", "get"),
        ("/v1/accounts/{id}", "get"),
        ("/v1/resources/{id}", "get"),
        ("/v1/bills", "get"),
        ("/v1/bills/{n}/explain", "get"),
        ("/healthz", "get"),
    ];
    for (path, method) in routes {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing from {}", api["paths"]);
    }
    assert_eq!(paths.len(), routes.len(), "{:?}", paths.keys().collect::<Vec<_>>());
    assert!(api["components"]["securitySchemes"]["bearer"].is_object());
}

#[test]
fn the_document_is_streamed_and_shutdown_finishes_a_command_in_flight() {
    let mut server = Server::start();
    set_up(&server, 2);
    // Money for three years of the four pools, so that the advance below runs that long.
    for (token, account) in [(ONE, "acct-1"), (TWO, "acct-2")] {
        let top_up = json!({"type": "top_up", "at": at(2), "account": account, "amount": "1000000.00"});
        assert_eq!(server.command(token, &format!("fund-{account}"), &top_up).json()["status"], "accepted");
    }
    let document = server.get("/v1/document", ADMIN);
    assert_eq!(document.status, 200, "{}", document.text());
    assert_eq!(document.header("transfer-encoding"), Some("chunked"));
    let doc = document.json();
    assert_eq!(doc["resources"].as_array().unwrap().len(), 4);
    assert_eq!(doc["events"].as_u64(), Some(server.last_position()));
    let earlier = server.get(&format!("/v1/document?at={}", at(1).replace('+', "%2B")), ADMIN).json();
    assert!(earlier["bills"].as_array().unwrap().len() < doc["bills"].as_array().unwrap().len());

    // A long advance (three years of hourly settlement on four pools) is in flight when SIGTERM
    // comes: it is answered, durable, and serve exits 0.
    let addr = server.addr;
    let in_flight =
        std::thread::spawn(move || request(addr, "POST", "/v1/advance", Some(ADMIN), &[], Some(json!({"at": at(3 * 8760)}).to_string().as_bytes())));
    std::thread::sleep(Duration::from_millis(300));
    // The premise: the advance has not been answered yet.
    assert!(!in_flight.is_finished(), "the advance was answered before the signal: make it longer");
    let signalled = std::time::Instant::now();
    let status = server.terminate();
    eprintln!("serve ended {:?} after SIGTERM", signalled.elapsed());
    let reply = in_flight.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let events = reply.json()["events"].as_u64().unwrap();
    assert!(events > 4 * 3 * 8760, "{events}");
    assert!(status.success(), "{status:?}");
    // After the shutdown: the store holds the advance, and its document is the one served
    // (the same log, replayed by the CLI) up to that advance.
    let replayed = common::run_json(&["replay", "--store", server.store.to_str().unwrap(), "--format", "json"]);
    assert_eq!(replayed["events"].as_u64(), Some(doc["events"].as_u64().unwrap() + events));
    let at_first = common::run_json(&["replay", "--store", server.store.to_str().unwrap(), "--format", "json", "--upto", &doc["events"].to_string()]);
    assert_eq!(at_first, doc);
}

#[test]
fn a_bad_tokens_file_or_a_missing_one_is_refused_before_the_store_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tokens = dir.path().join("tokens.json");
    std::fs::write(&tokens, r#"{"tokens": [{"token": "0123456789abcdefgh", "accounts": "*", "access": "write"}]}"#).unwrap();
    let out = poolbill()
        .args(["serve", "--store", store.to_str().unwrap(), "--http", "127.0.0.1:0", "--tokens", tokens.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tokens[0].access"), "{stderr}");
    assert!(!store.exists(), "the store was created");
    // --http needs --tokens (and the other way round): a usage error.
    for args in [&["--http", "127.0.0.1:0"][..], &["--tokens", tokens.to_str().unwrap()][..]] {
        let out = poolbill().args(["serve", "--store", store.to_str().unwrap()]).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!store.exists());
    }
}

#[test]
fn concurrent_clients_and_their_retries_each_get_one_durable_answer() {
    let server = Server::start();
    set_up(&server, 1);
    let before = server.last_position();
    let start_balance: Decimal = balance(&server, "acct-1").parse().unwrap();
    let addr = server.addr;
    // 16 clients at once, 10 top-ups each, every one sent twice (the retry races the original).
    let clients: Vec<_> = (0..16)
        .map(|c| {
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                for k in 0..10 {
                    let key = format!("c{c}-{k}");
                    let body = json!({"type": "top_up", "at": at(1), "account": "acct-1", "amount": "1.00"}).to_string();
                    let send = || request(addr, "POST", "/v1/commands", Some(ONE), &[("Idempotency-Key", key.as_str())], Some(body.as_bytes()));
                    let (first, retry) = std::thread::scope(|s| {
                        let a = s.spawn(send);
                        let b = s.spawn(send);
                        (a.join().unwrap(), b.join().unwrap())
                    });
                    answers.push((first.json(), retry.json()));
                }
                answers
            })
        })
        .collect();
    let mut positions = std::collections::BTreeSet::new();
    for client in clients {
        for (a, b) in client.join().unwrap() {
            assert_eq!((a["status"].as_str(), b["status"].as_str()), (Some("accepted"), Some("accepted")), "{a} {b}");
            // One of the two wrote it, the other got that answer back.
            assert_eq!(a["duplicate"].as_bool().unwrap() as u8 + b["duplicate"].as_bool().unwrap() as u8, 1, "{a} {b}");
            assert_eq!((&a["first_position"], &a["last_position"]), (&b["first_position"], &b["last_position"]));
            assert!(positions.insert(a["first_position"].as_u64().unwrap()), "two commands at one position: {a}");
        }
    }
    // 160 top-ups, each its record and its event, once.
    assert_eq!(server.last_position(), before + 2 * 160);
    let end_balance: Decimal = balance(&server, "acct-1").parse().unwrap();
    assert_eq!(end_balance - start_balance, Decimal::from(160));
}

/// An engine forgets gone resources (at its open, at the latest): a scoped token still owns its
/// deleted pool — the command is refused by the rules (R17), not as another account's — and
/// the pool is still shown.
#[test]
fn a_gone_pool_forgotten_by_the_engine_is_still_its_accounts_own() {
    let mut server = Server::start();
    set_up(&server, 1);
    let delete = json!({"type": "delete", "at": at(1), "pool": "pool-0"});
    assert_eq!(server.command(ONE, "delete", &delete).json()["status"], "accepted");
    let advanced = server.call("POST", "/v1/advance", Some(ADMIN), &[], Some(json!({"at": at(3)}).to_string().as_bytes()));
    assert_eq!(advanced.status, 200, "{}", advanced.text());
    assert!(server.terminate().success());
    let server = Server::start_in(server.into_dir());
    let again = server.command(ONE, "delete-again", &json!({"type": "delete", "at": at(4), "pool": "pool-0"})).json();
    assert_eq!((again["status"].as_str(), again["rule"].as_str()), (Some("rejected"), Some("R17")), "{again}");
    assert_eq!(again["reason"], "pool \"pool-0\" is already deleted");
    server.command(TWO, "not-theirs", &json!({"type": "delete", "at": at(4), "pool": "pool-0"})).problem(403, "forbidden");
    let shown = server.get("/v1/resources/pool-0", ONE);
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert_eq!(shown.json()["state"], "deleted");
}
