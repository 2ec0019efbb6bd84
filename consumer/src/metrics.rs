//! Names of the metrics this crate records (through the `metrics` facade;
//! the `api` crate installs the Prometheus exporter), and [`register`].

/// Messages the store stage wrote (new rows, not redeliveries).
pub const MESSAGES_STORED: &str = "roomcast_messages_stored_total";
/// Messages sent to `messages.dlq`, labelled by `reason` (a
/// [`crate::event::Reject`] label).
pub const MESSAGES_DEAD_LETTERED: &str = "roomcast_messages_dead_lettered_total";
/// `room.events` messages the store stage published: one per room and
/// stored batch, each carrying that room's `message` events.
pub const ROOM_EVENT_BATCHES: &str = "roomcast_room_event_batches_total";
/// Partition queues (`MESSAGE_PARTITIONS` > 1) this node's store stage is
/// the active consumer of, as its probes tell.
pub const PARTITIONS_HELD: &str = "roomcast_store_partitions_held";
/// `message` events handed to a local socket's queue.
pub const MESSAGES_DELIVERED: &str = "roomcast_messages_delivered_total";
/// From ingest (`created_at`) to the hand-over to local sockets, in seconds.
pub const DELIVERY_LATENCY: &str = "roomcast_delivery_latency_seconds";
/// Messages in each batch the store stage took (up to `BATCH_MAX`).
pub const STORE_BATCH_MESSAGES: &str = "roomcast_store_batch_messages";
/// How long the store stage took to write a batch to the database.
pub const STORE_BATCH_SECONDS: &str = "roomcast_store_batch_seconds";
/// How long the store stage took to settle a batch: its dead letters, its
/// room events confirmed, its acks sent.
pub const STORE_SETTLE_SECONDS: &str = "roomcast_store_settle_seconds";
/// Broker connections re-established after a loss.
pub const BROKER_RECONNECTS: &str = "roomcast_broker_reconnects_total";
/// Sockets closed with 1013 for falling behind.
pub const SLOW_CONSUMER_DISCONNECTS: &str = "roomcast_slow_consumer_disconnects_total";

/// Describes this crate's metrics and registers its counters at zero, so a
/// scrape shows them from start-up, not from their first increment (a
/// counter that appears late makes `rate()` miss its first step).
pub fn register() {
    metrics::describe_counter!(
        MESSAGES_STORED,
        "Messages the store stage wrote (new rows, not redeliveries)"
    );
    metrics::describe_counter!(
        MESSAGES_DEAD_LETTERED,
        "Messages sent to messages.dlq, by reason"
    );
    metrics::describe_counter!(
        ROOM_EVENT_BATCHES,
        "room.events messages the store stage published (one per room and batch)"
    );
    metrics::describe_gauge!(
        PARTITIONS_HELD,
        "Partition queues this node's store stage is the active consumer of"
    );
    metrics::describe_counter!(
        MESSAGES_DELIVERED,
        "Message events handed to a local socket's queue"
    );
    metrics::describe_histogram!(
        DELIVERY_LATENCY,
        metrics::Unit::Seconds,
        "From ingest to the hand-over to local sockets"
    );
    metrics::describe_histogram!(
        STORE_BATCH_MESSAGES,
        "Messages in each batch the store stage took"
    );
    metrics::describe_histogram!(
        STORE_BATCH_SECONDS,
        metrics::Unit::Seconds,
        "How long the store stage took to write a batch to the database"
    );
    metrics::describe_histogram!(
        STORE_SETTLE_SECONDS,
        metrics::Unit::Seconds,
        "How long the store stage took to publish a batch's events and ack it"
    );
    metrics::describe_counter!(
        BROKER_RECONNECTS,
        "Broker connections re-established after a loss"
    );
    metrics::describe_counter!(
        SLOW_CONSUMER_DISCONNECTS,
        "Sockets closed with 1013 for falling behind"
    );
    for name in [
        MESSAGES_STORED,
        ROOM_EVENT_BATCHES,
        MESSAGES_DELIVERED,
        BROKER_RECONNECTS,
        SLOW_CONSUMER_DISCONNECTS,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in crate::event::Reject::ALL {
        metrics::counter!(MESSAGES_DEAD_LETTERED, "reason" => reason.label()).increment(0);
    }
}
