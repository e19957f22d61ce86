//! Counters and histograms, rendered as Prometheus text at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A fixed-bucket histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum, in millionths of the unit.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// The series lines only; `labels` is empty or `key="value",`.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cum += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cum}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let bare = labels.trim_end_matches(',');
        let braces = if bare.is_empty() {
            String::new()
        } else {
            format!("{{{bare}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {sum}\n{name}_count{braces} {count}"
        );
    }
}

/// Client requests timed by the server, from the decoded frame to its reply
/// (the socket write not included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `send`.
    Send,
    /// `history`.
    History,
    /// `conversations`.
    Conversations,
    /// `mark_read`.
    MarkRead,
    /// `recall`.
    Recall,
    /// `ping`, `set_profile`, `logout`.
    Other,
}

impl RequestKind {
    const ALL: [RequestKind; 6] = [
        RequestKind::Send,
        RequestKind::History,
        RequestKind::Conversations,
        RequestKind::MarkRead,
        RequestKind::Recall,
        RequestKind::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            RequestKind::Send => "send",
            RequestKind::History => "history",
            RequestKind::Conversations => "conversations",
            RequestKind::MarkRead => "mark_read",
            RequestKind::Recall => "recall",
            RequestKind::Other => "other",
        }
    }
}

const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const REQUEST_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Open, logged-in client connections.
    pub connections: AtomicU64,
    /// Successful logins.
    pub logins: AtomicU64,
    /// Failed logins.
    pub login_failures: AtomicU64,
    /// Messages accepted (acked), including online-only.
    pub sends: AtomicU64,
    /// Sends refused with an error.
    pub send_errors: AtomicU64,
    /// Frames handed to devices for live delivery.
    pub deliveries: AtomicU64,
    /// Connections closed because they could not keep up.
    pub slow_consumers: AtomicU64,
    /// Devices kicked by a newer login.
    pub kicks: AtomicU64,
    /// Retention sweep rows removed.
    pub swept_rows: AtomicU64,
    /// Jobs per store commit.
    pub commit_batch: Histogram,
    /// Store commit latency, seconds.
    pub commit_latency: Histogram,
    /// Request latency in the server, seconds, per [`RequestKind`].
    requests: [Histogram; RequestKind::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            login_failures: AtomicU64::new(0),
            sends: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            swept_rows: AtomicU64::new(0),
            commit_batch: Histogram::new(BATCH_BOUNDS),
            commit_latency: Histogram::new(LATENCY_BOUNDS),
            requests: RequestKind::ALL.map(|_| Histogram::new(REQUEST_BOUNDS)),
        }
    }
}

impl Metrics {
    /// Records one store commit.
    pub fn commit(&self, jobs: usize, latency: Duration) {
        self.commit_batch.observe(jobs as f64);
        self.commit_latency.observe(latency.as_secs_f64());
    }

    /// Records how long the server took to answer one request.
    pub fn request(&self, kind: RequestKind, took: Duration) {
        self.requests[kind as usize].observe(took.as_secs_f64());
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let g = |out: &mut String, name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        };
        g(
            &mut out,
            "duet_connections",
            "gauge",
            "Open logged-in client connections.",
            &self.connections,
        );
        g(
            &mut out,
            "duet_logins_total",
            "counter",
            "Successful logins.",
            &self.logins,
        );
        g(
            &mut out,
            "duet_login_failures_total",
            "counter",
            "Refused logins.",
            &self.login_failures,
        );
        g(
            &mut out,
            "duet_sends_total",
            "counter",
            "Messages accepted.",
            &self.sends,
        );
        g(
            &mut out,
            "duet_send_errors_total",
            "counter",
            "Sends refused with an error.",
            &self.send_errors,
        );
        g(
            &mut out,
            "duet_deliveries_total",
            "counter",
            "Frames handed to devices for live delivery.",
            &self.deliveries,
        );
        g(
            &mut out,
            "duet_slow_consumer_disconnects_total",
            "counter",
            "Connections closed because their queue was full.",
            &self.slow_consumers,
        );
        g(
            &mut out,
            "duet_kicks_total",
            "counter",
            "Devices kicked by a newer login.",
            &self.kicks,
        );
        g(
            &mut out,
            "duet_retention_swept_rows_total",
            "counter",
            "Rows removed by the retention sweep.",
            &self.swept_rows,
        );
        self.commit_batch.render(
            &mut out,
            "duet_commit_batch_size",
            "Jobs per store commit (group commit).",
        );
        self.commit_latency.render(
            &mut out,
            "duet_commit_latency_seconds",
            "Store commit latency.",
        );
        let name = "duet_request_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Client requests, from the decoded frame to the reply (socket write not included).\n# TYPE {name} histogram"
        );
        for kind in RequestKind::ALL {
            let labels = format!("kind=\"{}\",", kind.label());
            self.requests[kind as usize].render_series(&mut out, name, &labels);
        }
        out
    }
}

impl duet_store::CommitObserver for Metrics {
    fn batch_committed(&self, jobs: usize, latency: Duration) {
        self.commit(jobs, latency);
    }
}
