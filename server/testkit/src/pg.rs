//! Fresh PostgreSQL databases for tests, on the server named by `HUSH_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, trust authentication; `.ci/run` starts it).
//!
//! A database is named `hush_<kind>_<pid>_<random>`, where `<pid>` is the test process. It is
//! dropped when its [`PgTestDb`] is dropped (also while a test unwinds). A test process that was
//! killed cannot do that, so the first database a test process creates first drops every
//! `hush_*_<pid>_*` database whose process is no longer running.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::Connection;

/// The maintenance database URL used to create and drop test databases.
pub fn admin_url() -> String {
    std::env::var("HUSH_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh PostgreSQL database, dropped on `Drop` unless [`PgTestDb::persist`] was called.
#[derive(Debug)]
pub struct PgTestDb {
    /// Connection URL of the new database.
    pub url: String,
    name: Option<String>,
    admin_url: String,
}

impl PgTestDb {
    /// Creates `hush_<kind>_<pid>_<random>` (`kind`: lowercase letters, naming the test suite).
    /// Panics with a clear message when PostgreSQL is unreachable: the suite requires it.
    pub async fn create(kind: &str) -> PgTestDb {
        assert!(
            !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_lowercase()),
            "database kind must be lowercase letters: {kind:?}"
        );
        let admin_url = admin_url();
        let name = format!(
            "hush_{kind}_{}_{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let mut conn = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(conn) => conn,
            Err(e) => panic!("PostgreSQL at {admin_url} is required for this test: {e}"),
        };
        sweep_once(&mut conn).await;
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
        {
            panic!("cannot create test database {name}: {e}");
        }
        let _ = conn.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(base, _)| base);
        PgTestDb {
            url: format!("{base}/{name}"),
            name: Some(name),
            admin_url,
        }
    }

    /// [`PgTestDb::create`] from synchronous code (on a private runtime on its own thread, so it
    /// also works inside an async test).
    pub fn create_blocking(kind: &str) -> PgTestDb {
        let kind = kind.to_owned();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for creating a test database")
                .block_on(PgTestDb::create(&kind))
        })
        .join()
        .unwrap_or_else(|_| panic!("creating a test database failed"))
    }

    /// Keeps the database after this value is dropped and returns its URL; it is dropped by the
    /// first test process that starts after this one ended.
    pub fn persist(mut self) -> String {
        self.name = None;
        std::mem::take(&mut self.url)
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        let admin_url = self.admin_url.clone();
        // Drop may run inside a runtime (or while unwinding), so use a private one on a thread.
        let handle = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(&sql).execute(&mut conn).await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// Drops, once per test process, the test databases of processes that are no longer running.
async fn sweep_once(conn: &mut sqlx::PgConnection) {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'hush\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for name in names {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut *conn)
            .await;
    }
}

/// The test process of a database named `hush_<kind>_<pid>_<random>`.
fn owner_pid(name: &str) -> Option<u32> {
    let mut parts = name.split('_');
    let (Some("hush"), Some(kind), Some(pid), Some(random), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let well_formed = kind.bytes().all(|b| b.is_ascii_lowercase())
        && random.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| pid.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_reads_only_well_formed_names() {
        assert_eq!(owner_pid("hush_fed_1234_00ff"), Some(1234));
        assert_eq!(owner_pid("hush_client_7_0123456789abcdef"), Some(7));
        assert_eq!(owner_pid("hush_test_0123456789abcdef"), None);
        assert_eq!(owner_pid("hush_fed_12x_00ff"), None);
        assert_eq!(owner_pid("hush_fed_12_00ff_extra"), None);
        assert_eq!(owner_pid("other_fed_12_00ff"), None);
        assert_eq!(owner_pid("hush_Fed_12_00ff"), None);
    }
}
