//! Names of the metrics this crate records (through the `metrics` facade;
//! the `api` crate installs the Prometheus exporter), and [`register`].

/// Messages the store stage wrote (new rows, not redeliveries).
pub const MESSAGES_STORED: &str = "roomcast_messages_stored_total";
/// Messages sent to `messages.dlq`, labelled by `reason` (one of
/// [`DEAD_LETTER_REASONS`]).
pub const MESSAGES_DEAD_LETTERED: &str = "roomcast_messages_dead_lettered_total";
/// `message` events handed to a local socket's queue.
pub const MESSAGES_DELIVERED: &str = "roomcast_messages_delivered_total";
/// From ingest (`created_at`) to the hand-over to local sockets, in seconds.
pub const DELIVERY_LATENCY: &str = "roomcast_delivery_latency_seconds";
/// Broker connections re-established after a loss.
pub const BROKER_RECONNECTS: &str = "roomcast_broker_reconnects_total";
/// Sockets closed with 1013 for falling behind.
pub const SLOW_CONSUMER_DISCONNECTS: &str = "roomcast_slow_consumer_disconnects_total";

/// The `reason` labels of [`MESSAGES_DEAD_LETTERED`]: the part of the store
/// stage's reason before any `:` detail.
pub const DEAD_LETTER_REASONS: [&str; 7] = [
    "unparseable",
    "invalid_text",
    "unknown_room",
    "empty_content",
    "too_large",
    "unknown_sender",
    "not_a_member",
];

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
        MESSAGES_DELIVERED,
        "Message events handed to a local socket's queue"
    );
    metrics::describe_histogram!(
        DELIVERY_LATENCY,
        metrics::Unit::Seconds,
        "From ingest to the hand-over to local sockets"
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
        MESSAGES_DELIVERED,
        BROKER_RECONNECTS,
        SLOW_CONSUMER_DISCONNECTS,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in DEAD_LETTER_REASONS {
        metrics::counter!(MESSAGES_DEAD_LETTERED, "reason" => reason).increment(0);
    }
}

#[cfg(test)]
mod tests {
    /// A reason the store stage gains must be registered too, or its series
    /// appears only at its first dead letter.
    #[test]
    fn every_dead_letter_reason_is_registered() {
        let store = include_str!("store.rs");
        let mut found = Vec::new();
        for (at, _) in store.match_indices("rejected.push((") {
            let rest = &store[at..];
            let line = rest.lines().next().unwrap_or_default();
            let Some(start) = line.find('"') else {
                continue;
            };
            let reason: String = line[start + 1..]
                .chars()
                .take_while(|c| *c != '"' && *c != ':')
                .collect();
            found.push(reason);
        }
        assert!(
            found.len() >= 7,
            "the scan found too few reasons: {found:?}"
        );
        for reason in &found {
            assert!(
                super::DEAD_LETTER_REASONS.contains(&reason.as_str()),
                "{reason} is not in DEAD_LETTER_REASONS"
            );
        }
    }
}
