//! The schema, created and migrated by poolbill itself: [`MIGRATIONS`] in order, each applied
//! once, in one transaction with the row that records it in `schema_version`. A database whose
//! schema is newer than this binary knows is refused, never written.
//!
//! Identifiers (streams, event types, command ids, fingerprints, tags) are `bytea`: they may hold
//! any character, NUL included, which PostgreSQL's `text` cannot. JSON payloads and outcomes are
//! `json`, which keeps the text as given (`jsonb` would reorder keys, drop duplicates and
//! refuse `\u0000`); binary payloads `bytea`. An instant is its UTC seconds, nanoseconds and
//! offset (seconds east), so that it comes back with its offset and to the nanosecond
//! (`timestamptz` keeps neither); `at` is the same instant for people and queries.

use deadpool_postgres::GenericClient;

/// The migrations, in order: migration `n` (1-based) is `MIGRATIONS[n - 1]`. A new table is
/// one more entry; an applied entry is never edited.
pub const MIGRATIONS: &[&str] = &[
    // 1: the log, command records, tags and snapshots.
    "CREATE TABLE events (
        position        bigint  PRIMARY KEY CHECK (position > 0),
        id              uuid    NOT NULL UNIQUE,
        stream          bytea   NOT NULL,
        version         bigint  NOT NULL CHECK (version > 0),
        event_type      bytea   NOT NULL,
        schema_version  bigint  NOT NULL,
        at_seconds      bigint  NOT NULL,
        at_nanos        integer NOT NULL CHECK (at_nanos >= 0 AND at_nanos < 1000000000),
        at_offset       integer NOT NULL,
        at              timestamptz GENERATED ALWAYS AS (to_timestamp(at_seconds::double precision)) STORED,
        command_id      bytea,
        payload_json    json,
        payload_binary  bytea,
        checksum        bigint  NOT NULL,
        CHECK ((payload_json IS NULL) <> (payload_binary IS NULL)),
        UNIQUE (stream, version)
    );
    CREATE TABLE commands (
        command_id      bytea   PRIMARY KEY,
        first_position  bigint,
        last_position   bigint,
        outcome         json    NOT NULL,
        fingerprint     bytea
    );
    CREATE TABLE tags (
        tag             bytea   NOT NULL,
        position        bigint  NOT NULL,
        PRIMARY KEY (tag, position)
    );
    CREATE TABLE tag_state (
        singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        tagged_through  bigint  NOT NULL,
        version         bigint  NOT NULL
    );
    INSERT INTO tag_state (tagged_through, version) VALUES (0, 0);
    CREATE TABLE snapshots (
        position        bigint  PRIMARY KEY,
        bytes           bytea   NOT NULL
    );",
    // 2: the Merkle index (issue 12): the roots of complete chunks of 256 leaves, and the leaf
    // hashes after the last complete chunk with how far the index reaches.
    "CREATE TABLE merkle_chunks (
        chunk           bigint  PRIMARY KEY CHECK (chunk >= 0),
        root            bytea   NOT NULL CHECK (length(root) = 32)
    );
    CREATE TABLE merkle_state (
        singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        through         bigint  NOT NULL CHECK (through >= 0),
        tail            bytea   NOT NULL
    );
    INSERT INTO merkle_state (through, tail) VALUES (0, ''::bytea);",
    // 3: a shard's lease (issue 11): who owns the shard and its epoch, the fencing token every
    // append of a sharded engine checks. No row until an engine first takes the shard.
    "CREATE TABLE shard_lease (
        singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        shard           text    NOT NULL,
        owner           text    NOT NULL,
        epoch           bigint  NOT NULL CHECK (epoch > 0),
        taken_at        timestamptz NOT NULL DEFAULT now()
    );",
];

/// The schema version this binary writes.
pub fn latest() -> u32 {
    MIGRATIONS.len() as u32
}

/// Key of the transaction-scoped advisory lock that serialises migrations (two stores opening
/// one new database at once migrate it once).
const MIGRATION_LOCK: i64 = 0x706f_6f6c_6269_6c6d;

/// Why a database's schema cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database has schema version {found}, newer than this poolbill knows ({known}): upgrade poolbill, or use another database")]
    TooNew { found: u32, known: u32 },
    #[error("schema_version holds {0}, which is not a schema version")]
    Invalid(i64),
}

/// Bring the database to [`latest`], applying what it lacks; the version it was at before.
/// With `schema` (a shard's namespace, already on the session's `search_path`), the schema is
/// created first, under the same lock, so that two engines opening a new shard create it once.
pub async fn migrate(client: &mut deadpool_postgres::Object, schema: Option<&str>) -> Result<u32, MigrateError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    if let Some(schema) = schema {
        // A checked identifier (`check_schema_name`): quoting keeps it verbatim.
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).await?;
    }
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        .await?;
    let found = current(&tx).await?;
    if found > latest() {
        return Err(MigrateError::Schema(SchemaError::TooNew { found, known: latest() }));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i32 + 1;
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&version]).await?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    tx.commit().await?;
    Ok(found)
}

/// The newest migration recorded (0: none).
pub async fn current(client: &impl GenericClient) -> Result<u32, MigrateError> {
    let row = client.query_one("SELECT coalesce(max(version), 0)::bigint FROM schema_version", &[]).await?;
    let version: i64 = row.get(0);
    u32::try_from(version).map_err(|_| MigrateError::Schema(SchemaError::Invalid(version)))
}

/// Whether `name` may name a shard's schema: 1 to 63 lowercase ASCII letters, digits and
/// underscores, not starting with a digit nor `pg_` (PostgreSQL reserves those). Kept this
/// narrow so that it needs no quoting in `search_path` or in messages.
pub fn check_schema_name(name: &str) -> Result<(), String> {
    let valid_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let starts_well = name.bytes().next().is_some_and(|b| !b.is_ascii_digit());
    if name.is_empty() || name.len() > 63 || !valid_chars || !starts_well || name.starts_with("pg_") {
        return Err(format!("schema {name:?} is not a valid shard schema: 1 to 63 of a-z, 0-9 and _, not starting with a digit or pg_"));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}
