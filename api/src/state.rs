//! What every handler shares.

use std::sync::Arc;

use consumer::{Broker, Hub};
use sea_orm::DatabaseConnection;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{auth::TokenKeys, cache::Caches, config::Config, limits::Limits, presence::Presence};

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub config: Arc<Config>,
    pub tokens: Arc<TokenKeys>,
    pub broker: Arc<dyn Broker>,
    /// This node's sockets.
    pub hub: Arc<Hub>,
    /// Who is in each room on this node, as `join` and `leave` tell it.
    pub presence: Arc<Presence>,
    pub node_id: Arc<str>,
    /// Cancelled when the server shuts down: sockets close with 1012.
    pub stop: CancellationToken,
    pub limits: Arc<Limits>,
    /// Rates and gates on costly work (registrations, hashing, messages...).
    pub quotas: Arc<crate::quotas::Quotas>,
    /// Tokens, rooms and memberships the ingest path has just read.
    pub caches: Arc<Caches>,
    /// Open sockets, so shutdown can wait for their close frames.
    pub sockets: TaskTracker,
}
