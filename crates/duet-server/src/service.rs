//! The services: every operation a client (or later the REST API) performs.
//! They validate, call the store, then hand live-delivery hints to the hub.
//! They never see SQL or sockets (Law 8).

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use duet_proto::{
    Conversation, Entry, HistoryItem, Message, MsgElem, MsgKey, ServerFrame, limits,
    message_entry_frame, server_frame_text, valid_user_id, validate_body,
};
use duet_store::{Account, NewMessage, RecallRequest, SendOutcome, SenderCopy, Store, SweepReport};
use duet_usersig::UserSigKey;

use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::error::ServiceError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::order::Turn;

/// A send, as the services take it (from a client frame or the REST API).
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// Recipient.
    pub to: String,
    /// Elements.
    pub body: Vec<MsgElem>,
    /// Client `MsgRandom`; generated if absent.
    pub msg_random: Option<u32>,
    /// Client `MsgSeq`; generated if absent.
    pub msg_seq: Option<u32>,
    /// `CloudCustomData`.
    pub cloud_custom_data: String,
    /// Online-only: never stored, never pushed.
    pub online_only: bool,
    /// Not counted unread.
    pub no_unread: bool,
    /// Conversation list not updated.
    pub no_last_msg: bool,
    /// Whether the sender keeps a copy.
    pub sender_copy: SenderCopy,
}

/// The result of a send.
#[derive(Debug, Clone)]
pub struct SendResult {
    /// The message (as stored, or the original on a retry).
    pub message: Message,
    /// The sender's timeline entry, if any.
    pub sender_entry: Option<u64>,
    /// This was a retry of an earlier send.
    pub duplicate: bool,
}

/// The services, shared by all connections.
pub struct Services {
    presence: std::sync::OnceLock<crate::presence::SharedPresence>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    clock: Arc<dyn Clock>,
    config: Arc<ServerConfig>,
    metrics: Arc<Metrics>,
}

fn entry_frame(entry: Entry) -> Utf8Bytes {
    frame_text(&ServerFrame::Entry { entry })
}

/// Serializes a server frame once, for sending to any number of devices.
pub fn frame_text(frame: &ServerFrame) -> Utf8Bytes {
    // Serializing our own plain data types cannot fail.
    server_frame_text(frame)
        .unwrap_or_else(|e| format!(r#"{{"type":"error","code":91000,"info":"serialize: {e}"}}"#))
        .into()
}

impl Services {
    /// Wires the services.
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        clock: Arc<dyn Clock>,
        config: Arc<ServerConfig>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Services {
            presence: std::sync::OnceLock::new(),
            store,
            hub,
            clock,
            config,
            metrics,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The app key.
    pub fn key(&self) -> &UserSigKey {
        &self.config.key
    }

    /// Checks a UserSig for `user` and makes sure the account exists
    /// (logging in creates the account, as in Tencent's service); returns it
    /// with the newest entry number of its timeline.
    pub async fn authenticate(
        &self,
        user: &str,
        user_sig: &str,
    ) -> Result<(Account, u64), ServiceError> {
        if !valid_user_id(user) {
            return Err(ServiceError::BadParams(format!(
                "UserID must be 1 to {} bytes of printable ASCII",
                limits::MAX_USER_ID_BYTES
            )));
        }
        self.config
            .key
            .verify_at(user_sig, user, self.clock.now_secs())?;
        Ok(self.store.login(user, self.clock.now_ms()).await?)
    }

    /// Sends a message from `from`. `origin` is the sending connection, which
    /// gets the ack instead of a live copy; `turn` its place among that
    /// connection's sends, so that live deliveries leave in the order the
    /// sends arrived (see [`crate::order`]).
    pub async fn send(
        &self,
        from: &str,
        req: SendRequest,
        origin: Option<u64>,
        turn: Option<Turn>,
    ) -> Result<SendResult, ServiceError> {
        let r = self.send_inner(from, req, origin, turn).await;
        let counter = if r.is_ok() {
            &self.metrics.sends
        } else {
            &self.metrics.send_errors
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        r
    }

    async fn send_inner(
        &self,
        from: &str,
        req: SendRequest,
        origin: Option<u64>,
        turn: Option<Turn>,
    ) -> Result<SendResult, ServiceError> {
        if !valid_user_id(&req.to) {
            return Err(ServiceError::UnknownRecipient(
                req.to.chars().take(40).collect(),
            ));
        }
        let body_json =
            validate_body(&req.body, &req.cloud_custom_data, limits::MAX_CONTENT_BYTES)?;
        let msg_seq = req.msg_seq.unwrap_or_else(rand::random);
        let msg_random = req.msg_random.unwrap_or_else(rand::random);
        let now_ms = self.clock.now_ms();
        let msg_time = now_ms / 1000;
        if req.online_only {
            return self
                .send_online_only(from, req, msg_seq, msg_random, msg_time, origin, turn)
                .await;
        }
        let outcome = self
            .store
            .send(NewMessage {
                from: from.to_string(),
                to: req.to,
                msg_seq,
                msg_random,
                msg_time,
                body: req.body,
                body_json,
                cloud_custom_data: req.cloud_custom_data,
                sender_copy: req.sender_copy,
                no_unread: req.no_unread,
                no_last_msg: req.no_last_msg,
                now_ms,
            })
            .await?;
        Ok(match outcome {
            SendOutcome::Stored {
                message,
                recipient_seq,
                sender_seq,
                ts,
            } => {
                // Store first, then deliver (Law 4). The frames are written
                // from the message itself, only for devices that want them.
                let route = move |hub: &Hub, message: &Message| {
                    let frame = |seq| Utf8Bytes::from(message_entry_frame(seq, ts, message));
                    hub.route(&message.to, || frame(recipient_seq), None);
                    if let Some(seq) = sender_seq {
                        hub.route(&message.from, || frame(seq), origin);
                    }
                };
                match turn {
                    None => route(&self.hub, &message),
                    Some(turn) => turn.deliver(
                        || route(&self.hub, &message),
                        || {
                            let (hub, message) = (Arc::clone(&self.hub), message.clone());
                            Box::new(move || route(&hub, &message))
                        },
                    ),
                }
                SendResult {
                    message,
                    sender_entry: sender_seq,
                    duplicate: false,
                }
            }
            SendOutcome::Duplicate {
                message,
                sender_entry_seq,
            } => SendResult {
                message,
                sender_entry: sender_entry_seq,
                duplicate: true,
            },
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_online_only(
        &self,
        from: &str,
        req: SendRequest,
        msg_seq: u32,
        msg_random: u32,
        msg_time: u64,
        origin: Option<u64>,
        turn: Option<Turn>,
    ) -> Result<SendResult, ServiceError> {
        if self.store.account(&req.to).await?.is_none() {
            return Err(ServiceError::UnknownRecipient(req.to));
        }
        let sender = self.store.account(from).await?;
        let (nick, face_url) = sender.map(|a| (a.nick, a.face_url)).unwrap_or_default();
        let message = Message {
            from: from.to_string(),
            to: req.to,
            msg_seq,
            msg_random,
            msg_time,
            msg_key: MsgKey {
                seq: msg_seq,
                random: msg_random,
                time: msg_time,
            }
            .to_string(),
            flag_bits: 0,
            body: req.body,
            cloud_custom_data: req.cloud_custom_data,
            nick,
            face_url,
            online_only: true,
        };
        let frame = frame_text(&ServerFrame::OnlineMessage {
            message: message.clone(),
        });
        let (to, from_copy) = (
            message.to.clone(),
            (req.sender_copy == SenderCopy::Timeline).then(|| message.from.clone()),
        );
        let hub = Arc::clone(&self.hub);
        let route = move || {
            hub.route(&to, || frame.clone(), None);
            if let Some(from) = &from_copy {
                hub.route(from, || frame.clone(), origin);
            }
        };
        match turn {
            None => route(),
            Some(turn) => turn.deliver_boxed(Box::new(route)),
        }
        Ok(SendResult {
            message,
            sender_entry: None,
            duplicate: false,
        })
    }

    /// At most `limit` entries of `user` in `(after, upto]`, keeping the newest
    /// `sync_per_conversation` messages per conversation of that range. Page
    /// with `after` = the last returned `seq`.
    pub async fn sync_page(
        &self,
        user: &str,
        after: u64,
        upto: u64,
        limit: u32,
    ) -> Result<Vec<Entry>, ServiceError> {
        Ok(self
            .store
            .sync(user, after, upto, self.config.sync_per_conversation, limit)
            .await?)
    }

    /// A history page with `peer`, newest first.
    pub async fn history(
        &self,
        user: &str,
        peer: &str,
        before: Option<u64>,
        count: u32,
    ) -> Result<(Vec<HistoryItem>, bool), ServiceError> {
        if !valid_user_id(peer) {
            return Err(ServiceError::BadParams("peer is not a valid UserID".into()));
        }
        let count = count.clamp(1, limits::MAX_HISTORY_PAGE);
        // Ask for one more to learn whether the page is the last.
        let mut items = self.store.history(user, peer, before, count + 1).await?;
        let complete = items.len() <= count as usize;
        items.truncate(count as usize);
        Ok((items, complete))
    }

    /// A page of conversations; returns the page and the next cursor, or None when done.
    pub async fn conversations(
        &self,
        user: &str,
        cursor: u32,
        count: u32,
    ) -> Result<(Vec<Conversation>, Option<u32>), ServiceError> {
        let count = count.clamp(1, limits::MAX_CONVERSATION_PAGE);
        let mut page = self.store.conversations(user, cursor, count + 1).await?;
        let more = page.len() > count as usize;
        page.truncate(count as usize);
        let next = more.then(|| cursor + count);
        Ok((page, next))
    }

    /// `user` read everything from `peer` until now.
    pub async fn mark_read(&self, user: &str, peer: &str) -> Result<(), ServiceError> {
        if !valid_user_id(peer) {
            return Err(ServiceError::BadParams("peer is not a valid UserID".into()));
        }
        let out = self
            .store
            .mark_read(user, peer, self.clock.now_secs(), self.clock.now_ms())
            .await?;
        self.hub.route(user, || entry_frame(out.reader_entry), None);
        if let Some(e) = out.peer_entry {
            self.hub.route(peer, || entry_frame(e), None);
        }
        Ok(())
    }

    /// `user` recalls their own message, within the recall window.
    pub async fn recall(&self, user: &str, msg_key: &str) -> Result<(), ServiceError> {
        let key: MsgKey = msg_key
            .parse()
            .map_err(|e: duet_proto::model::BadMsgKey| ServiceError::BadMsgKey(e.to_string()))?;
        let window = self.config.recall_window.as_secs();
        let now = self.clock.now_secs();
        let out = self
            .store
            .recall(RecallRequest {
                by: user.to_string(),
                key,
                not_before: Some(now.saturating_sub(window)),
                now_ms: self.clock.now_ms(),
            })
            .await
            .map_err(|e| match ServiceError::from(e) {
                ServiceError::RecallWindowPassed(_) => ServiceError::RecallWindowPassed(window),
                other => other,
            })?;
        let to = match &out.recipient_entry.kind {
            duet_proto::EntryKind::Recall(r) => r.to.clone(),
            _ => {
                return Err(ServiceError::Internal(
                    "recall wrote a non-recall entry".into(),
                ));
            }
        };
        self.hub
            .route(&to, || entry_frame(out.recipient_entry), None);
        if let Some(e) = out.sender_entry {
            self.hub.route(user, || entry_frame(e), None);
        }
        Ok(())
    }

    /// Sets profile fields carried in later messages.
    pub async fn set_profile(
        &self,
        user: &str,
        nick: Option<String>,
        face_url: Option<String>,
    ) -> Result<Account, ServiceError> {
        if nick
            .as_ref()
            .is_some_and(|n| n.len() > limits::MAX_NICK_BYTES)
        {
            return Err(ServiceError::BadParams(format!(
                "nick is over {} bytes",
                limits::MAX_NICK_BYTES
            )));
        }
        if face_url
            .as_ref()
            .is_some_and(|n| n.len() > limits::MAX_FACE_URL_BYTES)
        {
            return Err(ServiceError::BadParams(format!(
                "face_url is over {} bytes",
                limits::MAX_FACE_URL_BYTES
            )));
        }
        Ok(self
            .store
            .set_profile(user, nick, face_url, self.clock.now_ms())
            .await?)
    }

    /// Uses shared presence (several nodes) for [`Services::online_devices`].
    pub fn set_shared_presence(&self, p: crate::presence::SharedPresence) {
        let _ = self.presence.set(p);
    }

    /// The connected devices of `users`: from shared presence when the node
    /// is part of a cluster (devices of nodes not heard from within the TTL
    /// are left out), else from this node's hub.
    pub async fn online_devices(
        &self,
        users: &[String],
    ) -> Result<Vec<duet_store::PresenceDevice>, ServiceError> {
        if let Some(p) = self.presence.get() {
            let since = self.clock.now_ms().saturating_sub(p.ttl.as_millis() as u64);
            return Ok(p.store.presence_online(users, since).await?);
        }
        Ok(users
            .iter()
            .flat_map(|u| {
                self.hub
                    .devices(u)
                    .into_iter()
                    .map(move |(device_id, platform)| duet_store::PresenceDevice {
                        user_id: u.clone(),
                        node_id: "local".into(),
                        conn_id: 0,
                        device_id,
                        platform,
                    })
            })
            .collect())
    }

    /// Runs the retention sweep to completion once. Returns rows removed.
    pub async fn sweep_once(&self) -> Result<SweepReport, ServiceError> {
        let mut total = SweepReport::default();
        let Some(retention) = self.config.retention else {
            return Ok(total);
        };
        let cutoff = self
            .clock
            .now_ms()
            .saturating_sub(retention.as_millis() as u64);
        loop {
            let r = self.store.sweep(cutoff, self.config.sweep_chunk).await?;
            total.entries += r.entries;
            total.messages += r.messages;
            total.conversations += r.conversations;
            self.metrics
                .swept_rows
                .fetch_add(r.total(), std::sync::atomic::Ordering::Relaxed);
            if !r.more {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(total)
    }
}
