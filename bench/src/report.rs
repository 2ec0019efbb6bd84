//! Time stamps in message content, latency histograms, and the summary line.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;
use serde_json::json;

/// Wall-clock nanoseconds since the Unix epoch: what senders put in content
/// and receivers subtract from, on the same machine.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Message content: `"<unix_nanos> <seq>"`, padded with `.` to `size` bytes.
pub fn content(sent_nanos: u64, seq: u64, size: usize) -> String {
    let mut text = format!("{sent_nanos} {seq}");
    if text.len() < size {
        text.push(' ');
        while text.len() < size {
            text.push('.');
        }
    }
    text
}

/// Reads back what [`content`] wrote: `(sent_nanos, seq)`.
pub fn parse_content(text: &str) -> Option<(u64, u64)> {
    let mut words = text.split(' ');
    let sent = words.next()?.parse().ok()?;
    let seq = words.next()?.parse().ok()?;
    Some((sent, seq))
}

/// Latency in microseconds, 3 significant figures, growing as needed.
pub fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is a valid histogram")
}

/// Records `received − sent` (nanoseconds) in microseconds; clock steps backwards count as 0.
pub fn record_latency(hist: &mut Histogram<u64>, sent_nanos: u64, received_nanos: u64) {
    let micros = received_nanos.saturating_sub(sent_nanos) / 1_000;
    // `record` grows the histogram; `saturating_record` would clamp instead.
    if hist.record(micros).is_err() {
        hist.saturating_record(micros);
    }
}

/// Everything the summary says about one run.
#[derive(Debug)]
pub struct Summary {
    /// `http`, `ws` or `raw-amqp`.
    pub mode: &'static str,
    pub rooms: u64,
    pub subs: u64,
    pub concurrency: u64,
    pub rate: Option<f64>,
    /// Messages asked for.
    pub messages: u64,
    /// Messages the server (or broker) accepted.
    pub accepted: u64,
    /// From the first publish to the last acceptance.
    pub publish_time: Duration,
    pub expected: u64,
    /// Distinct messages received, summed over sockets.
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// From the first publish to the last new delivery.
    pub delivery_time: Duration,
    pub latency: Histogram<u64>,
    pub retries: u64,
    /// Subscriber sockets that ended before the run did.
    pub closed: u64,
    /// From the first publish to the end of the run.
    pub elapsed: Duration,
}

fn per_sec(n: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

impl Summary {
    pub fn failed(&self) -> u64 {
        self.messages.saturating_sub(self.accepted)
    }

    /// Every accepted message reached every socket once, and every message was accepted.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.failed() == 0 && self.closed == 0
    }

    fn ratio(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.delivered.min(self.expected) as f64 / self.expected as f64
        }
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            0.0
        } else {
            ms(self.latency.value_at_quantile(q))
        }
    }

    /// The one text line.
    pub fn line(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "mode={} rooms={} subs={} messages={} publish_rate={:.1}/s deliveries={:.1}/s \
             delivered/expected={}/{} ({:.3}) lost={} dup={} \
             latency_ms p50={:.1} p90={:.1} p99={:.1} max={:.1} retries={} failed={} closed={} elapsed={:.1}s",
            self.mode,
            self.rooms,
            self.subs,
            self.messages,
            per_sec(self.accepted, self.publish_time),
            per_sec(self.delivered, self.delivery_time),
            self.delivered,
            self.expected,
            self.ratio(),
            self.lost,
            self.duplicates,
            self.quantile_ms(0.50),
            self.quantile_ms(0.90),
            self.quantile_ms(0.99),
            if self.latency.is_empty() {
                0.0
            } else {
                ms(self.latency.max())
            },
            self.retries,
            self.failed(),
            self.closed,
            self.elapsed.as_secs_f64(),
        );
        s
    }

    /// The same as one JSON object, with the run's parameters beside.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "mode": self.mode,
            "rooms": self.rooms,
            "subs": self.subs,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "messages": self.messages,
            "accepted": self.accepted,
            "failed": self.failed(),
            "publish_rate": per_sec(self.accepted, self.publish_time),
            "delivery_rate": per_sec(self.delivered, self.delivery_time),
            "delivered": self.delivered,
            "expected": self.expected,
            "delivered_ratio": self.ratio(),
            "lost": self.lost,
            "duplicates": self.duplicates,
            "latency_ms": {
                "p50": self.quantile_ms(0.50),
                "p90": self.quantile_ms(0.90),
                "p99": self.quantile_ms(0.99),
                "p999": self.quantile_ms(0.999),
                "max": if self.latency.is_empty() { 0.0 } else { ms(self.latency.max()) },
                "mean": self.latency.mean() / 1_000.0,
                "samples": self.latency.len(),
            },
            "retries": self.retries,
            "closed": self.closed,
            "publish_secs": self.publish_time.as_secs_f64(),
            "elapsed_secs": self.elapsed.as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trips_and_pads() {
        let text = content(1_700_000_000_000_000_000, 42, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_content(&text), Some((1_700_000_000_000_000_000, 42)));
        assert_eq!(parse_content(&content(5, 6, 0)), Some((5, 6)));
        assert_eq!(parse_content("hello"), None);
    }

    #[test]
    fn latency_in_micros() {
        let mut h = histogram();
        record_latency(&mut h, 1_000_000, 3_500_000);
        record_latency(&mut h, 10, 5); // a clock step back
        assert!(h.equivalent(h.max(), 2_500), "{}", h.max());
        assert_eq!(h.min(), 0);
    }
}
