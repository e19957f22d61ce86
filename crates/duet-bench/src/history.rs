//! `history`: history page latency while a background load is sent.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::client::{self, Target, error_kind};
use crate::fill::{FillSender, fill};
use crate::load::{self, LoadSpec};
use crate::online::{pair_up, report, server_latency};
use crate::report::Summary;
use crate::scrape::{self, Buckets};
use crate::stats::Recorder;

/// Shape of a history run.
#[derive(Debug, Clone)]
pub struct HistorySpec {
    /// Pages to read.
    pub pages: u64,
    /// Messages per page.
    pub page_size: u32,
    /// Messages in the conversation paged through (written first).
    pub seed: u64,
    /// Background users (pairs).
    pub users: usize,
    /// Pages per second (one at a time, evenly spaced); 0: back to back.
    pub page_rate: f64,
    /// Stop paging after this long even if pages remain.
    pub max_paging: Duration,
}

/// Runs the scenario.
pub async fn run(
    target: &Target,
    spec: &HistorySpec,
    load_spec: &LoadSpec,
    s: &mut Summary,
) -> Result<()> {
    // The conversation to page through.
    let reader_name = format!("{}-hr", target.prefix);
    let peer_name = format!("{}-hp", target.prefix);
    let mut two =
        client::login_all(target, vec![reader_name.clone(), peer_name.clone()], 2).await?;
    let peer = two.pop().context("peer login")?;
    let reader = two.pop().context("reader login")?;
    let filled = fill(
        &[FillSender {
            conn: peer.conn.clone(),
            to: reader.user.clone(),
            count: spec.seed,
        }],
        32,
    )
    .await;
    s.add_errors(filled.errors);

    // The reader pages from its own thread and runtime (pinned with the
    // generator, so still on the generator's core): a device reading
    // history is not queued behind the load's 20,000 frames a second in
    // the generator's event loop, so the figure is the server's and the
    // network's. The reader logs in there again (same device: the
    // connection above is replaced).
    drop(reader);
    let users = pair_up(target, "hb", spec.users).await?;
    let stop = Rc::new(Cell::new(false));
    let load_done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let pager = Pager {
        server: target.first_server().to_string(),
        user: reader_name.clone(),
        sig: target.sig(&reader_name),
        peer: peer_name.clone(),
        page_size: spec.page_size,
        pages: spec.pages,
        max_paging: spec.max_paging,
        gap: (spec.page_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / spec.page_rate)),
        warmup: load_spec.warmup,
        load_done: load_done.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("history-pager".into())
        .spawn(move || {
            let out = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the pager's runtime")
                .map(|rt| rt.block_on(pager.run()));
            let _ = tx.send(out);
        })
        .context("starting the pager thread")?;
    let load = async {
        let r = load::run(users, load_spec, stop.clone()).await;
        load_done.store(true, Ordering::Relaxed);
        r
    };
    let paged = async {
        let out = rx.await;
        stop.set(true);
        out
    };
    let (r, paged) = tokio::join!(load, paged);
    let _ = thread.join();
    let paged = paged.context("the pager thread ended without a result")???;
    report(r, s);
    s.pages = Some(paged.lat.count());
    s.history_ms = paged.lat.summary();
    s.add_errors(paged.errors);
    if let Some(server) = &paged.server {
        s.server_history_ms = Some(server_latency(server));
    } else {
        s.notes
            .push("no server-side history latency (/metrics not readable)".into());
    }
    if paged.lat.count() < spec.pages {
        s.notes.push(format!(
            "read {} of {} pages in {:.1} s",
            paged.lat.count(),
            spec.pages,
            paged.paging.as_secs_f64()
        ));
    }
    drop(peer);
    Ok(())
}

/// The paging device, run on its own thread.
struct Pager {
    server: String,
    user: String,
    sig: String,
    peer: String,
    page_size: u32,
    pages: u64,
    max_paging: Duration,
    gap: Option<Duration>,
    warmup: Duration,
    load_done: Arc<AtomicBool>,
}

struct Paged {
    lat: Recorder,
    errors: BTreeMap<String, u64>,
    paging: Duration,
    /// The server's own history latency over the paging window.
    server: Option<Buckets>,
}

const HISTORY_SERIES: (&str, &str) = ("duet_request_seconds", "kind=\"history\",");

impl Pager {
    async fn run(self) -> Result<Paged> {
        let reader = client::login(&self.server, &self.user, &self.sig)
            .await
            .context("pager login")?;
        let conn = reader.conn;
        let mut lat = Recorder::new();
        let mut errors = BTreeMap::<String, u64>::new();
        tokio::time::sleep(self.warmup).await;
        let (name, labels) = HISTORY_SERIES;
        let scrape = || scrape::series(&self.server, name, labels);
        let before = scrape().await;
        let t0 = Instant::now();
        let mut cursor = None;
        for i in 0..self.pages {
            if t0.elapsed() > self.max_paging || self.load_done.load(Ordering::Relaxed) {
                break;
            }
            if let Some(gap) = self.gap {
                tokio::time::sleep_until((t0 + gap.mul_f64(i as f64)).into()).await;
            }
            let t = Instant::now();
            match conn.history(&self.peer, cursor, self.page_size).await {
                Ok((items, complete)) => {
                    lat.record(t.elapsed());
                    cursor = items.iter().map(|i| i.seq).min();
                    if complete {
                        cursor = None;
                    }
                }
                Err(e) => {
                    *errors.entry(error_kind(&e)).or_default() += 1;
                    cursor = None;
                }
            }
        }
        let paging = t0.elapsed();
        let after = scrape().await;
        let server = match (before, after) {
            (Some(b), Some(a)) => Some(a.since(&b)),
            _ => None,
        };
        Ok(Paged {
            lat,
            errors,
            paging,
            server,
        })
    }
}
