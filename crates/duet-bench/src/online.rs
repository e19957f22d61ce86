//! `online`: U online users in pairs sending to each other; throughput,
//! end-to-end latency, delivery accounting, CPU.

use std::cell::Cell;
use std::rc::Rc;

use anyhow::{Result, bail};

use crate::client::{self, Client, Target};
use crate::load::{self, LoadResult, LoadSpec, LoadUser};
use crate::report::{ServerLatency, Summary};
use crate::scrape::{self, Buckets};

/// Logs in `count` users `<prefix>-<tag><i>` and pairs them (0↔1, 2↔3, …).
pub async fn pair_up(target: &Target, tag: &str, count: usize) -> Result<Vec<LoadUser>> {
    if count < 2 || !count.is_multiple_of(2) {
        bail!("users must be an even number, at least 2 (got {count})");
    }
    let names: Vec<String> = (0..count).map(|i| target.user(tag, i)).collect();
    let clients = client::login_all(target, names, 256).await?;
    let mut users = Vec::with_capacity(count);
    for (i, c) in clients.into_iter().enumerate() {
        let Client {
            user, conn, pushes, ..
        } = c;
        let Some(pushes) = pushes else {
            bail!("no push channel for {user}");
        };
        users.push(LoadUser {
            user,
            conn,
            pushes,
            partner: i ^ 1,
        });
    }
    Ok(users)
}

/// The server's histogram of `send` requests.
const SEND_SERIES: (&str, &str) = ("duet_request_seconds", "kind=\"send\",");
/// The server's histogram of jobs per group commit (one observation per commit).
const COMMIT_SERIES: (&str, &str) = ("duet_commit_batch_size", "");

/// A server histogram as the summary reports it, in ms.
pub fn server_latency(h: &Buckets) -> ServerLatency {
    let ms = |q: f64| h.quantile_bound(q).map(|b| b * 1000.0);
    ServerLatency {
        count: h.count(),
        p50_at_most: ms(0.50),
        p99_at_most: ms(0.99),
        within_5ms_pct: h.fraction_within(0.005).map(|f| f * 100.0),
    }
}

/// Copies a load result into the summary.
pub fn report(r: LoadResult, s: &mut Summary) {
    let secs = r.measured_secs.max(1e-9);
    s.measured_secs = r.measured_secs;
    s.sent = Some(r.sent);
    s.acked = Some(r.acked);
    s.delivered = Some(r.delivered);
    s.sent_per_sec = Some(r.sent as f64 / secs);
    s.acked_per_sec = Some(r.acked as f64 / secs);
    s.delivered_per_sec = Some(r.delivered as f64 / secs);
    s.lost = Some(r.lost);
    s.lost_found_in_history = r.lost_found_in_history;
    s.duplicated = Some(r.duplicated);
    s.out_of_order = Some(r.out_of_order);
    s.out_of_commit_order = Some(r.out_of_commit_order);
    s.send_errors = Some(r.send_errors);
    s.unacked = Some(r.unacked);
    s.disconnects = Some(r.disconnects);
    s.latency_ms = r.e2e.summary();
    s.ack_latency_ms = r.ack.summary();
    s.schedule_lag_max_ms = r.schedule_lag_max_ms;
    s.server_cpu_pct = r.server_cpu_pct;
    s.client_cpu_pct = r.client_cpu_pct;
    s.server_cpu_us_per_msg = cpu_us_per_msg(r.server_cpu_pct, r.acked, secs);
    s.client_cpu_us_per_msg = cpu_us_per_msg(r.client_cpu_pct, r.acked, secs);
    s.server_rss_kib = r.server_rss_kib;
    s.client_rss_kib = crate::procstat::rss_kib(None);
    s.add_errors(r.errors);
    if let Some(lag) = r.schedule_lag_max_ms
        && lag > 100.0
    {
        s.notes.push(format!(
            "the generator fell {lag:.0} ms behind its schedule: the offered rate was not held"
        ));
    }
}

/// CPU time per message, µs, from a CPU share (% of one core) over the
/// window and the messages acknowledged in it (`None` without either).
fn cpu_us_per_msg(pct: Option<f64>, acked: u64, secs: f64) -> Option<f64> {
    let pct = pct?;
    if acked == 0 {
        return None;
    }
    Some(pct / 100.0 * secs * 1e6 / acked as f64)
}

/// Runs the scenario.
pub async fn run(target: &Target, users: usize, spec: &LoadSpec, s: &mut Summary) -> Result<()> {
    let users = pair_up(target, "o", users).await?;
    // The server's own send latency and its group commits, from the end of
    // the warm-up to the end of the run (its /metrics histograms, every node
    // summed).
    let series = [SEND_SERIES, COMMIT_SERIES];
    let warmup = spec.warmup;
    let before = async {
        tokio::time::sleep(warmup).await;
        scrape::several(&target.server, series).await
    };
    let (r, before) = tokio::join!(load::run(users, spec, Rc::new(Cell::new(false))), before);
    let after = scrape::several(&target.server, series).await;
    report(r, s);
    s.server_send_ms = match (before, after) {
        (Some([send_b, commit_b]), Some([send_a, commit_a])) => {
            s.server_group_commits = Some(commit_a.since(&commit_b).count());
            Some(server_latency(&send_a.since(&send_b)))
        }
        _ => {
            s.notes
                .push("no server-side send latency (/metrics not readable)".into());
            None
        }
    };
    Ok(())
}
