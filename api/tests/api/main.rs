//! The API's tests, one binary: each module is one resource, and most tests
//! run twice, on SQLite and on PostgreSQL (`on_both_backends!`).

mod helpers;
mod ws_client;

mod accounts;
mod auth;
mod authz;
mod autobahn;
mod avatars;
mod browser;
mod cli;
mod cluster;
mod conformance;
mod deploy;
mod echo;
mod edits;
mod errors;
mod faults;
mod fuzz;
mod health;
mod hostile;
mod limits;
mod messages;
mod openapi;
mod pipeline;
mod postman;
mod rooms;
mod sessions;
mod telemetry;
mod user_ws;
mod users;
mod ws;
