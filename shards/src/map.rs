//! The shard map: which shards there are, where each one's log lives (a database and a schema in
//! it), and on which shard each account is.
//!
//! ```json
//! {"shards": [{"id": "s1", "postgres": "postgres://…/db", "schema": "shard_s1"}, …],
//!  "accounts": {"acct-1": "s2"}}
//! ```
//!
//! An account is on the shard `accounts` names, else on `shards[fnv1a_64(id) mod count]`: a
//! stable pure function of the id and the list, so the list is fixed once accounts are placed.

use poolbill_store_postgres::lease::fnv1a_64;
use poolbill_store_postgres::schema::check_schema_name;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

/// One shard: its id, its database and the schema of its tables there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    pub id: String,
    pub postgres: String,
    pub schema: String,
}

/// A validated shard map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    pub shards: Vec<ShardSpec>,
    /// Accounts placed by hand, on the shard named.
    pub accounts: BTreeMap<String, String>,
}

/// What is wrong with a shard map, naming the entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("shard map: {0}")]
pub struct MapError(pub String);

fn bad(message: impl Into<String>) -> MapError {
    MapError(message.into())
}

/// A string field of `entry` (named `at` in messages).
fn text_field(entry: &serde_json::Map<String, Value>, field: &str, at: &str) -> Result<String, MapError> {
    match entry.get(field) {
        None => Err(bad(format!("{at}: missing \"{field}\""))),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(bad(format!("{at}.{field}: empty"))),
        Some(other) => Err(bad(format!("{at}.{field}: {other} is not a string"))),
    }
}

impl ShardMap {
    /// Parse and check a map: at least one shard; each with `id`, `postgres` (a PostgreSQL URL)
    /// and `schema`; ids unique, and no two shards on one schema of one database; overrides
    /// naming shards of the map.
    pub fn parse(text: &str) -> Result<ShardMap, MapError> {
        let value: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let root = value.as_object().ok_or_else(|| bad("the map is not a JSON object"))?;
        if let Some(key) = root.keys().find(|k| !matches!(k.as_str(), "shards" | "accounts")) {
            return Err(bad(format!("unknown field \"{key}\" (expected \"shards\" and \"accounts\")")));
        }
        let list = match root.get("shards") {
            None => return Err(bad("missing \"shards\"")),
            Some(Value::Array(list)) if list.is_empty() => return Err(bad("\"shards\" is empty: a map needs one shard at least")),
            Some(Value::Array(list)) => list,
            Some(other) => return Err(bad(format!("\"shards\": {other} is not a list"))),
        };
        let mut shards = Vec::with_capacity(list.len());
        let (mut ids, mut places) = (HashSet::new(), HashSet::new());
        for (i, entry) in list.iter().enumerate() {
            let at = format!("shards[{i}]");
            let entry = entry.as_object().ok_or_else(|| bad(format!("{at}: not an object")))?;
            if let Some(key) = entry.keys().find(|k| !matches!(k.as_str(), "id" | "postgres" | "schema")) {
                return Err(bad(format!("{at}: unknown field \"{key}\" (expected \"id\", \"postgres\", \"schema\")")));
            }
            let spec = ShardSpec {
                id: text_field(entry, "id", &at)?,
                postgres: text_field(entry, "postgres", &at)?,
                schema: text_field(entry, "schema", &at)?,
            };
            let at = format!("{at} (shard {})", spec.id);
            poolbill_store_postgres::check_url(&spec.postgres).map_err(|e| bad(format!("{at}.postgres: {e}")))?;
            check_schema_name(&spec.schema).map_err(|e| bad(format!("{at}.schema: {e}")))?;
            if !ids.insert(spec.id.clone()) {
                return Err(bad(format!("{at}: duplicate shard id {:?}", spec.id)));
            }
            let database = poolbill_store_postgres::display_url(&spec.postgres);
            if !places.insert((database.clone(), spec.schema.clone())) {
                return Err(bad(format!("{at}: schema {} of {database} is already another shard's", spec.schema)));
            }
            shards.push(spec);
        }
        let mut accounts = BTreeMap::new();
        match root.get("accounts") {
            None => {}
            Some(Value::Object(overrides)) => {
                for (account, shard) in overrides {
                    let shard = shard.as_str().ok_or_else(|| bad(format!("accounts.{account}: {shard} is not a shard id")))?;
                    if !ids.contains(shard) {
                        return Err(bad(format!("accounts.{account}: no shard {shard:?} in the map")));
                    }
                    accounts.insert(account.clone(), shard.to_string());
                }
            }
            Some(other) => return Err(bad(format!("\"accounts\": {other} is not an object"))),
        }
        Ok(ShardMap { shards, accounts })
    }

    /// Read and parse the map at `path`.
    pub fn read(path: &std::path::Path) -> Result<ShardMap, MapError> {
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("reading {}: {e}", path.display())))?;
        ShardMap::parse(&text).map_err(|MapError(m)| bad(format!("{}: {m}", path.display())))
    }

    /// The shard `account` is on: its override, else [`place`] over the shard list.
    pub fn shard_of(&self, account: &str) -> &ShardSpec {
        match self.accounts.get(account).and_then(|id| self.shard(id)) {
            Some(shard) => shard,
            None => &self.shards[place(account, self.shards.len())],
        }
    }

    pub fn shard(&self, id: &str) -> Option<&ShardSpec> {
        self.shards.iter().find(|s| s.id == id)
    }
}

/// The index of an account's shard among `count`: FNV-1a (64 bits) of its id, modulo `count`.
/// Pure and stable across versions and machines; changing the shard list moves accounts.
pub fn place(account: &str, count: usize) -> usize {
    assert!(count > 0, "a map has one shard at least");
    (fnv1a_64(account.as_bytes()) % count as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"{"shards": [
        {"id": "s1", "postgres": "postgres://u@h1/db", "schema": "shard_s1"},
        {"id": "s2", "postgres": "postgres://u@h2/db", "schema": "shard_s2"}],
        "accounts": {"acct-vip": "s2"}}"#;

    #[test]
    fn placement_is_fnv1a_modulo_the_count() {
        // (account, count, index): FNV-1a 64 of the id, computed by hand, modulo the count.
        let table = [("", 2, 1), ("a", 2, 0), ("a", 3, 1), ("foobar", 2, 0), ("foobar", 5, 3), ("acct-1", 1, 0)];
        for (account, count, expected) in table {
            assert_eq!(place(account, count), expected, "place({account:?}, {count})");
        }
        assert_eq!(place("acct-1", 7), place("acct-1", 7), "stable");
    }

    #[test]
    fn placement_spreads_accounts_over_every_shard() {
        let mut seen = [0usize; 4];
        for n in 0..400 {
            seen[place(&format!("acct-{n}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&k| k > 60), "{seen:?}");
    }

    #[test]
    fn a_valid_map_parses_and_places_with_overrides_first() {
        let map = ShardMap::parse(TWO).unwrap();
        assert_eq!(map.shards.len(), 2);
        assert_eq!(map.shards[1], ShardSpec { id: "s2".into(), postgres: "postgres://u@h2/db".into(), schema: "shard_s2".into() });
        assert_eq!(map.shard_of("acct-vip").id, "s2");
        let hashed = &map.shards[place("acct-1", 2)];
        assert_eq!(map.shard_of("acct-1"), hashed);
    }

    #[test]
    fn bad_maps_are_refused_naming_the_entry() {
        let cases = [
            ("[]", "not a JSON object"),
            ("{}", "missing \"shards\""),
            (r#"{"shards": []}"#, "\"shards\" is empty"),
            (r#"{"shards": [{"id": "s1", "schema": "a"}]}"#, "shards[0]: missing \"postgres\""),
            (r#"{"shards": [{"id": "", "postgres": "postgres://h/d", "schema": "a"}]}"#, "shards[0].id: empty"),
            (r#"{"shards": [{"id": "s1", "postgres": "postgres://h/d", "schema": "a", "x": 1}]}"#, "shards[0]: unknown field \"x\""),
            (
                r#"{"shards": [{"id": "s1", "postgres": "postgres://h/d", "schema": "a"}, {"id": "s1", "postgres": "postgres://h/d", "schema": "b"}]}"#,
                "shards[1] (shard s1): duplicate shard id \"s1\"",
            ),
            (
                r#"{"shards": [{"id": "s1", "postgres": "postgres://h/d", "schema": "a"}, {"id": "s2", "postgres": "postgres://h/d", "schema": "a"}]}"#,
                "shards[1] (shard s2): schema a of h:5432/d is already another shard's",
            ),
            (r#"{"shards": [{"id": "s1", "postgres": "postgres://h/d", "schema": "Bad-Name"}]}"#, "shards[0] (shard s1).schema"),
            (r#"{"shards": [{"id": "s1", "postgres": "mysql://h/d", "schema": "a"}]}"#, "shards[0] (shard s1).postgres"),
            (
                r#"{"shards": [{"id": "s1", "postgres": "postgres://h/d", "schema": "a"}], "accounts": {"acct-1": "s9"}}"#,
                "accounts.acct-1: no shard \"s9\"",
            ),
        ];
        for (text, expected) in cases {
            let error = ShardMap::parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text}: {error:?} lacks {expected:?}");
        }
    }
}
