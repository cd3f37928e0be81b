//! `poolbill-store-postgres`: poolbill's event store on PostgreSQL, for operators who keep the
//! log in a database they already run and back up (the embedded sled store stays the default).
//!
//! # Client
//!
//! [`EventStore`] is blocking: the engine calls it from `spawn_blocking` threads, the log tools
//! from plain threads. The store owns a small tokio runtime of its own (one worker, which drives
//! the connections) and a deadpool pool of tokio-postgres connections; each call polls its
//! future on the calling thread, in that runtime's context, and waits for it there. So callers
//! need no runtime, any thread may call (an async one too, where it blocks as sled's calls do:
//! the engine calls from `spawn_blocking` threads), and several threads use several connections
//! at once.
//!
//! # Order and durability
//!
//! Every append transaction first takes one transaction-scoped advisory lock
//! (`pg_advisory_xact_lock`), so appends are serialised: positions are given as the last one
//! plus one, gapless, and a transaction commits (and becomes visible) before the next appender
//! can even read the head. A reader therefore never sees position p+1 without p: commits land in
//! position order. Appends are group-committed (a batch is one transaction, one lock, one
//! commit), so one writer at a time costs little. `synchronous_commit` is on for the store's
//! sessions: a commit that returns is on disk.
//!
//! See [`schema`] for the tables, [`plan`] for how a batch is decided and the event ids.

pub mod cluster;
pub mod lease;
pub mod plan;
pub mod schema;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use plan::{Group, Head, Plan, Stored};
use poolbill_store::{
    merkle_chunk_root, AppendOutcome, AppendRequest, ChainOutcome, CommandRecord, Envelope, EventStore, Hash, Instant, Payload, StoreError,
    VerifyReport, MERKLE_CHUNK, SNAPSHOTS_KEPT,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio_postgres::Row;
use uuid::Uuid;

pub use lease::{Holder, Lease, LeaseError, Take};
pub use plan::{event_id, event_id_in};

/// Key of the transaction-scoped advisory lock every append takes (ASCII "poolbill").
const APPEND_LOCK: i64 = 0x706f_6f6c_6269_6c6c;

/// How many events a read of the whole log fetches at a time.
const PAGE: i64 = 1000;

/// How long connecting may take when the URL does not say (`connect_timeout`).
pub(crate) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections a store keeps open at most, unless told otherwise.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// The event columns every read selects, in the order [`decode_row`] reads them.
const EVENT_COLUMNS: &str =
    "position, id, stream, version, event_type, schema_version, at_seconds, at_nanos, at_offset, command_id, payload_json::text, payload_binary, checksum";

/// A row of a page of the log: its position, and the row decoded with its id (or why not).
type PagedRow = (i64, Result<(Envelope, Uuid), StoreError>);

/// Handle on a PostgreSQL event log. Cheap to clone; share it across threads.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The shard whose log this is (its event ids name it), if the store is a shard.
    shard: Option<String>,
    /// The schema (namespace) the store's tables are in; `None`: the session's default.
    schema: Option<String>,
    /// Key of the append lock: per schema, so that shards sharing a database do not queue on
    /// one another's appends.
    append_lock: i64,
    /// The epoch of the lease this writer holds (a fencing token), once it holds one: every
    /// append then checks it under the shard's lease row.
    fence: std::sync::OnceLock<i64>,
    /// Taken on drop and shut down in the background: dropping a runtime waits for its tasks,
    /// which may not be done on an async thread.
    runtime: Option<tokio::runtime::Runtime>,
    /// Where the database is, without credentials, for messages.
    name: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::backend(context, e)
}

fn pool_error(context: impl Into<String>) -> impl FnOnce(deadpool_postgres::PoolError) -> StoreError {
    move |e| StoreError::backend(context, e)
}

fn corrupt(position: u64, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt { position, detail: detail.into() }
}

/// A position, version or count as PostgreSQL's `bigint`.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A `bigint` column that must hold a position, version or count.
fn unsigned(n: i64, position: u64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| corrupt(position, format!("{what} is negative ({n})")))
}

fn text(bytes: Vec<u8>, position: u64, what: &str) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| corrupt(position, format!("{what} is not UTF-8")))
}

/// The byte string right after every string that starts with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// An instant from its UTC seconds, nanoseconds and offset.
fn instant(seconds: i64, nanos: i32, offset: i32, position: u64) -> Result<Instant, StoreError> {
    let offset = chrono::FixedOffset::east_opt(offset).ok_or_else(|| corrupt(position, format!("UTC offset {offset} s is out of range")))?;
    let nanos = u32::try_from(nanos).map_err(|_| corrupt(position, "negative nanoseconds"))?;
    chrono::DateTime::from_timestamp(seconds, nanos).map(|at| at.with_timezone(&offset)).ok_or_else(|| corrupt(position, "instant out of range"))
}

/// An event row (selected as [`EVENT_COLUMNS`]) back as its envelope, its checksum checked.
fn decode_row(row: &Row) -> Result<Envelope, StoreError> {
    decode_row_with_id(row).map(|(envelope, _)| envelope)
}

/// [`decode_row`], with the event's id.
fn decode_row_with_id(row: &Row) -> Result<(Envelope, Uuid), StoreError> {
    let position = unsigned(row.get(0), 0, "a position")?;
    let id: Uuid = row.get(1);
    let payload = match (row.get::<_, Option<String>>(10), row.get::<_, Option<Vec<u8>>>(11)) {
        (Some(json), None) => Stored::Json(json),
        (None, Some(bytes)) => Stored::Binary(bytes),
        _ => return Err(corrupt(position, "the event has no payload, or two")),
    };
    let envelope = Envelope {
        position,
        stream: text(row.get(2), position, "the stream id")?,
        version: unsigned(row.get(3), position, "the version")?,
        event_type: text(row.get(4), position, "the event type")?,
        schema_version: u32::try_from(row.get::<_, i64>(5)).map_err(|_| corrupt(position, "the schema version is out of range"))?,
        at: instant(row.get(6), row.get(7), row.get(8), position)?,
        command_id: row.get::<_, Option<Vec<u8>>>(9).map(|c| text(c, position, "the command id")).transpose()?,
        payload: Payload::Binary(Vec::new()),
    };
    let stored = row.get::<_, i64>(12);
    let computed = plan::checksum(&envelope, &id, &payload);
    if stored != i64::from(computed) {
        return Err(corrupt(position, format!("checksum mismatch: stored {stored:08x}, computed {computed:08x}")));
    }
    let payload = match payload {
        Stored::Json(json) => Payload::Json(serde_json::from_str(&json).map_err(|e| corrupt(position, format!("payload JSON: {e}")))?),
        Stored::Binary(bytes) => Payload::Binary(bytes),
    };
    Ok((Envelope { payload, ..envelope }, id))
}

fn decode_command(id: &str, row: &Row) -> Result<CommandRecord, StoreError> {
    let bad = |what: &str| corrupt(0, format!("command record {id:?}: {what}"));
    let position = |n: Option<i64>| n.map(|n| u64::try_from(n).map_err(|_| bad("a negative position"))).transpose();
    Ok(CommandRecord {
        first_position: position(row.get("first_position"))?,
        last_position: position(row.get("last_position"))?,
        outcome: serde_json::from_str(row.get("outcome")).map_err(|e| bad(&format!("outcome JSON: {e}")))?,
        fingerprint: row.get::<_, Option<Vec<u8>>>("fingerprint").map(String::from_utf8).transpose().map_err(|_| bad("fingerprint is not UTF-8"))?,
    })
}

/// The statement for `sql`, prepared once per connection and then reused: a query is then one
/// round trip, not two (parse, then execute).
async fn prepared(client: &impl GenericClient, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
    client.prepare_cached(sql).await.map_err(pg(format!("preparing {sql}")))
}

async fn read_head(client: &impl GenericClient) -> Result<Head, StoreError> {
    let row = client
        .query_opt(&prepared(client, "SELECT position, at_seconds, at_nanos, at_offset FROM events ORDER BY position DESC LIMIT 1").await?, &[])
        .await
        .map_err(pg("reading the end of the log"))?;
    match row {
        None => Ok(Head::default()),
        Some(row) => {
            let position = unsigned(row.get(0), 0, "the last position")?;
            Ok(Head { last_position: position, last_instant: Some(instant(row.get(1), row.get(2), row.get(3), position)?) })
        }
    }
}

/// Whether `url` is a PostgreSQL URL this store can use; why not, if not.
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<tokio_postgres::Config>().map(|_| ()).map_err(|e| format!("not a PostgreSQL URL (postgres://user:password@host:port/database): {e}"))
}

/// Where `url` points (host, port, database), without its credentials, for messages.
pub fn display_url(url: &str) -> String {
    url.parse::<tokio_postgres::Config>().map(|c| describe(&c)).unwrap_or_else(|_| "(not a PostgreSQL URL)".to_string())
}

/// How to open a store: its pool's size, and for a shard its schema and id.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connections kept open at most.
    pub pool_size: usize,
    /// The schema (namespace) of the store's tables, created if absent; `None`: the session's
    /// default (`public`). Lowercase letters, digits and `_` ([`schema::check_schema_name`]).
    pub schema: Option<String>,
    /// The shard's id, named in every event id ([`event_id_in`]); `None`: an unsharded store.
    pub shard: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options { pool_size: DEFAULT_POOL_SIZE, schema: None, shard: None }
    }
}

/// Why an existing store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The database holds no poolbill schema: nothing was created in it.
    #[error("the database at {0} is not a poolbill store (it has no schema_version table)")]
    NotAStore(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PostgresStore {
    /// Connect to a database that already holds a poolbill store (a tool that only reads never
    /// creates one), migrating it if this binary's schema is newer.
    pub fn connect_existing(url: &str) -> Result<PostgresStore, OpenError> {
        PostgresStore::connect_existing_options(url, &Options::default())
    }

    /// [`PostgresStore::connect_existing`] as `options` say (a shard's schema must hold a store).
    pub fn connect_existing_options(url: &str, options: &Options) -> Result<PostgresStore, OpenError> {
        let name = match &options.schema {
            Some(schema) => format!("{} (schema {schema})", display_url(url)),
            None => display_url(url),
        };
        let table = match &options.schema {
            Some(schema) => format!("{schema}.schema_version"),
            None => "schema_version".to_string(),
        };
        let mut probe: tokio_postgres::Config = url.parse().map_err(pg("reading the PostgreSQL URL (postgres://user@host:port/database)"))?;
        if probe.get_connect_timeout().is_none() {
            probe.connect_timeout(CONNECT_TIMEOUT);
        }
        let context = format!("looking for a poolbill schema in {name}");
        // On a thread and runtime of its own: the caller may be any thread.
        let exists = std::thread::spawn(move || -> Result<bool, StoreError> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| StoreError::io("starting a runtime", e))?;
            runtime.block_on(async {
                let (client, connection) = probe.connect(tokio_postgres::NoTls).await.map_err(pg(&context))?;
                let connection = tokio::spawn(connection);
                let row = client.query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&table]).await.map_err(pg(&context));
                drop(client);
                let _ = connection.await;
                Ok(row?.get(0))
            })
        })
        .join()
        .map_err(|_| StoreError::Internal("the schema probe panicked"))??;
        if !exists {
            return Err(OpenError::NotAStore(name));
        }
        Ok(PostgresStore::connect_options(url, options)?)
    }

    /// Connect to the database at `url` (`postgres://user:password@host:port/database`), create
    /// or migrate its schema, with at most [`DEFAULT_POOL_SIZE`] connections.
    pub fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with(url, DEFAULT_POOL_SIZE)
    }

    /// [`PostgresStore::connect`] with at most `pool_size` connections.
    pub fn connect_with(url: &str, pool_size: usize) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_options(url, &Options { pool_size, ..Options::default() })
    }

    /// [`PostgresStore::connect`] as `options` say: a shard's store lives in a schema of its
    /// own (created with the tables) and names its shard in its event ids.
    pub fn connect_options(url: &str, options: &Options) -> Result<PostgresStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(pg("reading the PostgreSQL URL (postgres://user@host:port/database)"))?;
        if let Some(schema) = &options.schema {
            schema::check_schema_name(schema).map_err(|e| StoreError::backend("opening a shard's store", std::io::Error::other(e)))?;
        }
        let name = match &options.schema {
            Some(schema) => format!("{} (schema {schema})", describe(&config)),
            None => describe(&config),
        };
        let pool_size = options.pool_size;
        // The shard's tables first: every statement names tables unqualified.
        let search_path = options.schema.as_ref().map(|s| format!(" -c search_path={s}")).unwrap_or_default();
        // A commit that returns must be on disk, whatever the server's default.
        let options_line = format!("{} -c synchronous_commit=on{search_path}", config.get_options().unwrap_or_default());
        config.options(options_line.trim());
        if config.get_application_name().is_none() {
            config.application_name("poolbill");
        }
        // A server that does not answer is an error in reasonable time, not a hang.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("poolbill-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("starting the PostgreSQL client's runtime", e))?;
        let manager = Manager::from_config(config, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::backend(format!("creating the connection pool for {name}"), e))?;
        let append_lock = options.schema.as_deref().map_or(APPEND_LOCK, |s| lease::lock_key("poolbill-append", s));
        let inner = Inner {
            pool,
            shard: options.shard.clone(),
            schema: options.schema.clone(),
            append_lock,
            fence: std::sync::OnceLock::new(),
            runtime: Some(runtime),
            name,
        };
        let store = PostgresStore { inner: Arc::new(inner) };
        let context = format!("opening the PostgreSQL store at {}", store.inner.name);
        let schema = store.inner.schema.clone();
        store.block_on(async {
            let mut client = store.inner.pool.get().await.map_err(pool_error(&context))?;
            schema::migrate(&mut client, schema.as_deref()).await.map_err(|e| StoreError::backend(&context, e))
        })?;
        Ok(store)
    }

    /// The shard this store is, if it is one.
    pub fn shard(&self) -> Option<&str> {
        self.inner.shard.as_deref()
    }

    /// The schema the store's tables are in, if not the session's default.
    pub fn schema(&self) -> Option<&str> {
        self.inner.schema.as_deref()
    }

    /// From now on every append checks that the shard's lease is still at `epoch` (taken by
    /// [`Lease::take`]): once another engine takes the shard, this one can write nothing. Set
    /// once; a second call with another epoch is refused.
    pub fn fence(&self, epoch: i64) -> Result<(), StoreError> {
        match self.inner.fence.get_or_init(|| epoch) {
            held if *held == epoch => Ok(()),
            _ => Err(StoreError::Internal("a store is fenced by one lease only")),
        }
    }

    /// Who holds the shard's lease (the last engine that took it, its epoch, and whether its
    /// lock is still held, i.e. that engine is alive); `None` if no engine ever took it.
    pub fn lease_holder(&self) -> Result<Option<Holder>, StoreError> {
        let key = lease::lock_key("poolbill-shard-lease", self.inner.schema.as_deref().unwrap_or("public"));
        self.with_client("reading the shard's lease", |client| async move { lease::holder(&client, key).await })
    }

    /// Where the database is (host, port, database; no credentials).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.with_client("reading the schema version", |client| async move {
            schema::current(&client).await.map_err(|e| StoreError::backend("reading the schema version", e))
        })
    }

    /// The id of the event at `position`, if the log reaches it.
    pub fn event_id_at(&self, position: u64) -> Result<Option<Uuid>, StoreError> {
        self.with_client("reading an event id", |client| async move {
            let row = client.query_opt("SELECT id FROM events WHERE position = $1", &[&big(position)]).await.map_err(pg("reading an event id"))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    /// Run SQL statements on the store's database as they are (tests plant damage with it;
    /// operators' tooling may need it): nothing here checks what they do.
    pub fn execute_unchecked(&self, sql: &str) -> Result<(), StoreError> {
        let sql = sql.to_string();
        self.with_client("running SQL", |client| async move { client.batch_execute(&sql).await.map_err(pg("running SQL")) })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.inner.runtime.as_ref().expect("the runtime lives as long as the store")
    }

    /// Run `future` to completion on the calling thread, whatever thread it is: the future is
    /// polled here, in the store runtime's context, and its I/O and timers are driven by that
    /// runtime's worker. Unlike `Runtime::block_on` this never refuses an async thread (where it
    /// blocks, as any blocking store does); a store's callers should still call from
    /// `spawn_blocking` threads there.
    fn block_on<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        let _context = self.runtime().enter();
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut cx) {
                return value;
            }
            // Woken (or spuriously): poll again.
            std::thread::park();
        }
    }

    /// Run `work` with a pooled connection, blocking until it is done.
    fn with_client<T, F: std::future::Future<Output = Result<T, StoreError>>>(
        &self,
        context: &str,
        work: impl FnOnce(deadpool_postgres::Object) -> F,
    ) -> Result<T, StoreError> {
        self.block_on(async {
            let client = self.inner.pool.get().await.map_err(pool_error(format!("{context}: connecting to {}", self.inner.name)))?;
            work(client).await
        })
    }

    /// Decide and write `reqs` as ONE transaction: the append lock, the head, the batch's
    /// command records and stream versions read once; each request decided in memory on the
    /// state the earlier ones leave (see [`plan`]); the events and records of those that pass
    /// inserted by one statement each; one commit. A request that fails its checks writes
    /// nothing and the others go on (a chain stops there). A database error fails the batch
    /// whole: nothing of it was written.
    fn apply(&self, reqs: Vec<AppendRequest>, group: Group) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let context = format!("append transaction ({} requests)", reqs.len());
        self.block_on(async {
            let mut client = self.inner.pool.get().await.map_err(pool_error(format!("{context}: connecting to {}", self.inner.name)))?;
            let tx = client.transaction().await.map_err(pg(&context))?;
            tx.execute(&prepared(&tx, "SELECT pg_advisory_xact_lock($1)").await?, &[&self.inner.append_lock]).await.map_err(pg(&context))?;
            if let Some(epoch) = self.inner.fence.get() {
                lease::check_fence(&tx, *epoch, self.inner.shard.as_deref().unwrap_or("(unnamed)")).await?;
            }
            let head = read_head(&tx).await?;
            let ids: Vec<&[u8]> = reqs.iter().filter_map(|r| r.command_id.as_deref().map(str::as_bytes)).collect();
            let known = commands_of(&tx, &ids).await?;
            let streams: HashSet<&str> =
                reqs.iter().flat_map(|r| r.expected.iter().map(|(s, _)| s.as_str()).chain(r.events.iter().map(|e| e.stream.as_str()))).collect();
            let versions = versions_of(&tx, &streams.into_iter().collect::<Vec<_>>()).await?;
            let Plan { results, rows, commands } = plan::plan(self.inner.shard.as_deref(), head, known, versions, &reqs, group);
            insert_events(&tx, &rows).await?;
            insert_commands(&tx, &commands).await?;
            if let Err(e) = tx.commit().await {
                // The server answered the COMMIT with an error: it rolled back, nothing is written.
                // No answer (the connection failed): it may have committed; the log says which.
                let answered = e.as_db_error().is_some();
                let error = pg(format!("{context}: committing"))(e);
                return Err(if answered {
                    error
                } else {
                    StoreError::OutcomeUnknown {
                        context: format!("{context}: the connection failed before the commit was answered"),
                        source: Box::new(error),
                    }
                });
            }
            Ok(results)
        })
    }

    /// One page of the log from `from` on: each row's position, and the row decoded with its
    /// id, or why it cannot be (each on its own, so that the rows before a damaged one are read).
    fn page(&self, from: u64) -> Result<Vec<PagedRow>, StoreError> {
        let context = format!("reading events from position {from}");
        self.with_client(&context.clone(), |client| async move {
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position >= $1 ORDER BY position LIMIT $2");
            let statement = client.prepare_cached(&sql).await.map_err(pg(&context))?;
            let rows = client.query(&statement, &[&big(from), &PAGE]).await.map_err(pg(&context))?;
            Ok(rows.iter().map(|row| (row.get(0), decode_row_with_id(row))).collect())
        })
    }
}

/// The Merkle index's tail: the leaf hashes after the last complete chunk, as many as `through`
/// leaves past it.
fn decode_tail(bytes: Vec<u8>, through: u64) -> Result<Vec<Hash>, StoreError> {
    if bytes.len() as u64 != 32 * (through % MERKLE_CHUNK) {
        return Err(corrupt(0, format!("the Merkle index's tail holds {} bytes, but it reaches position {through}", bytes.len())));
    }
    Ok(bytes.chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect())
}

/// Wakes the thread that waits in [`PostgresStore::block_on`].
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Host, port and database of `config`, for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or("(default database)"))
}

/// The records of those of `ids` that were used.
async fn commands_of(client: &impl GenericClient, ids: &[&[u8]]) -> Result<HashMap<String, CommandRecord>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            &prepared(
                client,
                "SELECT command_id, first_position, last_position, outcome::text AS outcome, fingerprint FROM commands WHERE command_id = ANY($1)",
            )
            .await?,
            &[&ids],
        )
        .await
        .map_err(pg("reading command records"))?;
    rows.iter()
        .map(|row| {
            let id = text(row.get(0), 0, "a command id")?;
            let record = decode_command(&id, row)?;
            Ok((id, record))
        })
        .collect()
}

/// The current versions of those of `streams` that have events.
async fn versions_of(client: &impl GenericClient, streams: &[&str]) -> Result<HashMap<String, u64>, StoreError> {
    if streams.is_empty() {
        return Ok(HashMap::new());
    }
    let keys: Vec<&[u8]> = streams.iter().map(|s| s.as_bytes()).collect();
    let rows = client
        .query(&prepared(client, "SELECT stream, max(version) FROM events WHERE stream = ANY($1) GROUP BY stream").await?, &[&keys])
        .await
        .map_err(pg("reading stream versions"))?;
    rows.iter().map(|row| Ok((text(row.get(0), 0, "a stream id")?, unsigned(row.get(1), 0, "a stream's version")?))).collect()
}

async fn insert_events(client: &impl GenericClient, rows: &[plan::Row]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let envelopes = rows.iter().map(|r| &r.envelope);
    let positions: Vec<i64> = envelopes.clone().map(|e| big(e.position)).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let streams: Vec<&[u8]> = envelopes.clone().map(|e| e.stream.as_bytes()).collect();
    let versions: Vec<i64> = envelopes.clone().map(|e| big(e.version)).collect();
    let types: Vec<&[u8]> = envelopes.clone().map(|e| e.event_type.as_bytes()).collect();
    let schemas: Vec<i64> = envelopes.clone().map(|e| i64::from(e.schema_version)).collect();
    let seconds: Vec<i64> = envelopes.clone().map(|e| e.at.timestamp()).collect();
    let nanos: Vec<i32> = envelopes.clone().map(|e| e.at.timestamp_subsec_nanos() as i32).collect();
    let offsets: Vec<i32> = envelopes.clone().map(|e| e.at.offset().local_minus_utc()).collect();
    let commands: Vec<Option<&[u8]>> = envelopes.clone().map(|e| e.command_id.as_deref().map(str::as_bytes)).collect();
    let json: Vec<Option<&str>> = rows.iter().map(|r| if let Stored::Json(t) = &r.payload { Some(t.as_str()) } else { None }).collect();
    let binary: Vec<Option<&[u8]>> = rows.iter().map(|r| if let Stored::Binary(b) = &r.payload { Some(b.as_slice()) } else { None }).collect();
    let checksums: Vec<i64> = rows.iter().map(|r| i64::from(r.checksum)).collect();
    let context = format!("writing events {}..={}", positions[0], positions[positions.len() - 1]);
    let statement = client
        .prepare_cached(
            "INSERT INTO events (position, id, stream, version, event_type, schema_version, at_seconds, at_nanos, at_offset, command_id, payload_json, payload_binary, checksum)
             SELECT p, i, s, v, t, sv, sec, ns, off, c, j::json, b, k
             FROM UNNEST($1::bigint[], $2::uuid[], $3::bytea[], $4::bigint[], $5::bytea[], $6::bigint[], $7::bigint[], $8::integer[], $9::integer[], $10::bytea[], $11::text[], $12::bytea[], $13::bigint[])
                  AS u(p, i, s, v, t, sv, sec, ns, off, c, j, b, k)",
        )
        .await
        .map_err(pg(&context))?;
    client
        .execute(
            &statement,
            &[&positions, &ids, &streams, &versions, &types, &schemas, &seconds, &nanos, &offsets, &commands, &json, &binary, &checksums],
        )
        .await
        .map_err(pg(&context))?;
    Ok(())
}

async fn insert_commands(client: &impl GenericClient, commands: &[(String, CommandRecord)]) -> Result<(), StoreError> {
    if commands.is_empty() {
        return Ok(());
    }
    let ids: Vec<&[u8]> = commands.iter().map(|(id, _)| id.as_bytes()).collect();
    let firsts: Vec<Option<i64>> = commands.iter().map(|(_, r)| r.first_position.map(big)).collect();
    let lasts: Vec<Option<i64>> = commands.iter().map(|(_, r)| r.last_position.map(big)).collect();
    let outcomes: Vec<String> = commands
        .iter()
        .map(|(id, r)| {
            serde_json::to_string(&r.outcome)
                .map_err(|e| StoreError::Encode { context: format!("serializing the outcome of command {id:?}"), source: e.into() })
        })
        .collect::<Result<_, _>>()?;
    let fingerprints: Vec<Option<&[u8]>> = commands.iter().map(|(_, r)| r.fingerprint.as_deref().map(str::as_bytes)).collect();
    let statement = client
        .prepare_cached(
            "INSERT INTO commands (command_id, first_position, last_position, outcome, fingerprint)
             SELECT c, f, l, o::json, fp FROM UNNEST($1::bytea[], $2::bigint[], $3::bigint[], $4::text[], $5::bytea[]) AS u(c, f, l, o, fp)",
        )
        .await
        .map_err(pg("writing command records"))?;
    client.execute(&statement, &[&ids, &firsts, &lasts, &outcomes, &fingerprints]).await.map_err(pg("writing command records"))?;
    Ok(())
}

impl EventStore for PostgresStore {
    /// Group commit: one transaction (see `apply`), each request atomic on its own; its commit
    /// is the flush (`synchronous_commit` on). The outer `Err`: nothing of the batch was written.
    fn append_batch(&self, reqs: Vec<AppendRequest>) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        self.apply(reqs, Group::Independent)
    }

    /// Group commit of a chain: one transaction, applied in order until the first request that
    /// fails; the prefix is committed.
    fn append_chain(&self, reqs: Vec<AppendRequest>) -> Result<ChainOutcome, StoreError> {
        let mut applied = Vec::with_capacity(reqs.len());
        for (i, result) in self.apply(reqs, Group::Chain)?.into_iter().enumerate() {
            match result {
                Ok(outcome) => applied.push(outcome),
                Err(e) => return Ok((applied, Some((i, e)))),
            }
        }
        Ok((applied, None))
    }

    /// A page at a time; a gap (a position missing) or a damaged row ends it with its error.
    fn read_all(&self, from_position: u64) -> Box<dyn Iterator<Item = Result<Envelope, StoreError>> + Send + '_> {
        Box::new(self.events_with_ids(from_position).map(|item| item.map(|(envelope, _)| envelope)))
    }

    fn read_stream(&self, stream: &str, from_version: u64) -> Result<Vec<Envelope>, StoreError> {
        let start = from_version.max(1);
        let context = format!("reading stream {stream:?}");
        let rows = self.with_client(&context.clone(), |client| async move {
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE stream = $1 AND version >= $2 ORDER BY version");
            client.query(&prepared(&client, &sql).await?, &[&stream.as_bytes(), &big(start)]).await.map_err(pg(&context))
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (row, expected) in rows.iter().zip(start..) {
            let envelope = decode_row(row)?;
            if envelope.version != expected || envelope.stream != stream {
                return Err(corrupt(
                    envelope.position,
                    format!("stream {stream:?} has a gap: expected version {expected}, found {}", envelope.version),
                ));
            }
            out.push(envelope);
        }
        Ok(out)
    }

    fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let context = format!("reading the version of stream {stream:?}");
        self.with_client(&context.clone(), |client| async move {
            let row = client
                .query_one(&prepared(&client, "SELECT coalesce(max(version), 0) FROM events WHERE stream = $1").await?, &[&stream.as_bytes()])
                .await
                .map_err(pg(&context))?;
            unsigned(row.get(0), 0, "a stream's version")
        })
    }

    fn read_at(&self, position: u64) -> Result<Option<Envelope>, StoreError> {
        if position == 0 {
            return Ok(None);
        }
        let context = format!("reading the event at position {position}");
        let row = self.with_client(&context.clone(), |client| async move {
            let statement = prepared(&client, &format!("SELECT {EVENT_COLUMNS} FROM events WHERE position = $1")).await?;
            client.query_opt(&statement, &[&big(position)]).await.map_err(pg(&context))
        })?;
        row.as_ref().map(decode_row).transpose()
    }

    fn tagged(&self, tag: &str, from: u64, limit: usize) -> Result<Vec<u64>, StoreError> {
        let context = format!("reading the index of tag {tag:?}");
        self.with_client(&context.clone(), |client| async move {
            let rows = client
                .query(
                    "SELECT position FROM tags WHERE tag = $1 AND position >= $2 ORDER BY position LIMIT $3",
                    &[&tag.as_bytes(), &big(from), &big(limit as u64)],
                )
                .await
                .map_err(pg(&context))?;
            rows.iter().map(|r| unsigned(r.get(0), 0, "a tagged position")).collect()
        })
    }

    fn tag_counts(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let context = format!("counting tags starting with {prefix:?}");
        let end = prefix_end(prefix.as_bytes());
        self.with_client(&context.clone(), |client| async move {
            let rows = client
                .query(
                    "SELECT tag, count(*) FROM tags WHERE tag >= $1 AND ($2::bytea IS NULL OR tag < $2) GROUP BY tag ORDER BY tag",
                    &[&prefix.as_bytes(), &end.as_deref()],
                )
                .await
                .map_err(pg(&context))?;
            rows.iter().map(|r| Ok((text(r.get(0), 0, "a tag")?, unsigned(r.get(1), 0, "a tag's count")?))).collect()
        })
    }

    fn tag_counts_between(&self, from: &str, to: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let context = format!("counting tags from {from:?} to {to:?}");
        self.with_client(&context.clone(), |client| async move {
            let rows = client
                .query("SELECT tag, count(*) FROM tags WHERE tag >= $1 AND tag < $2 GROUP BY tag ORDER BY tag", &[&from.as_bytes(), &to.as_bytes()])
                .await
                .map_err(pg(&context))?;
            rows.iter().map(|r| Ok((text(r.get(0), 0, "a tag")?, unsigned(r.get(1), 0, "a tag's count")?))).collect()
        })
    }

    fn tagged_through(&self) -> Result<u64, StoreError> {
        Ok(self.tag_state()?.0)
    }

    fn tags_version(&self) -> Result<u32, StoreError> {
        Ok(self.tag_state()?.1)
    }

    fn reset_tags(&self, version: u32) -> Result<(), StoreError> {
        self.with_client("dropping the tag index", |mut client| async move {
            let tx = client.transaction().await.map_err(pg("dropping the tag index"))?;
            tx.execute("DELETE FROM tags", &[]).await.map_err(pg("dropping the tag index"))?;
            tx.execute("UPDATE tag_state SET tagged_through = 0, version = $1", &[&i64::from(version)])
                .await
                .map_err(pg("recording the tag index's version"))?;
            tx.commit().await.map_err(pg("dropping the tag index"))
        })
    }

    /// One transaction: the index's state row locked, continuity checked against it and the
    /// log's end, the tags inserted by one statement, how far they reach moved on.
    fn tag_existing(&self, tagged: &[(u64, Vec<String>)]) -> Result<(), StoreError> {
        self.with_client("writing the tag index", |mut client| async move {
            let context = "writing the tag index";
            let tx = client.transaction().await.map_err(pg(context))?;
            let row = tx.query_one("SELECT tagged_through FROM tag_state FOR UPDATE", &[]).await.map_err(pg(context))?;
            let mut through = unsigned(row.get(0), 0, "tagged_through")?;
            let last = read_head(&tx).await?.last_position;
            let (mut tags, mut positions): (Vec<&[u8]>, Vec<i64>) = (Vec::new(), Vec::new());
            // Events another catch-up indexed meanwhile are skipped (their tags are the same).
            let fresh = tagged.iter().position(|(p, _)| *p > through).unwrap_or(tagged.len());
            if fresh == tagged.len() {
                return Ok(());
            }
            for (position, list) in &tagged[fresh..] {
                if *position != through + 1 || *position > last {
                    return Err(StoreError::Internal("tags of existing events must continue the index, in order, within the log"));
                }
                // A tag given twice for one event is one posting.
                let mut seen = HashSet::new();
                for tag in list.iter().filter(|t| seen.insert(t.as_str())) {
                    tags.push(tag.as_bytes());
                    positions.push(big(*position));
                }
                through = *position;
            }
            if !tags.is_empty() {
                tx.execute("INSERT INTO tags (tag, position) SELECT * FROM UNNEST($1::bytea[], $2::bigint[])", &[&tags, &positions])
                    .await
                    .map_err(pg(context))?;
            }
            tx.execute("UPDATE tag_state SET tagged_through = $1", &[&big(through)]).await.map_err(pg(context))?;
            tx.commit().await.map_err(pg(context))
        })
    }

    fn merkle_through(&self) -> Result<u64, StoreError> {
        self.with_client("reading how far the Merkle index reaches", |client| async move {
            let row = client.query_one("SELECT through FROM merkle_state", &[]).await.map_err(pg("reading how far the Merkle index reaches"))?;
            unsigned(row.get(0), 0, "the Merkle index's through")
        })
    }

    /// One transaction, the state row locked: the roots of the chunks completed, the new tail,
    /// how far it reaches.
    fn merkle_extend(&self, leaves: &[(u64, Hash)]) -> Result<(), StoreError> {
        let context = "writing the Merkle index";
        self.with_client(context, |mut client| async move {
            let tx = client.transaction().await.map_err(pg(context))?;
            let row = tx.query_one("SELECT through, tail FROM merkle_state FOR UPDATE", &[]).await.map_err(pg(context))?;
            let through = unsigned(row.get(0), 0, "the Merkle index's through")?;
            let mut tail = decode_tail(row.get(1), through)?;
            // Leaves another catch-up added meanwhile are skipped (their hashes are the same).
            let leaves = &leaves[leaves.iter().position(|(p, _)| *p > through).unwrap_or(leaves.len())..];
            if leaves.is_empty() {
                return Ok(());
            }
            let last = read_head(&tx).await?.last_position;
            for (k, (position, _)) in leaves.iter().enumerate() {
                if *position != through + 1 + k as u64 || *position > last {
                    return Err(StoreError::Internal("Merkle leaves of existing events must continue the index, in order, within the log"));
                }
            }
            let (mut chunks, mut roots): (Vec<i64>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
            let mut chunk = through / MERKLE_CHUNK;
            for (_, hash) in leaves {
                tail.push(*hash);
                if tail.len() as u64 == MERKLE_CHUNK {
                    chunks.push(big(chunk));
                    roots.push(merkle_chunk_root(&tail).to_vec());
                    tail.clear();
                    chunk += 1;
                }
            }
            if !chunks.is_empty() {
                tx.execute("INSERT INTO merkle_chunks (chunk, root) SELECT * FROM UNNEST($1::bigint[], $2::bytea[])", &[&chunks, &roots])
                    .await
                    .map_err(pg(context))?;
            }
            tx.execute("UPDATE merkle_state SET through = $1, tail = $2", &[&big(through + leaves.len() as u64), &tail.concat()])
                .await
                .map_err(pg(context))?;
            tx.commit().await.map_err(pg(context))
        })
    }

    fn merkle_chunk_roots(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        let context = "reading Merkle chunk roots";
        self.with_client(context, |client| async move {
            let row = client.query_one("SELECT through FROM merkle_state", &[]).await.map_err(pg(context))?;
            let complete = unsigned(row.get(0), 0, "the Merkle index's through")? / MERKLE_CHUNK;
            if to > complete {
                return Err(StoreError::Internal("a Merkle chunk asked for is not complete in the index"));
            }
            if from >= to {
                return Ok(Vec::new());
            }
            let rows = client
                .query("SELECT chunk, root FROM merkle_chunks WHERE chunk >= $1 AND chunk < $2 ORDER BY chunk", &[&big(from), &big(to)])
                .await
                .map_err(pg(context))?;
            let mut roots = Vec::with_capacity(rows.len());
            for (expected, row) in (from..to).zip(&rows) {
                let chunk = unsigned(row.get(0), 0, "a Merkle chunk number")?;
                let root: Vec<u8> = row.get(1);
                match <Hash>::try_from(root.as_slice()) {
                    Ok(root) if chunk == expected => roots.push(root),
                    _ => return Err(corrupt(0, format!("the Merkle index's chunk {expected} is missing or not 32 bytes"))),
                }
            }
            if roots.len() as u64 != to - from {
                return Err(corrupt(0, format!("the Merkle index lacks chunk roots between chunks {from} and {to}")));
            }
            Ok(roots)
        })
    }

    fn merkle_tail(&self) -> Result<Vec<Hash>, StoreError> {
        let context = "reading the Merkle index's tail";
        self.with_client(context, |client| async move {
            let row = client.query_one("SELECT through, tail FROM merkle_state", &[]).await.map_err(pg(context))?;
            decode_tail(row.get(1), unsigned(row.get(0), 0, "the Merkle index's through")?)
        })
    }

    fn last_position(&self) -> Result<u64, StoreError> {
        self.with_client("reading the end of the log", |client| async move { read_head(&client).await.map(|h| h.last_position) })
    }

    fn last_instant(&self) -> Result<Option<Instant>, StoreError> {
        self.with_client("reading the end of the log", |client| async move { read_head(&client).await.map(|h| h.last_instant) })
    }

    fn command(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let context = format!("reading command {command_id:?}");
        self.with_client(&context.clone(), |client| async move {
            let ids = [command_id.as_bytes()];
            Ok(commands_of(&client, &ids)
                .await
                .map_err(|e| match e {
                    StoreError::Backend { source, .. } => StoreError::Backend { context, source },
                    other => other,
                })?
                .remove(command_id))
        })
    }

    /// One query for the whole batch (the engine asks before each group commit).
    fn commands(&self, ids: &[String]) -> Result<HashMap<String, CommandRecord>, StoreError> {
        self.with_client("reading command records", |client| async move {
            let ids: Vec<&[u8]> = ids.iter().map(|id| id.as_bytes()).collect();
            commands_of(&client, &ids).await
        })
    }

    /// Written (replacing one at the same position) and the older ones beyond the newest
    /// [`SNAPSHOTS_KEPT`] dropped, in one transaction.
    fn put_snapshot(&self, position: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let context = format!("writing the snapshot at position {position}");
        self.with_client(&context.clone(), |mut client| async move {
            let tx = client.transaction().await.map_err(pg(&context))?;
            tx.execute(
                "INSERT INTO snapshots (position, bytes) VALUES ($1, $2) ON CONFLICT (position) DO UPDATE SET bytes = excluded.bytes",
                &[&big(position), &bytes],
            )
            .await
            .map_err(pg(&context))?;
            tx.execute(
                "DELETE FROM snapshots WHERE position NOT IN (SELECT position FROM snapshots ORDER BY position DESC LIMIT $1)",
                &[&(SNAPSHOTS_KEPT as i64)],
            )
            .await
            .map_err(pg("dropping old snapshots"))?;
            tx.commit().await.map_err(pg(&context))
        })
    }

    fn snapshot_at_or_before(&self, position: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.with_client("reading snapshots", |client| async move {
            let row = client
                .query_opt("SELECT position, bytes FROM snapshots WHERE position <= $1 ORDER BY position DESC LIMIT 1", &[&big(position)])
                .await
                .map_err(pg("reading snapshots"))?;
            row.map(|r| Ok((unsigned(r.get(0), 0, "a snapshot's position")?, r.get(1)))).transpose()
        })
    }

    fn snapshot_positions(&self) -> Result<Vec<u64>, StoreError> {
        self.with_client("listing snapshots", |client| async move {
            let rows = client.query("SELECT position FROM snapshots ORDER BY position", &[]).await.map_err(pg("listing snapshots"))?;
            rows.iter().map(|r| unsigned(r.get(0), 0, "a snapshot's position")).collect()
        })
    }

    /// Every event read back (checksums, gapless positions, gapless versions per stream,
    /// instants in order, ids as derived), then the command records (decodable, pointing
    /// inside the log) and the tag index (within the log).
    fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut last_instant: Option<Instant> = None;
        // The command of the previous event and the index of that event in it.
        let mut run: Option<(String, u32)> = None;
        let mut count = 0u64;
        for item in self.events_with_ids(1) {
            let (envelope, id) = item?;
            let position = envelope.position;
            count = position;
            if let Some(last) = last_instant.filter(|last| envelope.at < *last) {
                return Err(corrupt(
                    position,
                    format!("instant {} is earlier than the previous event's {}", envelope.at.to_rfc3339(), last.to_rfc3339()),
                ));
            }
            last_instant = Some(envelope.at);
            let version = versions.entry(envelope.stream.clone()).or_insert(0);
            if envelope.version != *version + 1 {
                return Err(corrupt(position, format!("stream {:?} version {} follows version {version}", envelope.stream, envelope.version)));
            }
            *version = envelope.version;
            let index = match (&run, &envelope.command_id) {
                (Some((previous, index)), Some(id)) if previous == id => index + 1,
                _ => 0,
            };
            run = envelope.command_id.clone().map(|id| (id, index));
            let derived = event_id_in(self.inner.shard.as_deref(), envelope.command_id.as_deref(), index, &envelope.stream, envelope.version);
            if id != derived {
                return Err(corrupt(position, "the event's id is not the one derived from its command (or stream) and place"));
            }
        }
        let (commands, tags_beyond) = self.with_client("checking command records and tags", |client| async move {
            let context = "checking command records and tags";
            let rows = client
                .query("SELECT command_id, first_position, last_position, outcome::text AS outcome, fingerprint FROM commands", &[])
                .await
                .map_err(pg(context))?;
            for row in &rows {
                let id = text(row.get(0), 0, "a command id")?;
                let record = decode_command(&id, row)?;
                if let Some(p) = [record.first_position, record.last_position].into_iter().flatten().find(|p| *p == 0 || *p > count) {
                    return Err(corrupt(0, format!("command {id:?} points at position {p}, outside the log")));
                }
            }
            let beyond =
                client.query_one("SELECT count(*) FROM tags WHERE position < 1 OR position > $1", &[&big(count)]).await.map_err(pg(context))?;
            Ok((rows.len() as u64, beyond.get::<_, i64>(0)))
        })?;
        if tags_beyond > 0 {
            return Err(corrupt(0, format!("the tag index names {tags_beyond} positions outside the log")));
        }
        Ok(VerifyReport { events: count, streams: versions.len() as u64, commands })
    }
}

impl PostgresStore {
    /// Every event from `from_position` on with its id, a page at a time; a gap (a position
    /// missing) or a damaged row ends it with its error.
    fn events_with_ids(&self, from_position: u64) -> impl Iterator<Item = Result<(Envelope, Uuid), StoreError>> + Send + '_ {
        let mut expected = from_position.max(1);
        let mut buffered = VecDeque::new();
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            if buffered.is_empty() {
                match self.page(expected) {
                    Ok(page) if page.is_empty() => {
                        done = true;
                        return None;
                    }
                    Ok(page) => buffered.extend(page),
                    Err(e) => {
                        done = true;
                        return Some(Err(e));
                    }
                }
            }
            let (position, decoded) = buffered.pop_front()?;
            // A gap is named before whatever is wrong with the row after it.
            if position != big(expected) {
                done = true;
                return Some(Err(corrupt(expected, format!("gap: next stored event is at position {position}"))));
            }
            done = decoded.is_err();
            expected += 1;
            Some(decoded)
        })
    }

    /// How far the tag index reaches and its version.
    fn tag_state(&self) -> Result<(u64, u32), StoreError> {
        self.with_client("reading the tag index's state", |client| async move {
            let statement = prepared(&client, "SELECT tagged_through, version FROM tag_state").await?;
            let row = client.query_one(&statement, &[]).await.map_err(pg("reading the tag index's state"))?;
            let version = u32::try_from(row.get::<_, i64>(1)).map_err(|_| corrupt(0, "the tag index's version is out of range"))?;
            Ok((unsigned(row.get(0), 0, "tagged_through")?, version))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_the_next_byte_string() {
        assert_eq!(prefix_end(b"hour:"), Some(b"hour;".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
