//! Throwaway PostgreSQL for tests (and the bench): [`fresh_database`] gives each caller a
//! database of its own, on `POOLBILL_TEST_POSTGRES` (a URL) when it is set, else on one
//! cluster per test process started from the machine's PostgreSQL 15 (`initdb` into a
//! temporary directory, `pg_ctl start` on a free 127.0.0.1 port, its socket in that directory)
//! and stopped when the process ends. Without PostgreSQL installed it fails, saying how to
//! install it: a test that needs PostgreSQL never passes by skipping.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Where Debian's `postgresql-15` package puts the server's programs.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// What to do when PostgreSQL is missing.
pub const HOW_TO_INSTALL: &str = "PostgreSQL 15 is needed for these tests: install it (`apt-get install -y postgresql-15`, or run `scripts/test`, which does), or set POOLBILL_TEST_POSTGRES=postgres://user:password@host:port/database to use a server you run";

/// A running throwaway cluster: stopped (`pg_ctl stop -m immediate`) and its directory removed
/// when dropped, or when the process that started it ends (a watcher process sees to that,
/// since a cluster kept in a static is never dropped).
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    /// Running as root: the server's programs run as `postgres`, which PostgreSQL demands.
    as_postgres: bool,
    watcher: Option<std::process::Child>,
}

/// Whether the commit of a cluster's transactions is made durable (`fsync`): on for figures
/// that mean something, off for tests, where a crash loses nothing of value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Fsync,
    NoFsync,
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// A command running one of the server's programs, as `postgres` when we are root.
fn program(name: &str, as_postgres: bool) -> Command {
    let path = Path::new(BIN_DIR).join(name);
    if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let output = command.stdin(Stdio::null()).output().map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({}): {}{}", output.status, String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("finding a free port: {e}"))
}

impl Cluster {
    /// `initdb` into a new temporary directory and start the server on a free port of
    /// 127.0.0.1. Fails (with [`HOW_TO_INSTALL`]) when PostgreSQL 15 is not installed.
    pub fn start(durability: Durability) -> Result<Cluster, String> {
        if !Path::new(BIN_DIR).join("initdb").exists() {
            return Err(format!("{BIN_DIR}/initdb not found. {HOW_TO_INSTALL}"));
        }
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new().prefix("poolbill-pg-").tempdir().map_err(|e| format!("creating a directory for the cluster: {e}"))?.keep();
        let mut cluster = Cluster { dir, port: 0, as_postgres, watcher: None };
        if as_postgres {
            let mut chown = Command::new("chown");
            chown.arg("postgres:").arg(&cluster.dir);
            run(chown, "handing the cluster's directory to postgres")?;
        }
        let data = cluster.dir.join("data");
        let mut initdb = program("initdb", as_postgres);
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]);
        run(initdb, "initdb")?;
        cluster.port = free_port()?;
        let fsync = if durability == Durability::Fsync { "on" } else { "off" };
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync={fsync} -c max_connections=200 -c shared_buffers=32MB",
            cluster.port,
            cluster.dir.display()
        );
        let mut start = program("pg_ctl", as_postgres);
        start.arg("-D").arg(&data).arg("-l").arg(cluster.dir.join("server.log")).args(["-w", "-t", "60", "-o", &options, "start"]);
        // Its output stays open in the server: not captured, so that waiting for pg_ctl ends.
        let status = start.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().map_err(|e| format!("pg_ctl start: {e}"))?;
        if !status.success() {
            let log = std::fs::read_to_string(cluster.dir.join("server.log")).unwrap_or_default();
            return Err(format!("pg_ctl start failed ({status}); the server's log:\n{log}"));
        }
        cluster.watcher = cluster.watch().ok();
        Ok(cluster)
    }

    /// A process that outlives this one by at most a second: it stops the cluster and removes
    /// its directory once this process is gone.
    fn watch(&self) -> std::io::Result<std::process::Child> {
        let stop = self.stop_command_line();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
    }

    fn stop_command_line(&self) -> String {
        let runuser = if self.as_postgres { "runuser -u postgres -- " } else { "" };
        format!("{runuser}{BIN_DIR}/pg_ctl -D '{}' -m immediate stop", self.dir.join("data").display())
    }

    /// The URL of `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = program("pg_ctl", self.as_postgres);
        stop.arg("-D").arg(self.dir.join("data")).args(["-m", "immediate", "stop"]);
        let _ = stop.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(mut watcher) = self.watcher.take() {
            let _ = watcher.kill();
            let _ = watcher.wait();
        }
    }
}

/// `url` with its database replaced by `database` (a `postgres://` URL).
pub fn with_database(url: &str, database: &str) -> Result<String, String> {
    let rest =
        url.strip_prefix("postgres://").or_else(|| url.strip_prefix("postgresql://")).ok_or_else(|| format!("{url:?} is not a postgres:// URL"))?;
    let scheme = &url[..url.len() - rest.len()];
    let (authority, query) = match rest.find(['/', '?']) {
        None => (rest, ""),
        Some(i) => {
            let tail = &rest[i..];
            (&rest[..i], tail.find('?').map_or("", |q| &tail[q..]))
        }
    };
    Ok(format!("{scheme}{authority}/{database}{query}"))
}

/// Run `sql` on the database at `url`, on a thread and runtime of its own (so that it works
/// from any thread, async or not).
pub fn execute(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await.map_err(|e| format!("connecting to {url}: {}", with_causes(&e)))?;
            let connection = tokio::spawn(connection);
            let result = client.batch_execute(&sql).await.map_err(|e| format!("{sql}: {}", with_causes(&e)));
            drop(client);
            let _ = connection.await;
            result
        })
    })
    .join()
    .map_err(|_| "the SQL thread panicked".to_string())?
}

/// An error and its causes on one line (tokio-postgres says what the server said in a cause).
fn with_causes(error: &dyn std::error::Error) -> String {
    std::iter::successors(Some(error), |e| e.source()).map(|e| e.to_string()).collect::<Vec<_>>().join(": ")
}

/// The cluster every test of this process shares.
fn shared_cluster() -> &'static Result<Cluster, String> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(Durability::NoFsync))
}

/// The URL of a new, empty database of its own for the caller: on `POOLBILL_TEST_POSTGRES`
/// when set, else on this process's throwaway cluster. Panics, saying how to install
/// PostgreSQL, when there is none.
pub fn fresh_database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("poolbill_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let server = match std::env::var("POOLBILL_TEST_POSTGRES") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => match shared_cluster() {
            Ok(cluster) => cluster.url("postgres"),
            Err(e) => panic!("no PostgreSQL to test on: {e}"),
        },
    };
    execute(&server, &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("creating a test database: {e}"));
    with_database(&server, &name).unwrap_or_else(|e| panic!("POOLBILL_TEST_POSTGRES: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_their_database_replaced() {
        assert_eq!(with_database("postgres://u:p@h:5/db", "t").unwrap(), "postgres://u:p@h:5/t");
        assert_eq!(with_database("postgres://u@h", "t").unwrap(), "postgres://u@h/t");
        assert_eq!(with_database("postgresql://h/db?sslmode=disable", "t").unwrap(), "postgresql://h/t?sslmode=disable");
        assert_eq!(with_database("postgres://h?x=1", "t").unwrap(), "postgres://h/t?x=1");
        assert!(with_database("mysql://h/db", "t").is_err());
    }
}
