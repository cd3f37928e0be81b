//! The store conformance suite, on PostgreSQL: each check on a fresh database.

use poolbill_store::conformance;
use poolbill_store_postgres::cluster::fresh_database;
use poolbill_store_postgres::PostgresStore;

#[test]
fn the_conformance_suite_passes() {
    conformance::run_all(&|| Box::new(PostgresStore::connect(&fresh_database()).expect("a store on a fresh database")));
}
