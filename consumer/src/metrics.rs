//! Names of the metrics this crate records (through the `metrics` facade;
//! the `api` crate installs the Prometheus exporter).

/// Messages the store stage wrote (new rows, not redeliveries).
pub const MESSAGES_STORED: &str = "roomcast_messages_stored_total";
/// Messages sent to `messages.dlq`, labelled by `reason`.
pub const MESSAGES_DEAD_LETTERED: &str = "roomcast_messages_dead_lettered_total";
/// `message` events handed to a local socket's queue.
pub const MESSAGES_DELIVERED: &str = "roomcast_messages_delivered_total";
/// From ingest (`created_at`) to the hand-over to local sockets, in seconds.
pub const DELIVERY_LATENCY: &str = "roomcast_delivery_latency_seconds";
/// Broker connections re-established after a loss.
pub const BROKER_RECONNECTS: &str = "roomcast_broker_reconnects_total";
/// Sockets closed with 1013 for falling behind.
pub const SLOW_CONSUMER_DISCONNECTS: &str = "roomcast_slow_consumer_disconnects_total";
