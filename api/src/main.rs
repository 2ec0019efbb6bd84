//! The `roomcast` binary: the command line over the `api` library.

#![warn(clippy::too_many_lines)]
use std::process::ExitCode;

use api::{
    Application,
    app::{AdminCreated, create_admin, migrate, shutdown_signal},
    cli::{AdminAction, Cli, Command, MigrateAction},
    db, seed, telemetry,
};
use clap::Parser;
use migration::{Migrator, MigratorTrait};

/// mimalloc rather than the C library's allocator, whose `malloc` and `free`
/// took about a seventh of the server's CPU flat out (BENCHMARKS.md,
/// 2026-12-07). It also keeps argon2's 19 MiB blocks bounded: freed pages go
/// back to the system after a delay, where the C library's per-thread arenas
/// kept one block per thread that ever hashed
/// (`hostile::password_hashing_returns_its_memory`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // A missing .env is normal; a broken one is reported by the values it sets.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let serving = matches!(cli.command, None | Some(Command::Serve));
    let checked = cli.config.validate().and_then(|()| {
        if serving {
            cli.config.validate_serving()
        } else {
            Ok(())
        }
    });
    if let Err(line) = checked {
        eprintln!("error: {line}");
        return ExitCode::from(2);
    }
    telemetry::init(cli.config.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    let shutdown = shutdown_signal();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            Application::build(config)
                .await?
                .run_until_stopped(shutdown)
                .await
        }
        Command::Migrate {
            action: MigrateAction::Up,
        } => migrate(&config.database_url).await,
        Command::Migrate {
            action: MigrateAction::Down,
        } => {
            let conn = db::connect(&config.database_url).await?;
            Ok(Migrator::down(&conn, Some(1)).await?)
        }
        Command::Migrate {
            action: MigrateAction::Status,
        } => {
            let conn = db::connect(&config.database_url).await?;
            for migration in Migrator::get_migration_with_status(&conn).await? {
                println!("{:<40} {:?}", migration.name(), migration.status());
            }
            Ok(())
        }
        Command::SeedDemo => {
            migrate(&config.database_url).await?;
            seed::seed_demo(&db::connect(&config.database_url).await?).await
        }
        Command::Admin {
            action:
                AdminAction::Create {
                    username,
                    email,
                    password,
                    promote,
                },
        } => {
            migrate(&config.database_url).await?;
            let done = create_admin(
                &db::connect(&config.database_url).await?,
                &username,
                &email,
                &password,
                promote,
            )
            .await?;
            match done {
                AdminCreated::Created => println!("admin {username} created"),
                AdminCreated::Promoted => {
                    println!("{username} promoted to admin; its password was reset")
                }
            }
            Ok(())
        }
    }
}
