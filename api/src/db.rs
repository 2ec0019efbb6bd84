//! Opening the database: PostgreSQL or SQLite, picked by the URL; and, on
//! SQLite, checkpointing its write-ahead log in the background.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};

/// Pooled SQLite connections (sea-orm's default is one).
const SQLITE_CONNECTIONS: u32 = 4;
/// PostgreSQL connections each pool keeps open, idle or not.
const MIN_POSTGRES_CONNECTIONS: u32 = 4;
/// How often [`checkpoint_sqlite`] copies SQLite's write-ahead log back
/// into the database file.
const SQLITE_CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Log pages past which a commit checkpoints by itself (SQLite's default is
/// 1 000). Under a steady write load a background pass seldom copies the
/// log's very last page (a commit lands while it runs), and the log goes
/// back to its start only after a pass that did: so it fills up to here,
/// 64 MiB of 4 KiB pages, and that commit's checkpoint copies what the last
/// background pass left, a few pages, not the whole log.
const SQLITE_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// What the log file is cut back to when it starts over, should a long read
/// have held it past the pages above: the same 64 MiB.
const SQLITE_LOG_FILE_LIMIT: u32 = 64 << 20;

/// PostgreSQL connections a pool may open unless told otherwise
/// (`DATABASE_MAX_CONNECTIONS`).
pub const MAX_POSTGRES_CONNECTIONS: u32 = 16;

/// [`connect_with`] a pool of the default size: for the CLI's commands.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    connect_with(url, MAX_POSTGRES_CONNECTIONS).await
}

/// Connects with settings that suit the backend: SQLite in WAL mode with a
/// busy timeout (one writer at a time), PostgreSQL with a pool of at most
/// `max_postgres` connections.
pub async fn connect_with(url: &str, max_postgres: u32) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if url.starts_with("sqlite:") {
        // WAL lets readers run beside the one writer: without a few
        // connections, the store stage's transaction queues behind every
        // request's reads. Writes still take turns (busy_timeout).
        // A connection to a file cannot be cut: no ping before each use
        // (a hand-off to the connection's thread and back).
        options
            .max_connections(SQLITE_CONNECTIONS)
            .min_connections(1)
            .test_before_acquire(false);
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // The log is checkpointed by `checkpoint_sqlite`, not by
                // the commit that fills it: that commit would write every
                // page back and sync the file before it returns (measured,
                // end to end at 1 000 msg/s: p99 5.3-6.5 ms with SQLite's
                // default, 1.8-3.3 ms so).
                .pragma(
                    "wal_autocheckpoint",
                    SQLITE_AUTOCHECKPOINT_PAGES.to_string(),
                )
                .pragma("journal_size_limit", SQLITE_LOG_FILE_LIMIT.to_string())
        });
    } else {
        // A few connections open from the start: the store stage's next
        // batch often begins before the last one's connection is back in
        // the pool, and a pool that then opens one more stalls that batch
        // (measured: about 90 ms each, twice in a node's first second of
        // load, and so the steady rate's p99).
        options
            .max_connections(max_postgres.max(1))
            .min_connections(MIN_POSTGRES_CONNECTIONS.min(max_postgres.max(1)));
    }
    Database::connect(options).await
}

/// On SQLite, checkpoints the write-ahead log every
/// [`SQLITE_CHECKPOINT_EVERY`] until aborted, on one of `db`'s connections
/// for the pass (copying the pages and syncing the two files), so that no
/// commit waits for one (a passive checkpoint: writers and readers
/// go on beside it). `None` on PostgreSQL.
pub fn checkpoint_sqlite(db: DatabaseConnection) -> Option<tokio::task::JoinHandle<()>> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(SQLITE_CHECKPOINT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(err) = db
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await
            {
                tracing::warn!(error = %err, "SQLite checkpoint failed");
            }
        }
    }))
}

/// A short name of the backend for logs: `postgres` or `sqlite`.
pub fn backend_name(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::Statement;

    async fn pragma(db: &DatabaseConnection, name: &str) -> i64 {
        db.query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            format!("PRAGMA {name}"),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap()
    }

    /// Commits leave the log to the background checkpoints, which copy it
    /// into the database file: 1 000 rows of 8 KiB (over 8 MB) stay in the
    /// log alone without them (under the commits' own threshold), and the
    /// file holds its first page only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_log_is_checkpointed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roomcast.db");
        let db = connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .unwrap();
        assert_eq!(
            pragma(&db, "wal_autocheckpoint").await,
            i64::from(SQLITE_AUTOCHECKPOINT_PAGES)
        );
        db.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
            .await
            .unwrap();
        let checkpoints = checkpoint_sqlite(db.clone()).expect("SQLite is checkpointed");
        for _ in 0..1_000 {
            db.execute_unprepared("INSERT INTO t (body) VALUES (randomblob(8192))")
                .await
                .unwrap();
        }
        let file_size = || std::fs::metadata(&path).unwrap().len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while file_size() < 4 << 20 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        checkpoints.abort();
        assert!(
            file_size() >= 4 << 20,
            "the rows are still in the log alone: the database file is {} bytes",
            file_size()
        );
    }
}
