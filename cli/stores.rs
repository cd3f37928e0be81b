//! Opening the store the options name (`--store DIR`, `--postgres URL`, `POOLBILL_POSTGRES`):
//! one place for every tool, so that each reads and writes a sled store and a PostgreSQL store
//! alike, through `&dyn EventStore`.

use crate::args::{StoreAt, POSTGRES_ENV};
use crate::failure::{damaged, runtime, Failure};
use poolbill_engine::Engine;
use poolbill_store::{EventStore, StoreError};
use poolbill_store_postgres::{OpenError, PostgresStore};
use poolbill_store_sled::SledStore;

impl StoreAt {
    /// The store, for messages: its directory, or its database without credentials.
    pub fn describe(&self) -> String {
        match self {
            StoreAt::Dir(dir) => format!("the store at {}", dir.display()),
            StoreAt::Postgres(url) => format!("the PostgreSQL store at {}", poolbill_store_postgres::display_url(url)),
        }
    }
}

/// A URL that is not one is bad input (exit 2), before anything is opened.
fn checked_url(url: &str) -> Result<(), Failure> {
    poolbill_store_postgres::check_url(url).map_err(|e| Failure::Input(format!("--postgres (or {POSTGRES_ENV}): {e}").into()))
}

/// A reader is done with `store` and the process ends right after: the store is left for the
/// exit to free. Dropping a sled store walks its whole page cache (sled builds a map of every
/// page for its own event log), about 10 ms at ten million events, to free memory the exit
/// frees at once. Nothing is lost: every write a reader makes (indexes brought up to date, a
/// new store's first record) is flushed as it is made, and sled recovers its files at the next
/// open as after any exit. A PostgreSQL store is closed as usual (its connections say goodbye).
pub fn leave_at_exit(store: Box<dyn EventStore>, at: &StoreAt) {
    match at {
        StoreAt::Dir(_) => std::mem::forget(store),
        StoreAt::Postgres(_) => drop(store),
    }
}

/// Open an existing store for reading: a tool never creates one. A missing directory, one
/// without a store in it, or a database without poolbill's schema is bad input (exit 2); a
/// store another process has open (a running `serve` on sled), a disk too full to open it
/// safely, or a store that cannot be opened is a failure (exit 1), damage saying so; a store of a
/// later layout than this build reads is bad input too.
pub fn open_existing(at: &StoreAt) -> Result<Box<dyn EventStore>, Failure> {
    match at {
        StoreAt::Dir(dir) => {
            let name = dir.display();
            if !dir.exists() {
                return Err(Failure::Input(format!("--store {name}: no such directory").into()));
            }
            if !dir.is_dir() {
                return Err(Failure::Input(format!("--store {name}: not a directory").into()));
            }
            if !dir.join("db").is_file() {
                return Err(Failure::Input(format!("--store {name}: not a poolbill store (no sled database in it)").into()));
            }
            let store = SledStore::open(dir).map_err(|e| match e {
                StoreError::InUse { .. } => {
                    runtime(format!("the store at {name} is in use by another process (a running `poolbill serve`?): stop it first"))(e)
                }
                e @ StoreError::Newer { .. } => Failure::Input(e.into()),
                // The disk failing (e.g. too full to open the store safely) is not damage.
                e if e.is_outage() => runtime(format!("opening the store at {name}"))(e),
                e => damaged(format!("opening the store at {name}"))(e),
            })?;
            Ok(Box::new(store))
        }
        StoreAt::Postgres(url) => {
            checked_url(url)?;
            match PostgresStore::connect_existing(url) {
                Ok(store) => Ok(Box::new(store)),
                Err(e @ OpenError::NotAStore(_)) => Err(Failure::Input(e.into())),
                Err(OpenError::Store(e)) => Err(runtime(format!("opening {}", at.describe()))(e)),
            }
        }
    }
}

/// An engine on the store named (created if absent, continued if present), or on a temporary
/// sled store when none is.
pub async fn open_engine(at: Option<&StoreAt>) -> Result<Engine, Failure> {
    match at {
        None => Engine::temporary().await.map_err(runtime("opening a temporary store")),
        Some(StoreAt::Dir(dir)) => Engine::open(dir).await.map_err(runtime(format!("opening the store at {}", dir.display()))),
        Some(at @ StoreAt::Postgres(url)) => {
            checked_url(url)?;
            let context = format!("opening {}", at.describe());
            let url = url.clone();
            // Connecting blocks: off the async threads, as every store call is.
            let store =
                tokio::task::spawn_blocking(move || PostgresStore::connect(&url)).await.map_err(runtime(&context))?.map_err(runtime(&context))?;
            Engine::start(store).await.map_err(runtime(context))
        }
    }
}
