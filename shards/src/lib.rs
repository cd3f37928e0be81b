//! `poolbill-shards`: poolbill sharded by account on PostgreSQL.
//!
//! The account is the consistency boundary. A shard is one complete event log (a
//! [`PostgresStore`] in a schema of its own), holding every event of its accounts and its own
//! copy of the platform-wide streams (catalog, policy, commands, rejections), so that it replays
//! alone. A [`ShardedEngine`] owns some shards of a [`ShardMap`] (one [`Engine`] per owned shard,
//! each under a fenced [`Lease`]) and routes each command to the shard of its account; a command
//! for an account of a shard it does not own is refused, naming the owner. [`export`] merges
//! every shard's log into one portable log.

pub mod export;
pub mod map;

pub use map::{place, MapError, ShardMap, ShardSpec};

use poolbill_domain::{Command, Instant, Subject};
use poolbill_engine::{Engine, EngineError, Executed};
use poolbill_store::EventStore;
use poolbill_store_postgres::{Lease, LeaseError, Options, PostgresStore};

pub use poolbill_store_postgres::Take;

/// Connections an owned shard's store keeps at most; a shard only read (to name owners), fewer.
const OWNED_POOL: usize = 8;
const READ_POOL: usize = 2;

/// Why a sharded engine could not start, or refused a command.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("--owns names shard {0:?}, which the shard map does not have")]
    UnknownShard(String),
    #[error("--owns names no shard: an engine owns one shard at least")]
    OwnsNothing,
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("opening shard {shard}: {source}")]
    Open {
        shard: String,
        #[source]
        source: poolbill_store::StoreError,
    },
    #[error("shard {shard}: {source}")]
    Engine {
        shard: String,
        #[source]
        source: EngineError,
    },
    /// The command's account (or pool, job) is on a shard this engine does not own: nothing
    /// was done. `owner` is the shard's lease holder, if any engine ever took it.
    #[error("{subject} is on shard {shard}, {}", owner_phrase(.owner))]
    NotOwned { subject: String, shard: String, owner: Option<(String, bool)> },
}

fn owner_phrase(owner: &Option<(String, bool)>) -> String {
    match owner {
        Some((name, true)) => format!("owned by {name}"),
        Some((name, false)) => format!("which no running engine owns (last owned by {name})"),
        None => "which no engine owns".to_string(),
    }
}

/// What a command is about, for routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Decided on the account's shard.
    Account(String),
    /// A pool or job: decided on the shard whose state has it.
    Resource(String),
    /// Catalog and policy: applied on every owned shard.
    Platform,
}

/// The routing target of `command`.
pub fn target(command: &Command) -> Target {
    match command.subject() {
        Subject::Platform => Target::Platform,
        Subject::Account(account) => Target::Account(account.to_string()),
        Subject::Pool(id) | Subject::Job(id) => Target::Resource(id.to_string()),
    }
}

/// A shard this engine owns: its engine, its store and the lease that fences it.
pub struct OwnedShard {
    pub spec: ShardSpec,
    pub engine: Engine,
    pub store: PostgresStore,
    /// Held for the engine's lifetime; dropped last.
    lease: Lease,
}

impl OwnedShard {
    pub fn epoch(&self) -> i64 {
        self.lease.epoch()
    }
}

/// An engine over the shards of a map it owns. Share it (`Arc`) across tasks.
pub struct ShardedEngine {
    owner: String,
    map: ShardMap,
    owned: Vec<OwnedShard>,
    /// Every shard of the map not owned here, opened for reading its lease and tag index.
    others: Vec<(ShardSpec, PostgresStore)>,
}

/// Open `spec`'s store (creating its schema and tables if absent), off the async threads.
async fn open_store(spec: &ShardSpec, pool_size: usize) -> Result<PostgresStore, ShardError> {
    let options = Options { pool_size, schema: Some(spec.schema.clone()), shard: Some(spec.id.clone()) };
    let (url, id) = (spec.postgres.clone(), spec.id.clone());
    tokio::task::spawn_blocking(move || PostgresStore::connect_options(&url, &options))
        .await
        .map_err(|_| ShardError::Open { shard: id.clone(), source: poolbill_store::StoreError::Internal("opening the store panicked") })?
        .map_err(|source| ShardError::Open { shard: id, source })
}

impl ShardedEngine {
    /// Take the shards `owns` of `map` for `owner` (each one's lease, refused while another
    /// running engine holds it) and start an engine on each; open the others for reading.
    pub async fn start(map: ShardMap, owns: &[String], owner: &str) -> Result<ShardedEngine, ShardError> {
        ShardedEngine::start_with(map, owns, owner, Take::IfFree).await
    }

    /// [`ShardedEngine::start`], taking the shards as `how` says ([`Take::Over`]: from their
    /// running owners too, which can then write nothing more to them).
    pub async fn start_with(map: ShardMap, owns: &[String], owner: &str, how: Take) -> Result<ShardedEngine, ShardError> {
        if owns.is_empty() {
            return Err(ShardError::OwnsNothing);
        }
        if let Some(unknown) = owns.iter().find(|id| map.shard(id).is_none()) {
            return Err(ShardError::UnknownShard(unknown.clone()));
        }
        let mut owned = Vec::new();
        let mut others = Vec::new();
        for spec in &map.shards {
            if !owns.contains(&spec.id) {
                others.push((spec.clone(), open_store(spec, READ_POOL).await?));
                continue;
            }
            let store = open_store(spec, OWNED_POOL).await?;
            let (url, schema, id, name) = (spec.postgres.clone(), spec.schema.clone(), spec.id.clone(), owner.to_string());
            let lease = tokio::task::spawn_blocking(move || Lease::take_as(&url, &schema, &id, &name, how)).await.map_err(|_| {
                ShardError::Open { shard: spec.id.clone(), source: poolbill_store::StoreError::Internal("taking the lease panicked") }
            })??;
            store.fence(lease.epoch()).map_err(|source| ShardError::Open { shard: spec.id.clone(), source })?;
            let engine = Engine::start(store.clone()).await.map_err(|source| ShardError::Engine { shard: spec.id.clone(), source })?;
            tracing::info!(shard = %spec.id, epoch = lease.epoch(), owner, "shard taken");
            owned.push(OwnedShard { spec: spec.clone(), engine, store, lease });
        }
        Ok(ShardedEngine { owner: owner.to_string(), map, owned, others })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The shards this engine owns, in map order.
    pub fn owned(&self) -> &[OwnedShard] {
        &self.owned
    }

    fn owned_shard(&self, id: &str) -> Option<&OwnedShard> {
        self.owned.iter().find(|s| s.spec.id == id)
    }

    /// Refusal for `subject` on the unowned shard `spec`, naming its lease holder.
    async fn not_owned(&self, subject: String, shard: &str) -> ShardError {
        let holder = match self.others.iter().find(|(s, _)| s.id == shard) {
            Some((_, store)) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.lease_holder()).await.ok().and_then(Result::ok).flatten()
            }
            None => None,
        };
        ShardError::NotOwned { subject, shard: shard.to_string(), owner: holder.map(|h| (h.owner, h.live)) }
    }

    /// Run `command` where it belongs: its account's shard; a pool's or job's shard; every owned
    /// shard for a platform-wide command (each shard keeps its own copy, and its own record of
    /// the id). Answers with each shard that decided it and its result; a command for another
    /// engine's shard is refused and nothing is written.
    pub async fn execute(&self, id: &str, at: Instant, command: Command, index: Option<u64>) -> Result<Vec<(String, Executed)>, ShardError> {
        let shards = self.route(&command).await?;
        let mut results = Vec::with_capacity(shards.len());
        for shard in shards {
            let executed = shard
                .engine
                .execute(id, at, command.clone(), index)
                .await
                .map_err(|source| ShardError::Engine { shard: shard.spec.id.clone(), source })?;
            results.push((shard.spec.id.clone(), executed));
        }
        Ok(results)
    }

    /// The owned shards `command` goes to, or why it goes nowhere.
    async fn route(&self, command: &Command) -> Result<Vec<&OwnedShard>, ShardError> {
        match target(command) {
            Target::Platform => Ok(self.owned.iter().collect()),
            Target::Account(account) => {
                let spec = self.map.shard_of(&account);
                match self.owned_shard(&spec.id) {
                    Some(shard) => Ok(vec![shard]),
                    None => Err(self.not_owned(format!("account {account}"), &spec.id).await),
                }
            }
            Target::Resource(resource) => self.route_resource(&resource).await,
        }
    }

    /// A pool or job: the owned shard whose state has it; else a shard of another engine whose
    /// tag index has it (refused, naming the owner); else the first owned shard, which rejects
    /// it as unknown as an unsharded engine would.
    async fn route_resource(&self, resource: &str) -> Result<Vec<&OwnedShard>, ShardError> {
        for shard in &self.owned {
            let id = resource.to_string();
            let known = shard
                .engine
                .read_about(vec![id.clone()], move |p| p.state.pools.contains_key(&id) || p.state.jobs.contains_key(&id))
                .await
                .map_err(|source| ShardError::Engine { shard: shard.spec.id.clone(), source })?;
            if known {
                return Ok(vec![shard]);
            }
        }
        for (spec, store) in &self.others {
            let (store, id) = (store.clone(), resource.to_string());
            let found = tokio::task::spawn_blocking(move || has_resource(&store, &id))
                .await
                .map_err(|_| ShardError::Open { shard: spec.id.clone(), source: poolbill_store::StoreError::Internal("a tag lookup panicked") })?
                .map_err(|source| ShardError::Open { shard: spec.id.clone(), source })?;
            if found {
                return Err(self.not_owned(format!("resource {resource}"), &spec.id).await);
            }
        }
        Ok(self.owned.iter().take(1).collect())
    }

    /// Let the clock pass `to` on every owned shard; how many events each appended.
    pub async fn advance_to(&self, to: Instant) -> Result<Vec<(String, u64)>, ShardError> {
        let mut appended = Vec::with_capacity(self.owned.len());
        for shard in &self.owned {
            let n = shard.engine.advance_to(to).await.map_err(|source| ShardError::Engine { shard: shard.spec.id.clone(), source })?;
            appended.push((shard.spec.id.clone(), n));
        }
        Ok(appended)
    }

    /// The store of shard `id`, owned or not, for reading.
    pub fn store(&self, id: &str) -> Option<&dyn EventStore> {
        self.owned_shard(id)
            .map(|s| &s.store as &dyn EventStore)
            .or_else(|| self.others.iter().find(|(s, _)| s.id == id).map(|(_, st)| st as &dyn EventStore))
    }
}

/// Whether `store`'s log has resource `id`, read only: its tag index, then the events past
/// the index's reach (the owner indexes its own events in batches, with its snapshots).
pub fn has_resource(store: &dyn EventStore, id: &str) -> Result<bool, poolbill_store::StoreError> {
    let tag = poolbill_projections::resource_tag(id);
    if !store.tagged(&tag, 0, 1)?.is_empty() {
        return Ok(true);
    }
    for envelope in store.read_all(store.tagged_through()? + 1) {
        let envelope = envelope?;
        let event = poolbill_projections::event_of(&envelope)
            .map_err(|e| poolbill_store::StoreError::Corrupt { position: envelope.position, detail: e.to_string() })?;
        if poolbill_projections::tags_of(&event).contains(&tag) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolbill_domain::{BillingMode, PoolType};

    #[test]
    fn commands_route_by_account_resource_or_platform() {
        let purchase = Command::Purchase {
            account: "acct-1".into(),
            pool: "pool-1".into(),
            spec: "x".into(),
            nodes: 1,
            mode: BillingMode::OnDemand,
            term: None,
            pool_type: PoolType::Dedicated,
            region: None,
            ready: true,
        };
        assert_eq!(target(&purchase), Target::Account("acct-1".into()));
        assert_eq!(target(&Command::Scale { pool: "pool-1".into(), nodes: Some(2), spec: None }), Target::Resource("pool-1".into()));
        assert_eq!(target(&Command::StopJob { job: "job-1".into() }), Target::Resource("job-1".into()));
        assert_eq!(target(&Command::SetPrice { spec: "x".into(), price: Default::default() }), Target::Platform);
    }

    #[test]
    fn refusals_name_the_owner_or_say_there_is_none() {
        let refused = |owner| ShardError::NotOwned { subject: "account acct-7".into(), shard: "s3".into(), owner }.to_string();
        assert_eq!(refused(Some(("engine-b".into(), true))), "account acct-7 is on shard s3, owned by engine-b");
        assert_eq!(refused(Some(("engine-b".into(), false))), "account acct-7 is on shard s3, which no running engine owns (last owned by engine-b)");
        assert_eq!(refused(None), "account acct-7 is on shard s3, which no engine owns");
    }
}
