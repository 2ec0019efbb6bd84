//! roomcast's broker side: everything between "a message was accepted" and "a
//! socket received it". It never speaks HTTP; the `api` crate calls into it.
//!
//! # Layout
//! - [`event`]: the wire formats — the [`Envelope`](event::Envelope) published to
//!   the `messages` queue, and the room events sent on the `room.events` exchange.
//! - [`broker`]: the [`Broker`] trait and its two implementations,
//!   [`broker::amqp`] (RabbitMQ through lapin) and [`broker::memory`] (in-process).
//! - [`rules`]: the rules of a message's fields, shared by ingest and the store stage.
//! - [`signing`]: the signature ingest puts on an envelope, which the store stage
//!   checks before it trusts the sender.
//! - [`store`]: the store stage — consumes `messages` (or, with
//!   `MESSAGE_PARTITIONS` > 1, the partitions it holds), checks the rules again,
//!   assigns each room's next `seq`, persists idempotently, publishes one
//!   event batch per room, acks.
//! - [`delivery`]: the delivery stage — consumes this node's event queue into the [`Hub`].
//! - [`hub`]: this node's sockets by room, each behind a bounded queue;
//!   [`hub::user_sockets`]: the same sockets by user, which user events close.
//! - [`metrics`]: the names of the metrics recorded here.

#![warn(clippy::too_many_lines)]

pub mod broker;
pub mod delivery;
pub mod event;
pub mod hub;
pub mod metrics;
pub mod rules;
pub mod signing;
pub mod store;

pub use broker::{Broker, BrokerError, BrokerStatus};
pub use hub::Hub;
