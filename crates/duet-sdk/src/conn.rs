//! The protocol layer: one WebSocket to the server, requests matched to
//! answers by `req_id`, pushes (live entries, kicks) on a channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duet_proto::{
    ClientFrame, Conversation, Entry, HistoryItem, Message, MsgElem, PROTOCOL_VERSION, ServerFrame,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{SdkError, SdkResult};

/// Something the server sent without being asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// A new timeline entry.
    Entry(Entry),
    /// An online-only message.
    OnlineMessage(Message),
    /// This device was kicked by a newer login.
    Kicked {
        /// 6208.
        code: u32,
        /// Why.
        reason: String,
    },
    /// An error frame that answers no request.
    Error {
        /// Code.
        code: u32,
        /// Reason.
        info: String,
    },
    /// The connection closed.
    Closed,
}

/// Options of a send.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// `MsgRandom` (generated if `None`; keep it to retry idempotently).
    pub msg_random: Option<u32>,
    /// `MsgSeq` (generated if `None`).
    pub msg_seq: Option<u32>,
    /// `CloudCustomData`.
    pub cloud_custom_data: String,
    /// Online-only.
    pub online_only: bool,
    /// Not counted as unread.
    pub no_unread: bool,
    /// Does not update the conversation list.
    pub no_last_msg: bool,
}

/// The server's ack of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentAck {
    /// `MsgKey`.
    pub msg_key: String,
    /// `MsgTime`, Unix seconds.
    pub msg_time: u64,
    /// `MsgSeq`.
    pub msg_seq: u32,
    /// `MsgRandom`.
    pub msg_random: u32,
    /// The sender's timeline entry.
    pub entry: Option<u64>,
    /// The server had it already (a retry).
    pub duplicate: bool,
}

/// Login answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginInfo {
    /// Store epoch.
    pub epoch: String,
    /// Newest entry number.
    pub head: u64,
    /// Server idle timeout, seconds.
    pub heartbeat_timeout: u64,
}

struct Waiter {
    frames: Vec<ServerFrame>,
    tx: oneshot::Sender<SdkResult<Vec<ServerFrame>>>,
}

struct Inner {
    out: mpsc::Sender<WsMessage>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    /// Set by the reader when the socket is gone, before it fails the waiters.
    closed: AtomicBool,
}

/// A connection to a Duet server. Cheap to clone; all clones share the socket.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

/// The WebSocket URL for a server base URL (`http://host:port` → `ws://host:port/ws`).
pub fn ws_url(server: &str) -> String {
    let s = server.trim_end_matches('/');
    let s = if let Some(rest) = s.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = s.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if s.starts_with("ws://") || s.starts_with("wss://") {
        s.to_string()
    } else {
        format!("ws://{s}")
    };
    if s.ends_with("/ws") {
        s
    } else {
        format!("{s}/ws")
    }
}

/// Read buffer of a connection, unless the caller picks one
/// ([`Connection::connect_with_stream_sized`]).
const READ_BUFFER: usize = 16 * 1024;

fn ws_config(read_buffer: usize) -> WebSocketConfig {
    let mut cfg = WebSocketConfig::default();
    // The WebSocket layer zero-fills the whole buffer before its first read:
    // each connection touches this much memory once it has received a frame.
    cfg.read_buffer_size = read_buffer;
    // The writer task flushes after each batch of queued frames: one
    // `send` for many frames.
    cfg.write_buffer_size = 16 * 1024;
    cfg.max_message_size = Some(64 << 20);
    cfg
}

fn take_pending(inner: &Inner) -> HashMap<u64, Waiter> {
    std::mem::take(&mut *inner.pending.lock().unwrap_or_else(|p| p.into_inner()))
}

impl Connection {
    /// Connects to `server` (a base URL like `http://127.0.0.1:7400`).
    /// Returns the connection and the channel of pushes.
    pub async fn connect(server: &str) -> SdkResult<(Connection, mpsc::UnboundedReceiver<Push>)> {
        let url = ws_url(server);
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(&url, Some(ws_config(READ_BUFFER)), true)
                .await
                .map_err(|e| SdkError::Io(format!("{url}: {e}")))?;
        Ok(Self::start(ws))
    }

    /// Connects over a TCP stream the caller opened (for example bound to a
    /// chosen source address, as the load generator does).
    pub async fn connect_with_stream(
        server: &str,
        tcp: tokio::net::TcpStream,
    ) -> SdkResult<(Connection, mpsc::UnboundedReceiver<Push>)> {
        Self::connect_with_stream_sized(server, tcp, READ_BUFFER).await
    }

    /// As [`Connection::connect_with_stream`], with a read buffer of
    /// `read_buffer` bytes (16 KiB otherwise): an idle connection that
    /// receives only small frames (as the load generator's thousands do)
    /// needs no more than a page. Larger frames are still read, in parts.
    pub async fn connect_with_stream_sized(
        server: &str,
        tcp: tokio::net::TcpStream,
        read_buffer: usize,
    ) -> SdkResult<(Connection, mpsc::UnboundedReceiver<Push>)> {
        let url = ws_url(server);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(&url, tcp, Some(ws_config(read_buffer)))
                .await
                .map_err(|e| SdkError::Io(format!("{url}: {e}")))?;
        Ok(Self::start(ws))
    }

    fn start<S>(
        ws: tokio_tungstenite::WebSocketStream<S>,
    ) -> (Connection, mpsc::UnboundedReceiver<Push>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::channel::<WsMessage>(1024);
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            out: out_tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(async move {
            // Write what is queued, then flush once: one syscall for many frames.
            'outer: while let Some(m) = out_rx.recv().await {
                if sink.feed(m).await.is_err() {
                    break;
                }
                for _ in 1..64 {
                    match out_rx.try_recv() {
                        Ok(m) => {
                            if sink.feed(m).await.is_err() {
                                break 'outer;
                            }
                        }
                        Err(_) => break,
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader_inner = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let text = match msg {
                    WsMessage::Text(t) => t,
                    WsMessage::Close(_) => break,
                    _ => continue,
                };
                let frame: ServerFrame = match serde_json::from_str(text.as_str()) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!("unparseable server frame: {e}");
                        continue;
                    }
                };
                let Some(inner) = reader_inner.upgrade() else {
                    break;
                };
                match frame.req_id() {
                    Some(id) => {
                        let mut pending = inner.pending.lock().unwrap_or_else(|p| p.into_inner());
                        if matches!(frame, ServerFrame::SyncBatch { .. }) {
                            if let Some(w) = pending.get_mut(&id) {
                                w.frames.push(frame);
                            }
                            continue;
                        }
                        if let Some(mut w) = pending.remove(&id) {
                            let r = match frame {
                                ServerFrame::Error { code, info, .. } => {
                                    Err(SdkError::Server { code, info })
                                }
                                f => {
                                    w.frames.push(f);
                                    Ok(w.frames)
                                }
                            };
                            let _ = w.tx.send(r);
                        }
                    }
                    None => {
                        let p = match frame {
                            ServerFrame::Entry { entry } => Push::Entry(entry),
                            ServerFrame::OnlineMessage { message } => Push::OnlineMessage(message),
                            ServerFrame::KickedOffline { code, reason } => {
                                Push::Kicked { code, reason }
                            }
                            ServerFrame::Error { code, info, .. } => Push::Error { code, info },
                            _ => continue,
                        };
                        let _ = push_tx.send(p);
                    }
                }
            }
            if let Some(inner) = reader_inner.upgrade() {
                inner.closed.store(true, Ordering::SeqCst);
                for (_, w) in take_pending(&inner) {
                    let _ = w.tx.send(Err(SdkError::Closed));
                }
            }
            let _ = push_tx.send(Push::Closed);
        });
        (Connection { inner }, push_rx)
    }

    /// Whether the socket is gone.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// A fresh request id.
    pub fn next_req_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a frame and waits for its answer (all frames of it: a sync
    /// answer is its batches and the `sync_finished`).
    pub async fn request(&self, frame: ClientFrame) -> SdkResult<Vec<ServerFrame>> {
        let id = frame.req_id();
        let text = serde_json::to_string(&frame).map_err(|e| SdkError::Protocol(e.to_string()))?;
        // Take the frame's place in the outgoing queue outside tokio's
        // cooperative budget: a request whose budget ran out just after it
        // took its place would otherwise let later requests overtake it, and
        // frames must leave in the order they were issued (a device's sends
        // are committed in that order).
        let permit = tokio::task::unconstrained(self.inner.out.reserve())
            .await
            .map_err(|_| SdkError::Closed)?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Waiter {
                    frames: Vec::new(),
                    tx,
                },
            );
        // Checked after registering: the reader sets `closed` before it
        // fails the waiters, so a waiter is either failed by it or sees this.
        if self.inner.closed.load(Ordering::SeqCst) {
            self.inner
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(SdkError::Closed);
        }
        permit.send(WsMessage::Text(text.into()));
        rx.await.map_err(|_| SdkError::Closed)?
    }

    async fn request_one(&self, frame: ClientFrame) -> SdkResult<ServerFrame> {
        self.request(frame)
            .await?
            .pop()
            .ok_or_else(|| SdkError::Protocol("empty answer".into()))
    }

    /// Sends a raw text frame (tests of bad input).
    pub async fn send_raw(&self, text: String) -> SdkResult<()> {
        self.inner
            .out
            .send(WsMessage::Text(text.into()))
            .await
            .map_err(|_| SdkError::Closed)
    }

    /// Logs in.
    pub async fn login(
        &self,
        user: &str,
        user_sig: &str,
        device_id: &str,
        platform: &str,
    ) -> SdkResult<LoginInfo> {
        let f = ClientFrame::Login {
            req_id: self.next_req_id(),
            user_id: user.into(),
            user_sig: user_sig.into(),
            device_id: device_id.into(),
            platform: platform.into(),
            protocol_version: PROTOCOL_VERSION,
        };
        match self.request_one(f).await? {
            ServerFrame::LoginOk {
                epoch,
                head,
                heartbeat_timeout,
                ..
            } => Ok(LoginInfo {
                epoch,
                head,
                heartbeat_timeout,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Keeps the connection alive: a `ping` every `period` until it closes.
    pub fn start_heartbeat(&self, period: Duration) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { return };
                let conn = Connection { inner };
                let f = ClientFrame::Ping {
                    req_id: conn.next_req_id(),
                };
                // Fire and forget; the answer is dropped.
                let Ok(text) = serde_json::to_string(&f) else {
                    return;
                };
                if conn
                    .inner
                    .out
                    .send(WsMessage::Text(text.into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    /// Sends a message.
    pub async fn send(
        &self,
        to: &str,
        body: Vec<MsgElem>,
        opts: SendOptions,
    ) -> SdkResult<SentAck> {
        let f = ClientFrame::Send {
            req_id: self.next_req_id(),
            to: to.into(),
            body,
            msg_random: opts.msg_random,
            msg_seq: opts.msg_seq,
            cloud_custom_data: opts.cloud_custom_data,
            online_only: opts.online_only,
            no_unread: opts.no_unread,
            no_last_msg: opts.no_last_msg,
        };
        match self.request_one(f).await? {
            ServerFrame::SendAck {
                msg_key,
                msg_time,
                msg_seq,
                msg_random,
                entry,
                duplicate,
                ..
            } => Ok(SentAck {
                msg_key,
                msg_time,
                msg_seq,
                msg_random,
                entry,
                duplicate,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Entries after `after`: (entries, new cursor, epoch).
    pub async fn sync(&self, after: u64) -> SdkResult<(Vec<Entry>, u64, String)> {
        let frames = self
            .request(ClientFrame::Sync {
                req_id: self.next_req_id(),
                after,
            })
            .await?;
        let mut entries = Vec::new();
        for f in frames {
            match f {
                ServerFrame::SyncBatch { entries: e, .. } => entries.extend(e),
                ServerFrame::SyncFinished { cursor, epoch, .. } => {
                    return Ok((entries, cursor, epoch));
                }
                other => return Err(unexpected(&other)),
            }
        }
        Err(SdkError::Protocol(
            "sync answer without sync_finished".into(),
        ))
    }

    /// A history page with `peer`, newest first; `before` is the smallest
    /// `seq` of the previous page. Returns (items, complete).
    pub async fn history(
        &self,
        peer: &str,
        before: Option<u64>,
        count: u32,
    ) -> SdkResult<(Vec<HistoryItem>, bool)> {
        let f = ClientFrame::History {
            req_id: self.next_req_id(),
            peer: peer.into(),
            before,
            count,
        };
        match self.request_one(f).await? {
            ServerFrame::HistoryPage {
                messages, complete, ..
            } => Ok((messages, complete)),
            other => Err(unexpected(&other)),
        }
    }

    /// A page of conversations: (page, next cursor if more).
    pub async fn conversations(
        &self,
        cursor: u32,
        count: u32,
    ) -> SdkResult<(Vec<Conversation>, Option<u32>)> {
        let f = ClientFrame::Conversations {
            req_id: self.next_req_id(),
            cursor,
            count,
        };
        match self.request_one(f).await? {
            ServerFrame::ConversationPage {
                conversations,
                next_cursor,
                complete,
                ..
            } => Ok((conversations, (!complete).then_some(next_cursor))),
            other => Err(unexpected(&other)),
        }
    }

    /// Every conversation, following the pages.
    pub async fn all_conversations(&self) -> SdkResult<Vec<Conversation>> {
        let mut all = Vec::new();
        let mut cursor = 0;
        loop {
            let (page, next) = self.conversations(cursor, 100).await?;
            all.extend(page);
            match next {
                Some(n) => cursor = n,
                None => return Ok(all),
            }
        }
    }

    /// Marks the conversation with `peer` read.
    pub async fn mark_read(&self, peer: &str) -> SdkResult<()> {
        self.expect_ok(ClientFrame::MarkRead {
            req_id: self.next_req_id(),
            peer: peer.into(),
        })
        .await
    }

    /// Recalls one's own message.
    pub async fn recall(&self, msg_key: &str) -> SdkResult<()> {
        self.expect_ok(ClientFrame::Recall {
            req_id: self.next_req_id(),
            msg_key: msg_key.into(),
        })
        .await
    }

    /// Sets nickname and/or face URL.
    pub async fn set_profile(
        &self,
        nick: Option<String>,
        face_url: Option<String>,
    ) -> SdkResult<()> {
        self.expect_ok(ClientFrame::SetProfile {
            req_id: self.next_req_id(),
            nick,
            face_url,
        })
        .await
    }

    /// Round trip to the server; returns the user's timeline head.
    pub async fn ping(&self) -> SdkResult<u64> {
        match self
            .request_one(ClientFrame::Ping {
                req_id: self.next_req_id(),
            })
            .await?
        {
            ServerFrame::Pong { head, .. } => Ok(head),
            other => Err(unexpected(&other)),
        }
    }

    /// Logs out; the server closes the connection.
    pub async fn logout(&self) -> SdkResult<()> {
        self.expect_ok(ClientFrame::Logout {
            req_id: self.next_req_id(),
        })
        .await
    }

    async fn expect_ok(&self, f: ClientFrame) -> SdkResult<()> {
        match self.request_one(f).await? {
            ServerFrame::Ok { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Closes the socket.
    pub async fn close(&self) {
        let _ = self.inner.out.send(WsMessage::Close(None)).await;
    }
}

fn unexpected(f: &ServerFrame) -> SdkError {
    SdkError::Protocol(format!("unexpected answer: {f:?}"))
}
