//! The message load: users in pairs, each sending to its partner, open loop
//! at an aggregate rate or closed loop with a window per sender. Every
//! message carries a [`Probe`]; receivers check it on arrival (end-to-end
//! latency, lost, duplicated, out of order).
//!
//! Runs on the current thread (a `LocalSet`): state is shared with `Rc`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::str::FromStr;
use std::time::{Duration, Instant};

use duet_proto::EntryKind;
use duet_sdk::{Connection, Push, SdkError, SendOptions, SentAck};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::MissedTickBehavior;

use crate::client::{Probe, error_kind, now_ns};
use crate::procstat::{CpuSample, rss_kib};
use crate::stats::{Recorder, SeqSet};

/// How fast to send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Open loop: this many messages per second in all.
    PerSec(f64),
    /// Closed loop: as fast as acks come back, with a window per sender.
    Max,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match s.replace('_', "").parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSec(r)),
            _ => Err(format!(
                "expected a positive number of messages per second or `max`, got {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::PerSec(r) => write!(f, "{r}"),
            Rate::Max => write!(f, "max"),
        }
    }
}

/// A logged-in user of the load: sends to `partner` (an index).
pub struct LoadUser {
    /// UserID.
    pub user: String,
    /// Its one device.
    pub conn: Connection,
    /// Its pushes.
    pub pushes: UnboundedReceiver<Push>,
    /// Index of the user it sends to.
    pub partner: usize,
}

/// Shape of a load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// How fast.
    pub rate: Rate,
    /// Closed loop: sends in flight per sender.
    pub window: usize,
    /// Sent but not measured.
    pub warmup: Duration,
    /// The measured window (ends early when `stop` is set).
    pub duration: Duration,
    /// After the window: wait this long at most for acks and deliveries.
    pub grace: Duration,
    /// Extra text bytes per message.
    pub payload: usize,
    /// Open loop: most sends in flight in all (the schedule slips beyond it).
    pub max_inflight: usize,
    /// Server process, for its CPU.
    pub server_pid: Option<u32>,
    /// Most sends in all; then the run stops sending (and ends once they
    /// are answered and delivered).
    pub max_messages: Option<u64>,
}

/// What a load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Measured window, seconds.
    pub measured_secs: f64,
    /// Sends issued in the window.
    pub sent: u64,
    /// Acks received in the window.
    pub acked: u64,
    /// Deliveries received in the window.
    pub delivered: u64,
    /// Acked over the whole run but not delivered live by the end.
    pub lost: u64,
    /// Of those, found in the recipient's history afterwards.
    pub lost_found_in_history: Option<u64>,
    /// Deliveries of an already delivered message.
    pub duplicated: u64,
    /// Deliveries after a later message of the same sender.
    pub out_of_order: u64,
    /// Live entries that reached their device after an entry with a higher
    /// number (the server delivered out of commit order); when this is 0 and
    /// `out_of_order` is not, the messages were committed in that order.
    pub out_of_commit_order: u64,
    /// Failed sends.
    pub send_errors: u64,
    /// Sends without an answer at the end.
    pub unacked: u64,
    /// Connections the server closed.
    pub disconnects: u64,
    /// Send → delivery, for messages sent in the window.
    pub e2e: Recorder,
    /// Send → ack, for messages sent in the window.
    pub ack: Recorder,
    /// Largest slip behind the open-loop schedule, ms.
    pub schedule_lag_max_ms: Option<f64>,
    /// Server CPU in the window, % of a core.
    pub server_cpu_pct: Option<f64>,
    /// Generator CPU in the window, % of a core.
    pub client_cpu_pct: Option<f64>,
    /// Server RSS at the end of the window, KiB.
    pub server_rss_kib: Option<u64>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Default)]
struct RecvState {
    seen: SeqSet,
    max_seen: Option<u64>,
}

struct Shared {
    /// Measured window, Unix ns: [from, to).
    from_ns: u64,
    to_ns: u64,
    /// Indexed by sender.
    recv: Vec<RecvState>,
    e2e: Recorder,
    delivered_total: u64,
    delivered_window: u64,
    duplicated: u64,
    out_of_order: u64,
    out_of_commit_order: u64,
    disconnects: u64,
    foreign: u64,
    /// Set before teardown: closes after this are ours.
    done: bool,
}

impl Shared {
    fn delivered(&mut self, p: Probe, now: u64) {
        let Some(r) = self.recv.get_mut(p.sender as usize) else {
            self.foreign += 1;
            return;
        };
        if !r.seen.insert(p.seq) {
            self.duplicated += 1;
            return;
        }
        if r.max_seen.is_some_and(|m| p.seq < m) {
            self.out_of_order += 1;
        }
        r.max_seen = Some(r.max_seen.map_or(p.seq, |m| m.max(p.seq)));
        self.delivered_total += 1;
        if (self.from_ns..self.to_ns).contains(&now) {
            self.delivered_window += 1;
        }
        if (self.from_ns..self.to_ns).contains(&p.sent_ns) {
            self.e2e.record_micros(now.saturating_sub(p.sent_ns) / 1000);
        }
    }
}

async fn receive(me: String, mut rx: UnboundedReceiver<Push>, sh: Rc<RefCell<Shared>>) {
    let mut last_entry = 0;
    while let Some(p) = rx.recv().await {
        match p {
            Push::Entry(e) => {
                if e.seq < last_entry {
                    sh.borrow_mut().out_of_commit_order += 1;
                }
                last_entry = last_entry.max(e.seq);
                let EntryKind::Message { message } = e.kind else {
                    continue;
                };
                if message.from == me {
                    continue; // a copy of our own send (another device)
                }
                let now = now_ns();
                match Probe::read(&message) {
                    Some(probe) => sh.borrow_mut().delivered(probe, now),
                    None => sh.borrow_mut().foreign += 1,
                }
            }
            Push::Closed => {
                let mut s = sh.borrow_mut();
                if !s.done {
                    s.disconnects += 1;
                }
                return;
            }
            _ => {}
        }
    }
}

struct SendDone {
    sender: usize,
    seq: u64,
    sent_ns: u64,
    took: Duration,
    result: Result<SentAck, SdkError>,
}

async fn send_one(
    conn: Connection,
    to: Rc<str>,
    sender: usize,
    seq: u64,
    payload: Rc<str>,
) -> SendDone {
    let sent_ns = now_ns();
    let t = Instant::now();
    let probe = Probe {
        sender: sender as u32,
        seq,
        sent_ns,
    };
    let result = conn
        .send(&to, probe.body(&payload), SendOptions::default())
        .await;
    SendDone {
        sender,
        seq,
        sent_ns,
        took: t.elapsed(),
        result,
    }
}

/// Runs the load over `users` until the window ends or `stop` is set, then
/// waits up to the grace period for acks and deliveries. Must run inside a
/// `LocalSet`.
pub async fn run(users: Vec<LoadUser>, spec: &LoadSpec, stop: Rc<Cell<bool>>) -> LoadResult {
    let n = users.len();
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let measure_start = t0 + spec.warmup;
    let end = measure_start + spec.duration;
    let from_ns = t0_ns + spec.warmup.as_nanos() as u64;
    let shared = Rc::new(RefCell::new(Shared {
        from_ns,
        to_ns: from_ns + spec.duration.as_nanos() as u64,
        recv: (0..n).map(|_| RecvState::default()).collect(),
        e2e: Recorder::new(),
        delivered_total: 0,
        delivered_window: 0,
        duplicated: 0,
        out_of_order: 0,
        out_of_commit_order: 0,
        disconnects: 0,
        foreign: 0,
        done: false,
    }));

    let mut conns = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut partners = Vec::with_capacity(n);
    for u in users {
        tokio::task::spawn_local(receive(u.user.clone(), u.pushes, shared.clone()));
        conns.push(u.conn);
        partners.push(u.partner);
        names.push(u.user);
    }
    let to: Vec<Rc<str>> = partners
        .iter()
        .map(|&p| Rc::from(names.get(p).map(String::as_str).unwrap_or("")))
        .collect();
    let payload: Rc<str> = "x".repeat(spec.payload).into();

    let mut res = LoadResult::default();
    let mut seqs = vec![0u64; n];
    let mut acked: Vec<SeqSet> = (0..n).map(|_| SeqSet::default()).collect();
    let mut acked_total = 0u64;
    let mut inflight = FuturesUnordered::new();
    let limit = spec.max_messages.unwrap_or(u64::MAX);
    let mut issued_total = 0u64;
    let mut issue = |s: usize, inflight: &mut FuturesUnordered<_>| {
        if issued_total >= limit {
            return false;
        }
        issued_total += 1;
        let seq = seqs[s];
        seqs[s] += 1;
        inflight.push(send_one(
            conns[s].clone(),
            to[s].clone(),
            s,
            seq,
            payload.clone(),
        ));
        true
    };

    if spec.rate == Rate::Max {
        for s in 0..n {
            for _ in 0..spec.window.max(1) {
                issue(s, &mut inflight);
            }
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut issued = 0u64;
    let mut sending = true;
    let mut measuring = false;
    let mut cpu0 = (None, None);
    let mut stop_at = end;
    let mut grace_end = end + spec.grace;
    let mut lag_max = 0f64;

    loop {
        tokio::select! {
            Some(d) = inflight.next(), if !inflight.is_empty() => {
                let in_window = measuring && sending;
                match d.result {
                    Ok(_) => {
                        acked_total += 1;
                        acked[d.sender].insert(d.seq);
                        if in_window {
                            res.acked += 1;
                        }
                        if (from_ns..shared.borrow().to_ns).contains(&d.sent_ns) {
                            res.ack.record(d.took);
                        }
                        if sending && spec.rate == Rate::Max && issue(d.sender, &mut inflight) && in_window {
                            res.sent += 1;
                        }
                    }
                    Err(e) => {
                        res.send_errors += 1;
                        *res.errors.entry(error_kind(&e)).or_default() += 1;
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if !measuring && now >= measure_start && sending {
                    measuring = true;
                    cpu0 = (CpuSample::take(spec.server_pid), CpuSample::take(None));
                }
                let all_issued = spec.max_messages.is_some_and(|m| issued >= m || inflight.is_empty());
                if sending && (now >= end || stop.get() || all_issued) {
                    sending = false;
                    stop_at = now;
                    grace_end = now + spec.grace;
                    if now < end {
                        shared.borrow_mut().to_ns = now_ns();
                    }
                    let (s1, c1) = (CpuSample::take(spec.server_pid), CpuSample::take(None));
                    if let (Some(a), Some(b)) = (&cpu0.0, &s1) {
                        res.server_cpu_pct = Some(a.pct_until(b));
                    }
                    if let (Some(a), Some(b)) = (&cpu0.1, &c1) {
                        res.client_cpu_pct = Some(a.pct_until(b));
                    }
                    res.server_rss_kib = spec.server_pid.and_then(|p| rss_kib(Some(p)));
                }
                if sending && let Rate::PerSec(r) = spec.rate {
                    let elapsed = now.duration_since(t0).as_secs_f64();
                    let due = (elapsed * r) as u64;
                    if due > issued {
                        let lag = elapsed - issued as f64 / r;
                        if measuring {
                            lag_max = lag_max.max(lag);
                        }
                    }
                    while issued < due && inflight.len() < spec.max_inflight {
                        let s = (issued % n as u64) as usize;
                        if !issue(s, &mut inflight) {
                            break;
                        }
                        issued += 1;
                        if measuring {
                            res.sent += 1;
                        }
                    }
                }
                if !sending {
                    let all_delivered = shared.borrow().delivered_total >= acked_total;
                    if (inflight.is_empty() && all_delivered) || now >= grace_end {
                        break;
                    }
                }
            }
        }
    }
    res.unacked = inflight.len() as u64;
    drop(inflight);
    if let Rate::PerSec(_) = spec.rate {
        res.schedule_lag_max_ms = Some(lag_max * 1000.0);
    }
    res.measured_secs = stop_at
        .saturating_duration_since(measure_start)
        .as_secs_f64();

    // Lost: acked but never seen by the recipient.
    let mut missing: Vec<(usize, Vec<u64>)> = Vec::new();
    {
        let mut sh = shared.borrow_mut();
        sh.done = true;
        for (s, a) in acked.iter().enumerate() {
            let m = a.difference(&sh.recv[s].seen);
            if !m.is_empty() {
                res.lost += m.len() as u64;
                missing.push((s, m));
            }
        }
        res.delivered = sh.delivered_window;
        res.duplicated = sh.duplicated;
        res.out_of_order = sh.out_of_order;
        res.out_of_commit_order = sh.out_of_commit_order;
        res.disconnects = sh.disconnects;
        res.e2e = std::mem::take(&mut sh.e2e);
        if sh.foreign > 0 {
            res.errors
                .insert("deliveries without a bench probe".into(), sh.foreign);
        }
    }
    if res.lost > 0 && res.lost <= 100_000 {
        res.lost_found_in_history =
            Some(find_in_history(&missing, &conns, &names, &partners).await);
    }
    res
}

/// Looks for lost messages in the recipients' history (at most 100 pages
/// of 100 per sender): stored but not delivered live, or not stored at all.
async fn find_in_history(
    missing: &[(usize, Vec<u64>)],
    conns: &[Connection],
    names: &[String],
    partners: &[usize],
) -> u64 {
    let mut found = 0u64;
    for (s, seqs) in missing {
        let (Some(sender), Some(&r)) = (names.get(*s), partners.get(*s)) else {
            continue;
        };
        let Some(conn) = conns.get(r) else {
            continue;
        };
        let mut want = SeqSet::default();
        for q in seqs {
            want.insert(*q);
        }
        let lowest = seqs.first().copied().unwrap_or(0);
        let mut before = None;
        'pages: for _ in 0..100 {
            let Ok(Ok((items, complete))) =
                tokio::time::timeout(Duration::from_secs(5), conn.history(sender, before, 100))
                    .await
            else {
                break;
            };
            for it in &items {
                if it.message.from != *sender {
                    continue;
                }
                if let Some(p) = Probe::read(&it.message)
                    && p.sender as usize == *s
                {
                    if want.contains(p.seq) {
                        found += 1;
                    }
                    if p.seq < lowest {
                        break 'pages;
                    }
                }
            }
            before = items.iter().map(|i| i.seq).min();
            if complete || before.is_none() {
                break;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("25_000".parse::<Rate>(), Ok(Rate::PerSec(25_000.0)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }

    #[test]
    fn receiver_accounting() {
        let mut sh = Shared {
            from_ns: 100,
            to_ns: 200,
            recv: (0..2).map(|_| RecvState::default()).collect(),
            e2e: Recorder::new(),
            delivered_total: 0,
            delivered_window: 0,
            duplicated: 0,
            out_of_order: 0,
            out_of_commit_order: 0,
            disconnects: 0,
            foreign: 0,
            done: false,
        };
        let p = |seq, sent_ns| Probe {
            sender: 1,
            seq,
            sent_ns,
        };
        sh.delivered(p(0, 50), 120); // sent before the window: not timed
        sh.delivered(p(2, 150), 160_000);
        sh.delivered(p(1, 140), 150); // after 2: out of order
        sh.delivered(p(1, 140), 150); // again: duplicated
        sh.delivered(
            Probe {
                sender: 9,
                seq: 0,
                sent_ns: 0,
            },
            0,
        );
        assert_eq!(sh.delivered_total, 3);
        assert_eq!(sh.delivered_window, 2);
        assert_eq!(sh.out_of_order, 1);
        assert_eq!(sh.duplicated, 1);
        assert_eq!(sh.foreign, 1);
        assert_eq!(sh.e2e.count(), 2);
    }
}
