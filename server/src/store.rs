//! The embedded SQLite store: schema, migrations and the shared connection.
//!
//! One file, `<data_dir>/wardlink.sqlite3`, holds staff accounts, login state,
//! conferences, invitations and the audit log. Each concern has its own module
//! (`accounts.rs`, `conferences.rs`, `audit.rs`) with its own queries; the schema lives
//! here so that one migration list orders every change.
//!
//! rusqlite is synchronous. Calls are short (single-row reads and writes), so async code
//! runs them through [`Store::call`], which moves the work onto tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

/// The database file name inside the data directory.
pub const DB_FILE: &str = "wardlink.sqlite3";

/// Schema migrations, applied in order; index + 1 is the `user_version` after each.
/// Never edit an applied entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, sessions, conferences, invitations, audit log.
    r#"
    CREATE TABLE users (
        id              INTEGER PRIMARY KEY,
        username        TEXT NOT NULL UNIQUE,
        display_name    TEXT NOT NULL,
        -- nurse | doctor | msw | admin
        profession      TEXT NOT NULL,
        is_admin        INTEGER NOT NULL DEFAULT 0,
        password_hash   TEXT NOT NULL,
        -- base32 TOTP secret; NULL until enrolment is confirmed
        totp_secret     TEXT,
        -- secret proposed by an enrolment not yet confirmed
        totp_pending    TEXT,
        -- 1 when an administrator has turned TOTP off for this account
        totp_disabled   INTEGER NOT NULL DEFAULT 0,
        -- last accepted TOTP time step, so a code cannot be replayed
        totp_last_step  INTEGER NOT NULL DEFAULT 0,
        disabled        INTEGER NOT NULL DEFAULT 0,
        failed_logins   INTEGER NOT NULL DEFAULT 0,
        locked_until_ms INTEGER NOT NULL DEFAULT 0,
        created_ms      INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE sessions (
        -- SHA-256 of the cookie value, hex; the cookie itself is never stored
        id_hash         TEXT PRIMARY KEY,
        user_id         INTEGER NOT NULL REFERENCES users(id),
        -- 'password' after the first factor, 'full' after TOTP
        stage           TEXT NOT NULL,
        created_ms      INTEGER NOT NULL,
        last_seen_ms    INTEGER NOT NULL,
        peer            TEXT
    ) STRICT;

    CREATE TABLE conferences (
        id              TEXT PRIMARY KEY,
        title           TEXT NOT NULL,
        scheduled_ms    INTEGER NOT NULL,
        created_by      INTEGER REFERENCES users(id),
        created_ms      INTEGER NOT NULL,
        ended_ms        INTEGER
    ) STRICT;

    CREATE TABLE invitations (
        -- the token's jti
        id              TEXT PRIMARY KEY,
        conference_id   TEXT NOT NULL REFERENCES conferences(id),
        role            TEXT NOT NULL,
        display_name    TEXT NOT NULL,
        not_before_ms   INTEGER NOT NULL,
        expires_ms      INTEGER NOT NULL,
        revoked_ms      INTEGER,
        -- device the link was first used from (hash of a per-device secret)
        device_hash     TEXT,
        first_used_ms   INTEGER,
        created_ms      INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE audit_log (
        seq             INTEGER PRIMARY KEY,
        ts_ms           INTEGER NOT NULL,
        actor           TEXT NOT NULL,
        action          TEXT NOT NULL,
        conference      TEXT,
        peer            TEXT,
        detail          TEXT NOT NULL,
        prev_hash       TEXT NOT NULL,
        hash            TEXT NOT NULL,
        mac             TEXT NOT NULL
    ) STRICT;

    -- Append-only: the server never changes or removes an entry. (Someone with the file
    -- can still drop these triggers; the hash chain and MAC are what detect that.)
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    "#,
];

/// The shared SQLite connection. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// SQLite page cache per connection, KiB.
pub const PAGE_CACHE_KIB: u32 = 256;

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and applies migrations.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open the database {}: {e}", path.display()))?;
        // The file holds password hashes and TOTP secrets: owner-only, like the keys.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Self::init(conn, path)
    }

    /// An in-memory database (unit tests).
    pub fn open_in_memory() -> anyhow::Result<Store> {
        Self::init(Connection::open_in_memory()?, PathBuf::from(":memory:"))
    }

    fn init(conn: Connection, path: PathBuf) -> anyhow::Result<Store> {
        // WAL keeps readers (audit export) from blocking the writer; a busy timeout
        // covers a CLI command touching the file while the server runs.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // A bounded page cache (negative = KiB). SQLite's default of 2 MB filled up as the
        // audit log grew, which the join/leave leak check saw as steady RSS growth; the
        // kernel's file cache still holds the rest of the file.
        conn.pragma_update(None, "cache_size", -(PAGE_CACHE_KIB as i64))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Locks the connection for synchronous use (CLI commands and blocking tasks).
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        // Every statement is atomic in SQLite, so a panic elsewhere cannot leave the
        // connection half-way; a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Empties the page cache (SQLite's `shrink_memory`); it refills from the file on
    /// demand. Called when the server goes idle. The pages of the cache's first bulk
    /// allocation (SQLite's `SQLITE_DEFAULT_PCACHE_INITSZ`, 20 pages) stay allocated for
    /// reuse; the rest goes back to the allocator.
    pub fn release_cache(&self) {
        if let Err(e) = self.lock().execute_batch("PRAGMA shrink_memory") {
            tracing::debug!(%e, "cannot shrink the store's cache");
        }
    }

    /// Runs `f` with the connection on tokio's blocking pool.
    pub async fn call<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&mut store.lock()))
            .await
            .map_err(|e| anyhow::anyhow!("database task failed: {e}"))?
    }
}

fn migrate(conn: &Connection) -> anyhow::Result<()> {
    let version: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        anyhow::bail!(
            "the database was written by a newer wardlink (schema {version}, this build knows {})",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, the store's timestamp unit.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_a_fresh_database_and_reopens_it() {
        let dir = std::env::temp_dir().join(format!("wardlink-store-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        {
            let s = Store::open(&dir).unwrap();
            s.lock()
                .execute(
                    "INSERT INTO conferences (id, title, scheduled_ms, created_ms) VALUES ('c1', 't', 0, 0)",
                    [],
                )
                .unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let n: i64 = s
            .lock()
            .query_row("SELECT count(*) FROM conferences", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Bytes of page cache the connection holds (SQLite's own count).
    fn cache_used(store: &Store) -> i32 {
        let conn = store.lock();
        let (mut current, mut high) = (0, 0);
        // SAFETY: the handle is valid while the guard is held; both outputs are locals.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                conn.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED,
                &mut current,
                &mut high,
                0,
            )
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        current
    }

    #[test]
    fn release_cache_empties_the_page_cache_and_the_data_stays() {
        let dir = std::env::temp_dir().join(format!("wardlink-store-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Store::open(&dir).unwrap();
        {
            let c = s.lock();
            for i in 0..2_000 {
                c.execute(
                    "INSERT INTO conferences (id, title, scheduled_ms, created_ms) VALUES (?1, ?2, 0, 0)",
                    rusqlite::params![format!("c{i}"), "x".repeat(100)],
                )
                .unwrap();
            }
        }
        let filled = cache_used(&s);
        assert!(filled > 100_000, "the cache filled: {filled} bytes");
        s.release_cache();
        let released = cache_used(&s);
        assert!(released < filled / 10, "cache {filled} -> {released} bytes");
        let n: i64 = s
            .lock()
            .query_row("SELECT count(*) FROM conferences", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2_000);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn audit_rows_cannot_be_changed_through_sql() {
        let s = Store::open_in_memory().unwrap();
        let c = s.lock();
        c.execute(
            "INSERT INTO audit_log (ts_ms, actor, action, detail, prev_hash, hash, mac) VALUES (1,'a','b','{}','0','h','m')",
            [],
        )
        .unwrap();
        assert!(c.execute("UPDATE audit_log SET actor='x'", []).is_err());
        assert!(c.execute("DELETE FROM audit_log", []).is_err());
    }
}
