//! `history`: history page latency while a background load is sent.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::client::{self, Target, error_kind};
use crate::fill::{FillSender, fill};
use crate::load::{self, LoadSpec};
use crate::online::{pair_up, report};
use crate::report::Summary;
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
    let mut two = client::login_all(target, vec![reader_name, peer_name.clone()], 2).await?;
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

    // The background load.
    let users = pair_up(target, "hb", spec.users).await?;
    let stop = Rc::new(Cell::new(false));
    let warmup = load_spec.warmup;
    let pager = {
        let stop = stop.clone();
        let conn = reader.conn.clone();
        let page_size = spec.page_size;
        let pages = spec.pages;
        let max_paging = spec.max_paging;
        let gap = (spec.page_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / spec.page_rate));
        async move {
            let mut lat = Recorder::new();
            let mut errors = std::collections::BTreeMap::<String, u64>::new();
            tokio::time::sleep(warmup).await;
            let t0 = Instant::now();
            let mut before = None;
            for i in 0..pages {
                if t0.elapsed() > max_paging || stop.get() {
                    break;
                }
                if let Some(gap) = gap {
                    tokio::time::sleep_until((t0 + gap.mul_f64(i as f64)).into()).await;
                }
                let t = Instant::now();
                match conn.history(&peer_name, before, page_size).await {
                    Ok((items, complete)) => {
                        lat.record(t.elapsed());
                        before = items.iter().map(|i| i.seq).min();
                        if complete {
                            before = None;
                        }
                    }
                    Err(e) => {
                        *errors.entry(error_kind(&e)).or_default() += 1;
                        before = None;
                    }
                }
            }
            stop.set(true);
            (lat, errors, t0.elapsed())
        }
    };
    let (r, (lat, errors, paging)) = tokio::join!(load::run(users, load_spec, stop), pager);
    report(r, s);
    s.pages = Some(lat.count());
    s.history_ms = lat.summary();
    s.add_errors(errors);
    if lat.count() < spec.pages {
        s.notes.push(format!(
            "read {} of {} pages in {:.1} s",
            lat.count(),
            spec.pages,
            paging.as_secs_f64()
        ));
    }
    drop(reader);
    drop(peer);
    Ok(())
}
