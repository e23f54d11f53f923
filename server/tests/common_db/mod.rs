//! Fresh databases for integration tests, shared by every test binary of `hush-server`
//! (`mod common_db;`).
//!
//! * [`PgTestDb`] (from `hush-testkit`) is a fresh PostgreSQL database `hush_store_<pid>_<random>`
//!   on the server named by `HUSH_TEST_PG_URL` (default
//!   `postgres://postgres@127.0.0.1:5432/postgres`), dropped (terminating leftover connections)
//!   when the value is dropped, also when the test panics.
//! * [`SqliteTestDb::create`] makes a temporary directory with a `sqlite://` URL in it.
//! * [`run_store_test`] runs one async test body against a connected [`Store`] on a fresh
//!   database of either backend.
#![allow(dead_code)]

use std::future::Future;

use hush_server::store::{Claimed, ClaimedKey, KeyClaim, Store};

pub use hush_testkit::pg::PgTestDb;

/// A fresh SQLite database file in a temporary directory (removed on `Drop`).
pub struct SqliteTestDb {
    /// `sqlite://<tempdir>/hush.db`.
    pub url: String,
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl SqliteTestDb {
    /// Creates the directory (the file is created by `Store::connect`).
    pub fn create() -> SqliteTestDb {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("cannot create a temporary directory: {e}"),
        };
        let url = format!("sqlite://{}", dir.path().join("hush.db").display());
        SqliteTestDb { url, dir }
    }
}

/// A fresh database of either backend.
pub enum TestDb {
    /// SQLite file.
    Sqlite(SqliteTestDb),
    /// PostgreSQL database.
    Postgres(PgTestDb),
}

impl TestDb {
    /// Creates a fresh database: PostgreSQL when `postgres`, else SQLite.
    pub async fn create(postgres: bool) -> TestDb {
        if postgres {
            TestDb::Postgres(PgTestDb::create("store").await)
        } else {
            TestDb::Sqlite(SqliteTestDb::create())
        }
    }

    /// The `database_url` for `hushd` or `Store::connect`.
    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite(db) => &db.url,
            TestDb::Postgres(db) => &db.url,
        }
    }
}

/// A fresh PostgreSQL database URL for tests that start `hushd` processes; keep the returned
/// guard alive as long as the database is used (it drops the database).
pub async fn fresh_postgres_url() -> (String, PgTestDb) {
    let db = PgTestDb::create("store").await;
    (db.url.clone(), db)
}

/// Runs `test` with a [`Store`] connected to a fresh database of the chosen backend, then closes
/// the store and drops the database.
pub async fn run_store_test<F, Fut>(postgres: bool, test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = TestDb::create(postgres).await;
    let store = match Store::connect(db.url()).await {
        Ok(store) => store,
        Err(e) => panic!("Store::connect({}) failed: {e}", db.url()),
    };
    assert_eq!(store.is_postgres(), postgres);
    test(store.clone()).await;
    store.close().await;
    drop(db);
}

/// Declares, for each named `async fn name(store: Store)` of the test file, two tests
/// `name::sqlite` and `name::postgres` that run it on a fresh database of each backend.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    crate::common_db::run_store_test(false, crate::$name).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    crate::common_db::run_store_test(true, crate::$name).await;
                }
            }
        )*
    };
}

/// A Matrix key claim of one device through [`Store::claim_keys`], the path the API takes: the
/// oldest one-time key, else the fallback key (then marked used), else `None`.
pub async fn claim(store: &Store, user: &str, device: &str, algorithm: &str) -> Option<ClaimedKey> {
    match claim_as(store, user, device, algorithm, false).await {
        Claimed::Key(key) => Some(key),
        _ => None,
    }
}

/// One claim of `Store::claim_keys` without a requester: a Matrix key claim or (`bundle`) a
/// Hush bundle claim.
pub async fn claim_as(
    store: &Store,
    user: &str,
    device: &str,
    algorithm: &str,
    bundle: bool,
) -> Claimed {
    let claim = KeyClaim {
        user_id: user.into(),
        device_id: device.into(),
        algorithm: algorithm.into(),
        bundle,
    };
    let mut out = store
        .claim_keys(std::slice::from_ref(&claim), None, 0)
        .await
        .expect("claim_keys");
    out.pop().expect("one answer per claim")
}
