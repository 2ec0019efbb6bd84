//! Opening the database: PostgreSQL or SQLite, picked by the URL.

use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

/// Pooled SQLite connections (sea-orm's default is one).
const SQLITE_CONNECTIONS: u32 = 4;
/// PostgreSQL connections each pool keeps open, idle or not.
const MIN_POSTGRES_CONNECTIONS: u32 = 4;

/// Connects with settings that suit the backend: SQLite in WAL mode with a
/// busy timeout (one writer at a time), PostgreSQL with a small pool.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if url.starts_with("sqlite:") {
        // WAL lets readers run beside the one writer: without a few
        // connections, the store stage's transaction queues behind every
        // request's reads. Writes still take turns (busy_timeout).
        options
            .max_connections(SQLITE_CONNECTIONS)
            .min_connections(1);
        options.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    } else {
        // A few connections open from the start: the store stage's next
        // batch often begins before the last one's connection is back in
        // the pool, and a pool that then opens one more stalls that batch
        // (measured: about 90 ms each, twice in a node's first second of
        // load, and so the steady rate's p99).
        options
            .max_connections(16)
            .min_connections(MIN_POSTGRES_CONNECTIONS);
    }
    Database::connect(options).await
}

/// A short name of the backend for logs: `postgres` or `sqlite`.
pub fn backend_name(url: &str) -> &'static str {
    if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    }
}
