//! Writes messages as fast as acks come back (a window per sender): the
//! backlog of the offline scenario and the history a reader pages through.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use duet_sdk::{Connection, SdkError, SendOptions, SentAck};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::client::{Probe, error_kind, now_ns};

/// One sender of a fill.
pub struct FillSender {
    /// Its connection.
    pub conn: Connection,
    /// Recipient UserID.
    pub to: String,
    /// Messages to send.
    pub count: u64,
}

/// What a fill did.
#[derive(Debug, Default)]
pub struct Filled {
    /// Acked sends.
    pub acked: u64,
    /// Failed sends.
    pub errors: BTreeMap<String, u64>,
    /// Wall time.
    pub elapsed: Duration,
}

async fn send(
    conn: Connection,
    to: String,
    sender: usize,
    seq: u64,
) -> (usize, Result<SentAck, SdkError>) {
    let probe = Probe {
        sender: sender as u32,
        seq,
        sent_ns: now_ns(),
    };
    let r = conn.send(&to, probe.body(""), SendOptions::default()).await;
    (sender, r)
}

/// Sends `count` messages from each sender, `window` in flight per sender.
/// A sender stops at its first error.
pub async fn fill(senders: &[FillSender], window: usize) -> Filled {
    let t0 = Instant::now();
    let mut out = Filled::default();
    let mut next = vec![0u64; senders.len()];
    let mut inflight = FuturesUnordered::new();
    for (i, s) in senders.iter().enumerate() {
        for _ in 0..window.max(1) {
            if next[i] < s.count {
                inflight.push(send(s.conn.clone(), s.to.clone(), i, next[i]));
                next[i] += 1;
            }
        }
    }
    while let Some((i, r)) = inflight.next().await {
        match r {
            Ok(_) => {
                out.acked += 1;
                if let Some(s) = senders.get(i)
                    && next[i] < s.count
                {
                    inflight.push(send(s.conn.clone(), s.to.clone(), i, next[i]));
                    next[i] += 1;
                }
            }
            Err(e) => *out.errors.entry(error_kind(&e)).or_default() += 1,
        }
    }
    out.elapsed = t0.elapsed();
    out
}
