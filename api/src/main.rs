use std::process::ExitCode;

use api::{
    Application,
    app::{create_admin, migrate, shutdown_signal},
    cli::{AdminAction, Cli, Command, MigrateAction},
    db, seed, telemetry,
};
use clap::Parser;
use migration::{Migrator, MigratorTrait};

#[tokio::main]
async fn main() -> ExitCode {
    // A missing .env is normal; a broken one is reported by the values it sets.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    if let Err(line) = cli.config.validate() {
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
                },
        } => {
            migrate(&config.database_url).await?;
            create_admin(
                &db::connect(&config.database_url).await?,
                &username,
                &email,
                &password,
            )
            .await?;
            println!("admin {username} created");
            Ok(())
        }
    }
}
