//! A shard's lease: which engine owns the shard, fenced two ways.
//!
//! - A session-level advisory lock, keyed by the shard's schema, held on a connection of its own
//!   for as long as the owning engine runs: a second engine cannot take a shard whose owner is
//!   alive (it is refused at start, naming the owner).
//! - The lease row (`shard_lease`: owner, epoch), whose epoch is bumped by every take: the
//!   fencing token. Every append of a fenced store reads the row `FOR SHARE` under its append
//!   lock and compares the epoch with its own, so an engine whose shard was taken from it (its
//!   lock connection lost, an operator's take-over) can never write to it again, even if it is
//!   still running.

use crate::{big, pg, StoreError};
use deadpool_postgres::GenericClient;
use std::sync::mpsc;

/// FNV-1a, 64 bits, over `bytes`: a stable hash written out here so that it never changes with
/// a library's version (lock keys and the shard map's placement depend on it).
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME))
}

/// An advisory lock key for `purpose` in `schema` (advisory locks are per database, so the
/// schema tells the shards of one database apart).
pub fn lock_key(purpose: &str, schema: &str) -> i64 {
    i64::from_be_bytes(fnv1a_64(format!("{purpose}:{schema}").as_bytes()).to_be_bytes())
}

/// Who holds a shard's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    pub epoch: i64,
    /// Whether its advisory lock is held now (the owner is running).
    pub live: bool,
}

/// Why a shard could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("shard {shard} is owned by {owner} (epoch {epoch}), which is running: it cannot be taken while its owner holds it")]
    Owned { shard: String, owner: String, epoch: i64 },
    #[error("shard {shard}'s schema {schema} holds the lease of shard {found}: two shards of the map share one schema")]
    OtherShard { shard: String, schema: String, found: String },
    #[error("taking shard {shard}: {source}")]
    Store {
        shard: String,
        #[source]
        source: StoreError,
    },
}

/// A shard's lease, held while this value lives: dropping it closes its connection, which
/// releases the advisory lock (the row stays, naming the last owner).
pub struct Lease {
    shard: String,
    owner: String,
    epoch: i64,
    /// Dropped to end the connection's thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    /// Take shard `shard` (tables in `schema` of the database at `url`, created already) for
    /// `owner`: its advisory lock on a connection of its own, then the row's epoch bumped.
    /// Refused, naming the owner, while another engine holds the lock.
    pub fn take(url: &str, schema: &str, shard: &str, owner: &str) -> Result<Lease, LeaseError> {
        Lease::take_as(url, schema, shard, owner, Take::IfFree)
    }

    /// [`Lease::take`], or with [`Take::Over`] from a running owner too.
    pub fn take_as(url: &str, schema: &str, shard: &str, owner: &str, how: Take) -> Result<Lease, LeaseError> {
        let store_error = |source: StoreError| LeaseError::Store { shard: shard.to_string(), source };
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| store_error(StoreError::backend("reading the PostgreSQL URL", e)))?;
        config.options(format!("-c search_path={schema}"));
        config.application_name(format!("poolbill lease {shard}"));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(crate::CONNECT_TIMEOUT);
        }
        let (answer_tx, answer_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (key, shard_id, owner_name, schema_name) =
            (lock_key("poolbill-shard-lease", schema), shard.to_string(), owner.to_string(), schema.to_string());
        // A thread and runtime of its own: the connection must be driven for the engine's
        // whole life, whatever the caller's threads do.
        let thread = std::thread::Builder::new()
            .name(format!("poolbill-lease-{shard}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = answer_tx.send(Err(LeaseError::Store { shard: shard_id, source: StoreError::io("starting a runtime", e) }));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let connected = config.connect(tokio_postgres::NoTls).await;
                    let (client, connection) = match connected {
                        Ok(pair) => pair,
                        Err(e) => {
                            let source = StoreError::backend(format!("connecting for shard {shard_id}'s lease"), e);
                            let _ = answer_tx.send(Err(LeaseError::Store { shard: shard_id, source }));
                            return;
                        }
                    };
                    let mut connection = tokio::spawn(connection);
                    let taken = acquire(&client, key, &shard_id, &schema_name, &owner_name, how).await;
                    let held = taken.is_ok();
                    let _ = answer_tx.send(taken);
                    if held {
                        // Hold the session (and its lock) until the lease is dropped; say so if
                        // the session ends first (the epoch still fences this engine's writes).
                        let stopped = tokio::task::spawn_blocking(move || stop_rx.recv());
                        tokio::select! {
                            _ = stopped => {}
                            ended = &mut connection => {
                                let why = match ended {
                                    Ok(Err(e)) => e.to_string(),
                                    _ => "closed by the server".to_string(),
                                };
                                tracing::error!(shard = %shard_id, %why, "the shard's lease session ended: another engine may now take the shard, and then this one can append nothing to it");
                                return;
                            }
                        }
                    }
                    if held {
                        // Let go of the lock before the session closes: the server ends a
                        // closed session a moment later, and until then the shard looked held
                        // to an engine taking it right after this one stopped.
                        let _ = client.batch_execute("SELECT pg_advisory_unlock_all()").await;
                    }
                    drop(client);
                    let _ = connection.await;
                });
            })
            .map_err(|e| store_error(StoreError::io("starting the lease's thread", e)))?;
        let epoch = match answer_rx.recv() {
            Ok(Ok(epoch)) => epoch,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(store_error(StoreError::Internal("the lease's thread ended without an answer"))),
        };
        Ok(Lease { shard: shard.to_string(), owner: owner.to_string(), epoch, stop: Some(stop_tx), thread: Some(thread) })
    }

    pub fn shard(&self) -> &str {
        &self.shard
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The fencing token: the epoch this take gave the lease row.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How a shard is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Only if no running engine holds it.
    IfFree,
    /// From its running owner too: the owner's lease session is ended (`pg_terminate_backend`,
    /// which needs a superuser or `pg_signal_backend`), and the epoch bumped, so the old owner
    /// can write nothing more. For an owner that hangs, or a planned move.
    Over,
}

/// How long a take-over waits for the lock once its holder's session was ended.
const TAKE_OVER_WAIT: &str = "10s";

/// The `pg_locks` condition of a session-level advisory lock on key `$1` (high 32 bits) and
/// `$2` (low 32 bits) in this database: a bigint key shows as `classid` and `objid`.
const ADVISORY_LOCK_ROW: &str = "locktype = 'advisory' AND granted AND objsubid = 1
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND classid = $1::bigint::oid AND objid = $2::bigint::oid";

/// A lock key as its two `pg_locks` halves.
fn key_halves(key: i64) -> (i64, i64) {
    let bits = key as u64;
    (big(bits >> 32), big(bits & 0xffff_ffff))
}

/// On the lease's own session: the advisory lock (without waiting, or after ending its holder's
/// session for a take-over), then the row's epoch bumped (or the first row written) for
/// `owner`; the new epoch.
async fn acquire(client: &tokio_postgres::Client, key: i64, shard: &str, schema: &str, owner: &str, how: Take) -> Result<i64, LeaseError> {
    let failed = |context: &str| {
        let context = format!("{context} (shard {shard})");
        let shard = shard.to_string();
        move |e| LeaseError::Store { shard, source: StoreError::backend(context, e) }
    };
    let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await.map_err(failed("taking the shard's lock"))?.get(0);
    let row = client.query_opt("SELECT shard, owner, epoch FROM shard_lease", &[]).await.map_err(failed("reading the shard's lease"))?;
    if let Some(found) = row.as_ref().map(|r| r.get::<_, String>(0)).filter(|found| found != shard) {
        return Err(LeaseError::OtherShard { shard: shard.to_string(), schema: schema.to_string(), found });
    }
    if !locked && how == Take::Over {
        let (high, low) = key_halves(key);
        let sql = format!("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE {ADVISORY_LOCK_ROW}");
        client.query(&sql, &[&high, &low]).await.map_err(failed("ending the owner's lease session"))?;
        client.batch_execute(&format!("SET lock_timeout = '{TAKE_OVER_WAIT}'")).await.map_err(failed("taking the shard over"))?;
        client.execute("SELECT pg_advisory_lock($1)", &[&key]).await.map_err(failed("waiting for the shard's lock"))?;
        client.batch_execute("SET lock_timeout = 0").await.map_err(failed("taking the shard over"))?;
        let previous = row.as_ref().map_or_else(|| "(none)".to_string(), |r| r.get::<_, String>(1));
        tracing::warn!(shard, from = %previous, to = owner, "shard taken over from its running owner");
    } else if !locked {
        let (owner, epoch) = row.map_or_else(|| ("an engine that has not recorded its name yet".to_string(), 0), |r| (r.get(1), r.get(2)));
        return Err(LeaseError::Owned { shard: shard.to_string(), owner, epoch });
    }
    let bumped = client
        .query_one(
            "INSERT INTO shard_lease (shard, owner, epoch) VALUES ($1, $2, 1)
             ON CONFLICT (singleton) DO UPDATE SET owner = excluded.owner, epoch = shard_lease.epoch + 1, taken_at = now()
             RETURNING epoch",
            &[&shard, &owner],
        )
        .await
        .map_err(failed("bumping the shard's epoch"))?;
    Ok(bumped.get(0))
}

/// In an append transaction, under its append lock: the lease row, locked `FOR SHARE` (a take
/// waits for the appends in flight, and they for it), must still be at `epoch`.
pub(crate) async fn check_fence(client: &impl GenericClient, epoch: i64, shard: &str) -> Result<(), StoreError> {
    let row = client.query_opt("SELECT owner, epoch FROM shard_lease FOR SHARE", &[]).await.map_err(pg("checking the shard's lease"))?;
    match row {
        Some(row) if row.get::<_, i64>(1) == epoch => Ok(()),
        Some(row) => Err(StoreError::Fenced {
            detail: format!(
                "shard {shard} was taken by {} at epoch {}, and this engine's lease is epoch {epoch}",
                row.get::<_, String>(0),
                row.get::<_, i64>(1)
            ),
        }),
        None => Err(StoreError::Fenced { detail: format!("shard {shard} has no lease row, and this engine's lease is epoch {epoch}") }),
    }
}

/// The lease row and whether its advisory lock (`key`) is held in this database now. A bigint
/// advisory key shows in `pg_locks` as its high 32 bits (`classid`) and low ones (`objid`).
pub(crate) async fn holder(client: &impl GenericClient, key: i64) -> Result<Option<Holder>, StoreError> {
    let context = "reading the shard's lease";
    let (high, low) = key_halves(key);
    let sql = format!("SELECT owner, epoch, EXISTS (SELECT 1 FROM pg_locks WHERE {ADVISORY_LOCK_ROW}) FROM shard_lease");
    let row = client.query_opt(&sql, &[&high, &low]).await.map_err(pg(context))?;
    Ok(row.map(|r| Holder { owner: r.get(0), epoch: r.get(1), live: r.get(2) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_64_matches_its_published_test_vectors() {
        // From the FNV reference's test suite (64-bit FNV-1a).
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn lock_keys_differ_by_purpose_and_schema() {
        assert_ne!(lock_key("poolbill-append", "shard_s1"), lock_key("poolbill-append", "shard_s2"));
        assert_ne!(lock_key("poolbill-append", "shard_s1"), lock_key("poolbill-shard-lease", "shard_s1"));
        assert_eq!(lock_key("poolbill-append", "shard_s1"), lock_key("poolbill-append", "shard_s1"));
    }
}
