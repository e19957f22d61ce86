//! The result of a run: one JSON object (`--json`) or a human table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Latency;

/// Request latency as the server's `/metrics` histogram saw it: quantiles
/// are given as the bucket bound that holds them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ServerLatency {
    /// Requests the server timed in the window.
    pub count: u64,
    /// Median is at most this, ms.
    pub p50_at_most: Option<f64>,
    /// 99th percentile is at most this, ms.
    pub p99_at_most: Option<f64>,
    /// Share answered within 5 ms, %.
    pub within_5ms_pct: Option<f64>,
}

/// What a scenario measured. Fields that do not apply to the scenario are
/// `None` and left out of the JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// `connections`, `online`, `offline` or `history`.
    pub scenario: String,
    /// Server base URL.
    pub server: String,
    /// Server PID the CPU and RSS figures were read from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_pid: Option<u32>,
    /// Parameters of the run, as given.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Length of the measured window, seconds.
    pub measured_secs: f64,
    /// Wall time of the whole run (setup, measure, grace), seconds.
    pub wall_secs: f64,

    // --- connections ---
    /// Connections logged in and still open at the end of the hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Connections that failed to connect or log in, or closed during the hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u64>,
    /// Successful logins per second (connect + WebSocket upgrade + login, all N).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logins_per_sec: Option<f64>,
    /// TCP connect + WebSocket upgrade + `login` → `login_ok`, per connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_latency_ms: Option<Latency>,
    /// Just the `login` frame → `login_ok` round trip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_rtt_ms: Option<Latency>,
    /// Server VmRSS before the connections, KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_before_kib: Option<u64>,
    /// Server VmRSS at the end of the measured window, KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_kib: Option<u64>,
    /// (RSS after − RSS before) / connections, KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_conn_kib: Option<f64>,
    /// Generator VmRSS at the end of the measured window, KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_rss_kib: Option<u64>,

    // --- message load (online, history background) ---
    /// Sends issued in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    /// Acks received in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<u64>,
    /// Live deliveries received in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    /// Sends issued per second in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_per_sec: Option<f64>,
    /// Acks (durable sends) per second in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked_per_sec: Option<f64>,
    /// Live deliveries to the recipient device per second in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_per_sec: Option<f64>,
    /// Acked (whole run) but never delivered live by the end of the grace period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// Of `lost`, how many the recipient then found in its history (stored, not pushed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_found_in_history: Option<u64>,
    /// Deliveries of a message already delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicated: Option<u64>,
    /// Deliveries of a message after a later one of the same sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_order: Option<u64>,
    /// Live entries delivered after an entry with a higher number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_commit_order: Option<u64>,
    /// Sends the server refused, or that failed on the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_errors: Option<u64>,
    /// Sends without an answer at the end of the grace period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unacked: Option<u64>,
    /// Connections closed by the server during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnects: Option<u64>,
    /// End to end: send (timestamp carried in the message) → recipient device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Latency>,
    /// Send → ack (durable) on the sending device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_latency_ms: Option<Latency>,
    /// Largest delay of the generator behind its open-loop schedule, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_lag_max_ms: Option<f64>,

    // --- offline ---
    /// Messages waiting for the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    /// Message entries the sync handed over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced: Option<u64>,
    /// `login` frame sent → `sync_finished` received, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_to_synced_ms: Option<f64>,
    /// TCP connect → `sync_finished`, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_to_synced_ms: Option<f64>,
    /// The conversation list after the sync (what the SDK fetches before it
    /// reports "sync finished"), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_list_ms: Option<f64>,
    /// Conversations in that list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversations: Option<u64>,
    /// `login` frame sent → entries synced and the conversation list read,
    /// ms: the SDK's login → "sync finished".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_to_sync_finished_ms: Option<f64>,
    /// Synced messages / (login → sync finished).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_per_sec: Option<f64>,
    /// How fast the waiting messages were written (acked sends per second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill_per_sec: Option<f64>,

    // --- history ---
    /// History pages read in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pages: Option<u64>,
    /// `history` → `history_page` round trip, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_ms: Option<Latency>,
    /// Sends as the server timed them (decoded frame → ack ready, durable),
    /// from the end of the warm-up to the end of the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_send_ms: Option<ServerLatency>,
    /// Group commits (transactions of sends) the server made in the same
    /// window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_group_commits: Option<u64>,
    /// The same pages as the server timed them (its `/metrics` histogram
    /// over the paging window: bucket bounds, not exact quantiles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_history_ms: Option<ServerLatency>,

    // --- resources ---
    /// Server CPU in the window, % of one core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_pct: Option<f64>,
    /// Generator CPU in the window, % of one core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_pct: Option<f64>,
    /// Server CPU time per acknowledged message in the window, µs: what a
    /// message costs, comparable between runs on a noisy machine when the
    /// rates and latencies are not (time the host takes away is not charged
    /// to the process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_msg: Option<f64>,
    /// Generator CPU time per acknowledged message in the window, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_us_per_msg: Option<f64>,

    /// Errors by kind, counted.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, u64>,
    /// Remarks (limits hit, figures not available).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

fn int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        int(v.round() as u64)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn lat(l: &Latency) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        num(l.p50),
        num(l.p90),
        num(l.p99),
        num(l.p999),
        num(l.max),
        l.count
    )
}

impl Summary {
    /// Adds counted errors.
    pub fn add_errors(&mut self, errors: BTreeMap<String, u64>) {
        for (k, v) in errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = Vec::new();
        let mut u = |name: &'static str, v: Option<u64>| {
            if let Some(v) = v {
                rows.push((name, int(v)));
            }
        };
        u("connections", self.connections);
        u("failures", self.failures);
        u("sent", self.sent);
        u("acked", self.acked);
        u("delivered", self.delivered);
        u("messages waiting", self.messages);
        u("messages synced", self.synced);
        u("pages", self.pages);
        let f = |rows: &mut Vec<(&str, String)>, name: &'static str, v: Option<f64>, unit| {
            if let Some(v) = v {
                rows.push((name, format!("{}{unit}", num(v))));
            }
        };
        f(&mut rows, "logins/s", self.logins_per_sec, "");
        f(&mut rows, "sent msgs/s", self.sent_per_sec, "");
        f(&mut rows, "acked msgs/s", self.acked_per_sec, "");
        f(&mut rows, "delivered msgs/s", self.delivered_per_sec, "");
        f(&mut rows, "login → synced", self.login_to_synced_ms, " ms");
        f(
            &mut rows,
            "connect → synced",
            self.connect_to_synced_ms,
            " ms",
        );
        f(
            &mut rows,
            "conversation list",
            self.conversation_list_ms,
            " ms",
        );
        f(
            &mut rows,
            "login → sync finished",
            self.login_to_sync_finished_ms,
            " ms",
        );
        f(&mut rows, "synced msgs/s", self.messages_per_sec, "");
        f(&mut rows, "fill msgs/s", self.fill_per_sec, "");
        let mut l = |name: &'static str, v: &Option<Latency>| {
            if let Some(v) = v {
                rows.push((name, lat(v)));
            }
        };
        l("login latency ms", &self.login_latency_ms);
        l("login rtt ms", &self.login_rtt_ms);
        l("e2e latency ms", &self.latency_ms);
        l("ack latency ms", &self.ack_latency_ms);
        l("history page ms", &self.history_ms);
        for (name, v) in [
            ("send in server ms", &self.server_send_ms),
            ("history in server ms", &self.server_history_ms),
        ] {
            if let Some(v) = v {
                let b = |x: Option<f64>| x.map_or("-".to_string(), num);
                rows.push((
                    name,
                    format!(
                        "p50 ≤ {}  p99 ≤ {}  within 5 ms {}%  (n={})",
                        b(v.p50_at_most),
                        b(v.p99_at_most),
                        b(v.within_5ms_pct),
                        v.count
                    ),
                ));
            }
        }
        let mut u = |name: &'static str, v: Option<u64>| {
            if let Some(v) = v {
                rows.push((name, int(v)));
            }
        };
        u("lost", self.lost);
        u("lost, found in history", self.lost_found_in_history);
        u("duplicated", self.duplicated);
        u("out of order", self.out_of_order);
        u("out of commit order", self.out_of_commit_order);
        u("group commits (server)", self.server_group_commits);
        u("send errors", self.send_errors);
        u("unacked", self.unacked);
        u("disconnects", self.disconnects);
        if let Some(v) = self.schedule_lag_max_ms {
            rows.push(("behind schedule, max", format!("{} ms", num(v))));
        }
        if let Some(v) = self.server_rss_before_kib {
            rows.push(("server RSS before", format!("{} KiB", int(v))));
        }
        if let Some(v) = self.server_rss_kib {
            rows.push(("server RSS", format!("{} KiB", int(v))));
        }
        if let Some(v) = self.rss_per_conn_kib {
            rows.push(("server RSS / connection", format!("{v:.2} KiB")));
        }
        if let Some(v) = self.client_rss_kib {
            rows.push(("generator RSS", format!("{} KiB", int(v))));
        }
        if let Some(v) = self.server_cpu_pct {
            rows.push(("server CPU", format!("{v:.0} % of a core")));
        }
        if let Some(v) = self.client_cpu_pct {
            rows.push(("generator CPU", format!("{v:.0} % of a core")));
        }
        if let Some(v) = self.server_cpu_us_per_msg {
            rows.push(("server CPU / message", format!("{v:.1} µs")));
        }
        if let Some(v) = self.client_cpu_us_per_msg {
            rows.push(("generator CPU / message", format!("{v:.1} µs")));
        }
        let mut out = String::new();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect();
        let _ = writeln!(
            out,
            "duet bench {} — {} — {}",
            self.scenario,
            self.server,
            params.join(" ")
        );
        let _ = writeln!(
            out,
            "measured {:.1} s of {:.1} s wall{}",
            self.measured_secs,
            self.wall_secs,
            self.server_pid
                .map(|p| format!(", server pid {p}"))
                .unwrap_or_default()
        );
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, v) in &rows {
            let pad = w - k.chars().count();
            let _ = writeln!(out, "  {k}{:pad$}  {v}", "");
        }
        for (k, n) in &self.errors {
            let _ = writeln!(out, "  error: {k} × {n}");
        }
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_the_issue_names_and_skips_the_rest() {
        let s = Summary {
            scenario: "online".into(),
            sent_per_sec: Some(1.0),
            latency_ms: Some(Latency::default()),
            ..Summary::default()
        };
        let v = serde_json::to_value(&s).unwrap_or_default();
        assert!(v.get("sent_per_sec").is_some());
        assert!(v["latency_ms"].get("p999").is_some());
        assert!(v.get("logins_per_sec").is_none());
        assert!(s.table().contains("sent msgs/s"));
    }

    #[test]
    fn numbers() {
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(1.234), "1.23");
    }
}
