//! Opening the database: PostgreSQL or SQLite, picked by the URL.

use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

/// Pooled SQLite connections (sea-orm's default is one).
const SQLITE_CONNECTIONS: u32 = 4;

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
        options.max_connections(16).min_connections(1);
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
