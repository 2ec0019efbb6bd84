//! roomcast's schema, as sea-orm-migration migrations that run unchanged on
//! PostgreSQL and SQLite.
//!
//! The server runs [`Migrator::up`] when it starts; `roomcast migrate up|down|status`
//! and this crate's own binary run them by hand. Migrations only use statements
//! SQLite can run (no ALTER of columns or foreign keys).

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_tables;
mod m20261122_000002_public_room;
mod m20261122_000003_echo_transcripts;
mod m20261201_000004_sender_deleted;
mod m20261204_000005_token_generation;
mod m20261204_000006_avatar_version;
mod m20261204_000007_refresh_tokens;

/// The ordered list of roomcast's migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_tables::Migration),
            Box::new(m20261122_000002_public_room::Migration),
            Box::new(m20261122_000003_echo_transcripts::Migration),
            Box::new(m20261201_000004_sender_deleted::Migration),
            Box::new(m20261204_000005_token_generation::Migration),
            Box::new(m20261204_000006_avatar_version::Migration),
            Box::new(m20261204_000007_refresh_tokens::Migration),
        ]
    }
}
