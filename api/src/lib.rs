//! The roomcast server: HTTP and WebSocket API, authentication, rooms,
//! configuration and the command line. It owns the edge of the message path;
//! the broker, store stage and delivery live in the `consumer` crate.
//!
//! # Layout
//! - [`config`]: typed configuration from the environment; [`cli`]: the
//!   commands; [`seed`]: `seed-demo`; [`telemetry`]: logging.
//! - [`app`]: [`Application`] — build from a config, bind, serve until shutdown;
//!   [`serve`]: the HTTP listener (connections, header deadline, draining);
//!   [`stages`]: the thread the store and delivery stages run on;
//!   [`db`]: opening the database; [`state`]: what every handler shares.
//! - [`routes`]: one module per resource (`auth`, `users`, `admin`, `rooms`,
//!   `messages`, `ws` (room sockets), `user_ws` (the user's own socket), `guest`,
//!   `echo`, `health`, `web`), and `problem`, which
//!   keeps every error answer problem+json.
//! - [`access`]: who may read, post in, enter, join or manage a room — the one
//!   policy of HTTP, sockets and guest tokens, with auto-creation of rooms.
//! - [`ingest`]: the first stage of the message path — check, id, publish, confirm.
//! - [`frames`]: the socket's own server frames (`welcome`, `ack`, `error`, …).
//! - [`presence`]: who is in each room on this node (`join` and `leave`).
//! - [`auth`]: password hashing, access and refresh tokens, their cookies, the
//!   `AuthUser` extractor.
//! - [`queries`]: the queries behind the routes, one module per aggregate,
//!   failing with their own `QueryError`.
//! - [`domain`]: the rules for names; [`avatar`]: avatar images.
//! - [`cache`]: short-lived caches of tokens, rooms and memberships for ingest;
//!   [`user_events`]: account changes announced to, and applied on, every node.
//! - [`limits`]: rate and abuse limits ([`quotas`]: registrations, guest
//!   tokens, HTTP messages, room creations, the password-hashing and avatar
//!   gates; [`socket_slots`]: each user's open sockets); [`client_addr`]: the
//!   client's address, from `CLIENT_IP_SOURCE`.
//! - [`error`]: `ApiError`, which every failure becomes (problem+json).
//! - [`extract`]: body and query extractors that fail as `ApiError`.
//! - [`metrics`]: the Prometheus exporter and `GET /metrics`.

#![warn(clippy::too_many_lines)]

pub mod access;
pub mod app;
pub mod auth;
pub mod avatar;
pub mod cache;
pub mod cli;
pub mod client_addr;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod extract;
pub mod frames;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod presence;
pub mod queries;
pub mod quotas;
pub mod routes;
pub mod seed;
pub mod serve;
pub mod socket_slots;
pub mod stages;
pub mod state;
pub mod telemetry;
pub mod user_events;

pub use app::Application;
pub use config::Config;
