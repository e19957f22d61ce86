//! A logged-in device: offline sync, live entries, events in timeline order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use duet_proto::{
    Conversation, Entry, EntryKind, HistoryItem, Message, MsgElem, ReadReport, Recall,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::conn::{Connection, Push, SendOptions, SentAck};
use crate::{Cache, SdkError, SdkResult};

/// How long a gap in live entries may stay open before the session syncs.
const GAP_WAIT: Duration = Duration::from_millis(100);

/// What a session reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message received, or sent by this user from another device
    /// (offline ones first, at login), exactly once per device.
    NewMessage(Message),
    /// A message was recalled.
    MessageRecalled(Recall),
    /// A read report: the peer read this user's messages (`reader` is the
    /// peer), or this user read a conversation on another device.
    ReadReceipt(ReadReport),
    /// The conversation list, after the login sync.
    Conversations(Vec<Conversation>),
    /// The login sync is finished; live events follow.
    SyncFinished,
    /// A newer login kicked this device.
    KickedOffline {
        /// 6208.
        code: u32,
        /// Why.
        reason: String,
    },
    /// The connection closed.
    Disconnected,
}

/// How to start a session.
#[derive(Clone)]
pub struct SessionOptions {
    /// Server base URL, e.g. `http://127.0.0.1:7400`.
    pub server: String,
    /// UserID.
    pub user: String,
    /// UserSig.
    pub user_sig: String,
    /// This device's id (stable per install).
    pub device_id: String,
    /// Platform name.
    pub platform: String,
    /// Where the cursor is kept; `None` = start from 0 each time.
    pub cache: Option<Cache>,
}

enum Ctl {
    /// This device's own send was acked with this entry number.
    Own(u64),
}

enum Item {
    Entry(Box<Entry>),
    Own,
}

/// A logged-in device.
pub struct Session {
    conn: Connection,
    user: String,
    ctl: mpsc::UnboundedSender<Ctl>,
    cursor: Arc<AtomicU64>,
}

impl Session {
    /// Connects, logs in, and starts the sync; events arrive on the returned channel.
    pub async fn start(
        opts: SessionOptions,
    ) -> SdkResult<(Session, mpsc::UnboundedReceiver<Event>)> {
        let (conn, pushes) = Connection::connect(&opts.server).await?;
        let info = conn
            .login(&opts.user, &opts.user_sig, &opts.device_id, &opts.platform)
            .await?;
        let mut cursor = 0;
        if let Some(cache) = &opts.cache
            && let Some((epoch, c)) = cache.load(&opts.user, &opts.device_id)?
            // A cursor from another store epoch means nothing here: resync from 0.
            && epoch == info.epoch
        {
            cursor = c;
        }
        let shared_cursor = Arc::new(AtomicU64::new(cursor));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let sync = SyncState {
            conn: conn.clone(),
            user: opts.user.clone(),
            device: opts.device_id.clone(),
            epoch: info.epoch,
            cache: opts.cache,
            cursor,
            shared_cursor: shared_cursor.clone(),
            pending: BTreeMap::new(),
            gap_deadline: None,
            events: events_tx,
            heartbeat: Duration::from_secs((info.heartbeat_timeout / 3).max(1)),
        };
        tokio::spawn(sync.run(pushes, ctl_rx));
        Ok((
            Session {
                conn,
                user: opts.user,
                ctl: ctl_tx,
                cursor: shared_cursor,
            },
            events_rx,
        ))
    }

    /// The protocol connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// This session's user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The device's cursor: every entry up to it has been reported.
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::SeqCst)
    }

    /// Sends a message; the ack's entry advances this device's cursor.
    pub async fn send(
        &self,
        to: &str,
        body: Vec<MsgElem>,
        opts: SendOptions,
    ) -> SdkResult<SentAck> {
        let ack = self.conn.send(to, body, opts).await?;
        if let Some(seq) = ack.entry {
            let _ = self.ctl.send(Ctl::Own(seq));
        }
        Ok(ack)
    }

    /// Sends a text message.
    pub async fn send_text(&self, to: &str, text: &str) -> SdkResult<SentAck> {
        self.send(to, vec![MsgElem::text(text)], SendOptions::default())
            .await
    }

    /// A history page with `peer` (newest first) and whether it is the last.
    pub async fn history(
        &self,
        peer: &str,
        before: Option<u64>,
        count: u32,
    ) -> SdkResult<(Vec<HistoryItem>, bool)> {
        self.conn.history(peer, before, count).await
    }

    /// All conversations.
    pub async fn conversations(&self) -> SdkResult<Vec<Conversation>> {
        self.conn.all_conversations().await
    }

    /// Marks the conversation with `peer` read.
    pub async fn mark_read(&self, peer: &str) -> SdkResult<()> {
        self.conn.mark_read(peer).await
    }

    /// Recalls one's own message.
    pub async fn recall(&self, msg_key: &str) -> SdkResult<()> {
        self.conn.recall(msg_key).await
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.conn.close().await
    }
}

struct SyncState {
    conn: Connection,
    user: String,
    device: String,
    epoch: String,
    cache: Option<Cache>,
    cursor: u64,
    shared_cursor: Arc<AtomicU64>,
    pending: BTreeMap<u64, Item>,
    gap_deadline: Option<Instant>,
    events: mpsc::UnboundedSender<Event>,
    heartbeat: Duration,
}

impl SyncState {
    async fn run(
        mut self,
        mut pushes: mpsc::UnboundedReceiver<Push>,
        mut ctl: mpsc::UnboundedReceiver<Ctl>,
    ) {
        if self.sync().await.is_err() {
            let _ = self.events.send(Event::Disconnected);
            return;
        }
        match self.conn.all_conversations().await {
            Ok(list) => {
                let _ = self.events.send(Event::Conversations(list));
            }
            Err(_) => {
                let _ = self.events.send(Event::Disconnected);
                return;
            }
        }
        let _ = self.events.send(Event::SyncFinished);
        let mut beat = tokio::time::interval(self.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        beat.reset();
        loop {
            let gap = self.gap_deadline;
            tokio::select! {
                _ = beat.tick() => {
                    // The pong carries the head: behind it means a live hint was lost.
                    let behind = match self.conn.ping().await {
                        Ok(head) => head > self.cursor && self.pending.is_empty(),
                        Err(_) => {
                            let _ = self.events.send(Event::Disconnected);
                            return;
                        }
                    };
                    if behind && self.sync().await.is_err() {
                        let _ = self.events.send(Event::Disconnected);
                        return;
                    }
                }
                p = pushes.recv() => match p {
                    Some(Push::Entry(e)) => self.on_item(e.seq, Item::Entry(Box::new(e))),
                    Some(Push::OnlineMessage(m)) => {
                        let _ = self.events.send(Event::NewMessage(m));
                    }
                    Some(Push::Kicked { code, reason }) => {
                        let _ = self.events.send(Event::KickedOffline { code, reason });
                    }
                    Some(Push::Error { code, info }) => tracing::warn!("server error {code}: {info}"),
                    Some(Push::Closed) | None => {
                        let _ = self.events.send(Event::Disconnected);
                        return;
                    }
                },
                Some(Ctl::Own(seq)) = ctl.recv() => self.on_item(seq, Item::Own),
                _ = sleep_until(gap.unwrap_or_else(Instant::now)), if gap.is_some() => {
                    if self.sync().await.is_err() {
                        let _ = self.events.send(Event::Disconnected);
                        return;
                    }
                }
            }
        }
    }

    fn on_item(&mut self, seq: u64, item: Item) {
        if seq <= self.cursor {
            return;
        }
        if seq == self.cursor + 1 {
            self.apply(item);
            self.cursor = seq;
            self.drain();
            self.save();
        } else {
            self.pending.insert(seq, item);
            if self.gap_deadline.is_none() {
                self.gap_deadline = Some(Instant::now() + GAP_WAIT);
            }
        }
    }

    fn drain(&mut self) {
        while let Some(entry) = self.pending.first_entry() {
            let seq = *entry.key();
            if seq <= self.cursor {
                entry.remove();
            } else if seq == self.cursor + 1 {
                let item = entry.remove();
                self.apply(item);
                self.cursor = seq;
            } else {
                break;
            }
        }
        self.gap_deadline = if self.pending.is_empty() {
            None
        } else {
            self.gap_deadline
                .or_else(|| Some(Instant::now() + GAP_WAIT))
        };
    }

    async fn sync(&mut self) -> SdkResult<()> {
        let (entries, cursor, epoch) = self.conn.sync(self.cursor).await?;
        if epoch != self.epoch {
            return Err(SdkError::Protocol(
                "store epoch changed during the session".into(),
            ));
        }
        for e in entries {
            // The server may cut old messages per conversation, so numbers
            // in a sync answer can skip; they only ever increase.
            if e.seq > self.cursor {
                self.cursor = e.seq;
                self.apply(Item::Entry(Box::new(e)));
            }
        }
        self.cursor = self.cursor.max(cursor);
        self.gap_deadline = None;
        self.drain();
        self.save();
        Ok(())
    }

    fn apply(&mut self, item: Item) {
        let Item::Entry(e) = item else { return };
        let ev = match e.kind {
            EntryKind::Message { message } => Event::NewMessage(message),
            EntryKind::Recall(r) => Event::MessageRecalled(r),
            EntryKind::Read(r) => Event::ReadReceipt(r),
        };
        let _ = self.events.send(ev);
    }

    fn save(&mut self) {
        self.shared_cursor.store(self.cursor, Ordering::SeqCst);
        if let Some(cache) = &self.cache
            && let Err(e) = cache.save(&self.user, &self.device, &self.epoch, self.cursor)
        {
            tracing::warn!("saving cursor: {e}");
        }
    }
}
