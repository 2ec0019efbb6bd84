//! The application as a value: build it from a [`Config`], learn its address,
//! run it until a shutdown future resolves. `main` and the tests use the same path.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use consumer::{
    Broker, Hub,
    broker::{amqp::AmqpBroker, memory::MemoryBroker},
};
use entity::user::Role;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::{TokenKeys, password},
    config::Config,
    db,
    limits::Limits,
    presence::Presence,
    queries::{QueryError, users},
    routes,
    stages::Stages,
    state::AppState,
};

/// How long shutdown waits for sockets to say goodbye.
const SOCKET_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
/// How often rows of revoked tokens past their expiry are deleted (and at start).
const REVOKED_TOKENS_PRUNE: std::time::Duration = std::time::Duration::from_secs(3600);

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Connects and migrates the database, creates the bootstrap admin, binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        config.validate_serving().map_err(anyhow::Error::msg)?;
        if config.uses_dev_secret() {
            tracing::warn!(
                "SECRET_KEY is not set: tokens are signed with the PUBLIC DEVELOPMENT KEY. \
                 Anyone can forge them. Set SECRET_KEY before exposing this server."
            );
        } else if config.uses_placeholder_secret() {
            tracing::warn!(
                "SECRET_KEY is a PUBLIC PLACEHOLDER: anyone can forge tokens. \
                 This server listens on loopback only; set a random SECRET_KEY before exposing it."
            );
        }
        migrate(&config.database_url).await?;
        let db = db::connect_with(&config.database_url, config.database_max_connections)
            .await
            .context("DATABASE_URL: cannot connect")?;
        bootstrap_admin(&db, &config).await?;

        let listener = TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("BIND: cannot listen on {}", config.bind))?;
        let tokens = Arc::new(TokenKeys::new(config.signing_key()));
        let node_id: Arc<str> = config.node_id().into();
        let broker: Arc<dyn Broker> = match &config.amqp_url {
            Some(url) => Arc::new(
                AmqpBroker::start_partitioned(url, &node_id, config.message_partitions).await,
            ),
            None => Arc::new(MemoryBroker::with_capacity(
                config.inprocess_queue_capacity as usize,
            )),
        };
        let limits = Limits::new(config.socket_connect_burst, config.socket_connect_rate);
        let quotas = crate::quotas::Quotas::new(&config);
        let presence = Presence::start(broker.clone());
        let state = AppState {
            db,
            config: Arc::new(config),
            tokens,
            broker,
            hub: Hub::new(),
            presence,
            node_id,
            stop: CancellationToken::new(),
            sockets: TaskTracker::new(),
            limits,
            quotas,
            caches: Arc::default(),
        };
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Runs the store and delivery stages and serves until `shutdown`
    /// resolves; then closes the sockets (1012), lets in-flight requests
    /// finish, stops the stages and closes the broker and the database.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let state = self.state;
        let config = &state.config;
        tracing::info!(
            node = &*state.node_id,
            database = db::backend_name(&config.database_url),
            broker = if config.amqp_url.is_some() {
                "rabbitmq"
            } else {
                "in-process"
            },
            "roomcast listening on http://{addr} (web client /, API docs /docs, metrics /metrics)"
        );
        crate::metrics::handle();
        crate::metrics::register();
        let stages = Stages::start(
            &config.database_url,
            config.database_max_connections,
            state.broker.clone(),
            state.hub.clone(),
            consumer::store::Settings {
                key: consumer::signing::EnvelopeKey::derive(config.signing_key().as_bytes()),
                // Ingest's limit: what it accepted is never refused as too large.
                max_content_bytes: config.max_message_bytes as usize,
            },
            state.stop.clone(),
        )
        .await?;
        let (limits, quotas) = (state.limits.clone(), state.quotas.clone());
        let shrink = tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every.tick().await;
                limits.shrink();
                quotas.shrink();
            }
        });
        let db = state.db.clone();
        let prune = tokio::spawn(async move {
            let mut every = tokio::time::interval(REVOKED_TOKENS_PRUNE);
            loop {
                every.tick().await;
                match crate::queries::tokens::prune_expired(&db).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "expired revoked tokens pruned"),
                    Err(err) => tracing::warn!(error = %err, "pruning revoked tokens failed"),
                }
            }
        });
        let checkpoints = db::checkpoint_sqlite(state.db.clone());
        let user_events = tokio::spawn(crate::user_events::run(state.clone()));
        let app = routes::router(state.clone());
        let stop = state.stop.clone();
        let header_timeout = std::time::Duration::from_secs(config.http_header_timeout);
        crate::serve::serve(self.listener, app, header_timeout, async move {
            shutdown.await;
            stop.cancel();
        })
        .await;
        state.stop.cancel();
        // Upgraded sockets outlive the HTTP server; let them send their 1012.
        state.sockets.close();
        let _ = tokio::time::timeout(SOCKET_DRAIN, state.sockets.wait()).await;
        state.presence.close().await;
        stages.stopped().await;
        shrink.abort();
        prune.abort();
        if let Some(checkpoints) = checkpoints {
            checkpoints.abort();
        }
        user_events.abort();
        state.broker.close().await;
        state.db.clone().close().await.ok();
        tracing::info!("roomcast stopped");
        Ok(())
    }
}

/// Runs pending migrations. On PostgreSQL an advisory lock, held on one
/// dedicated connection, lets several nodes start at once without racing.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    const MIGRATION_LOCK: i64 = 0x726f_6f6d_6361_7374; // "roomcast"
    let mut options = sea_orm::ConnectOptions::new(url.to_owned());
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    let db = sea_orm::Database::connect(options)
        .await
        .context("DATABASE_URL: cannot connect")?;
    let postgres = db.get_database_backend() == sea_orm::DbBackend::Postgres;
    if postgres {
        db.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .await?;
    }
    let result = Migrator::up(&db, None)
        .await
        .context("migrating the database");
    if postgres {
        db.execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .await
            .ok();
    }
    db.close().await.ok();
    result
}

/// Creates `ADMIN_USERNAME` as an admin if no such user exists. An existing
/// account is promoted only if its password is `ADMIN_PASSWORD`: otherwise
/// whoever registered a free admin name first would become admin at the next
/// restart.
async fn bootstrap_admin(db: &DatabaseConnection, config: &Config) -> anyhow::Result<()> {
    let (Some(username), Some(password)) = (&config.admin_username, &config.admin_password) else {
        return Ok(());
    };
    if let Some(user) = users::find_by_username(db, username).await? {
        if user.role == Role::Admin {
            return Ok(());
        }
        let matches = match user.password_hash.clone() {
            Some(phc) => password::verify(password.expose().to_owned(), phc)
                .await
                .map_err(|e| anyhow::anyhow!(e.detail))?,
            None => false,
        };
        if matches {
            users::set_role(db, user, Role::Admin).await?;
            tracing::info!(%username, "bootstrap admin promoted");
        } else {
            tracing::warn!(
                %username,
                "ADMIN_USERNAME names an existing account whose password is not ADMIN_PASSWORD: \
                 promoting no one (use `roomcast admin create --promote` to promote it)"
            );
        }
        return Ok(());
    }
    create_admin(
        db,
        username,
        &format!("{}@localhost", username.to_lowercase()),
        password.expose(),
        false,
    )
    .await?;
    tracing::info!(%username, "bootstrap admin created");
    Ok(())
}

/// What [`create_admin`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCreated {
    Created,
    /// The account existed: it is an admin now, with the given password.
    Promoted,
}

/// Creates an admin account, checking the same rules as registration. An
/// existing account of that name is an error, unless `promote`: then it
/// becomes an admin and its password is reset to `password` (its other
/// tokens and refresh cookies stop working, as after any password change).
pub async fn create_admin(
    db: &DatabaseConnection,
    username: &str,
    email: &str,
    password: &str,
    promote: bool,
) -> anyhow::Result<AdminCreated> {
    crate::domain::validate_username(username)
        .map_err(|e| anyhow::anyhow!("ADMIN_USERNAME: {e}"))?;
    if !(8..=128).contains(&password.chars().count()) {
        anyhow::bail!("ADMIN_PASSWORD: must be 8 to 128 characters");
    }
    let hash = password::hash(password.to_owned())
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
    if let Some(user) = users::find_by_username(db, username).await? {
        if !promote {
            anyhow::bail!(
                "user {username} already exists; nothing changed. Pass --promote to make it \
                 an admin and set its password to --password"
            );
        }
        if user.role == Role::Guest {
            anyhow::bail!("user {username} is a guest account and cannot become an admin");
        }
        // The new password ends every sign-in, refresh cookies too: whoever
        // held the account before must not refresh into an admin's token.
        // Revoked first and all in one transaction, so that no refresh
        // lands between the new token generation and the revocation.
        let txn = db.begin().await?;
        crate::auth::refresh::revoke_user(&txn, user.id)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
        let user = users::update_account(&txn, user, None, Some(hash), None).await?;
        users::set_role(&txn, user, Role::Admin).await?;
        txn.commit().await?;
        return Ok(AdminCreated::Promoted);
    }
    let new = users::NewUser {
        username: username.into(),
        email: email.into(),
        password_hash: Some(hash),
        role: Role::Admin,
    };
    match users::create(db, new).await {
        Ok(_) => Ok(AdminCreated::Created),
        // Another node created it at the same moment.
        Err(QueryError::UsernameTaken) if !promote => Ok(AdminCreated::Created),
        Err(e) => Err(e.into()),
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed by this call,
/// not on first poll, so a signal that arrives during start-up is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
        let mut interrupt = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
        async move {
            tokio::select! {
                _ = terminate.recv() => {},
                _ = interrupt.recv() => {},
            }
            tracing::info!("shutdown signal received");
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
}
