//! The command line: serve (the default), migrations, demo data, admin accounts.

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

/// roomcast: real-time rooms over WebSocket, with every message through a broker.
///
/// Every option is also read from the environment variable named beside it, and
/// from a `.env` file in the working directory.
#[derive(Debug, Parser)]
#[command(name = "roomcast", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (what `roomcast` alone does).
    Serve,
    /// Apply, undo or list schema migrations on DATABASE_URL.
    Migrate {
        #[arg(value_enum)]
        action: MigrateAction,
    },
    /// Create three demo users (alice, bob, carol; password `demo-password`) and a few rooms with
    /// messages in DATABASE_URL.
    SeedDemo,
    /// Manage the accounts in DATABASE_URL.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// Undo the most recent migration.
    Down,
    /// List migrations and whether each is applied.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Create an admin account (or, with --promote, make an existing one admin).
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
        /// The password; better given through the environment.
        #[arg(long, env = "ROOMCAST_NEW_ADMIN_PASSWORD", hide_env_values = true)]
        password: String,
        /// If the user exists, make it an admin and reset its password to
        /// --password (without this flag an existing user is an error).
        #[arg(long)]
        promote: bool,
    },
}
