//! The client WebSocket gateway: one task per connection, JSON text frames
//! (see `docs/protocol.md`). It parses frames, calls the services, and writes
//! answers and live deliveries back. Errors are mapped to codes here, once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use duet_proto::{
    ClientFrame, Entry, PROTOCOL_VERSION, ServerFrame, codes, limits, parse_client_frame,
};
use duet_store::SenderCopy;
use futures_util::stream::{self, BoxStream, SelectAll};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout};

use crate::error::ServiceError;
use crate::hub::{DeviceHandle, Outbound};
use crate::metrics::RequestKind;
use crate::order::DeliveryOrder;
use crate::service::{SendRequest, Services, frame_text};

const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to one request: a stream of frames (one for most requests,
/// pages and a `sync_finished` for `sync`), polled only as fast as the socket
/// takes them (Law 6).
type Reply = BoxStream<'static, ServerFrame>;

fn error_frame(req_id: Option<u64>, code: u32, info: impl Into<String>) -> ServerFrame {
    ServerFrame::Error {
        req_id,
        code,
        info: info.into(),
    }
}

fn service_error(req_id: u64, e: &ServiceError) -> ServerFrame {
    error_frame(Some(req_id), e.code(), e.to_string())
}

struct Session {
    user: Arc<str>,
    conn_id: u64,
    /// The connection's sends deliver live in the order they arrived (made
    /// at its first send: an idle connection does not pay for it).
    deliveries: std::sync::OnceLock<Arc<DeliveryOrder>>,
    /// Held by a send while the store commits it, when the store does not by
    /// itself commit writes in the order they were issued: the connection's
    /// sends then commit one after the other, in the order they arrived.
    send_order: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// Serves one upgraded WebSocket until it closes, the device is kicked, it
/// idles past the heartbeat timeout, or the server shuts down.
pub async fn serve_socket(
    mut ws: WebSocket,
    services: Arc<Services>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cfg = services.config();
    let idle = cfg.heartbeat_timeout;
    let (tx, mut rx) = mpsc::channel::<Outbound>(cfg.outbound_queue);
    let kill = Arc::new(Notify::new());
    let mut session: Option<Session> = None;
    let mut inflight: SelectAll<Reply> = SelectAll::new();
    let max_inflight = cfg.max_inflight_per_connection;
    let mut deadline = Instant::now() + idle;
    let mut close_reason: Option<(u16, &'static str)> = None;

    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                close_reason = Some((1001, "server shutting down"));
                break;
            }
            _ = kill.notified() => {
                close_reason = Some((1008, "too slow: resync on reconnect"));
                break;
            }
            Some(out) = rx.recv() => {
                let w = write_ready(&mut ws, Ready::Out(out), &mut rx, &mut inflight).await;
                if !keep_going(w, &mut close_reason, &mut session) { break; }
            }
            Some(frame) = inflight.next(), if !inflight.is_empty() => {
                let w = write_ready(&mut ws, Ready::Reply(frame), &mut rx, &mut inflight).await;
                if !keep_going(w, &mut close_reason, &mut session) { break; }
            }
            msg = ws.recv(), if inflight.len() < max_inflight => {
                let Some(Ok(msg)) = msg else { break };
                deadline = Instant::now() + idle;
                let text = match msg {
                    WsMessage::Text(t) => t,
                    WsMessage::Binary(_) => {
                        let f = error_frame(None, codes::BAD_JSON, "binary frames are not supported; send JSON text frames");
                        if !send_frames(&mut ws, vec![f]).await { break; }
                        continue;
                    }
                    WsMessage::Close(_) => break,
                    WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                };
                let frame = match parse_client_frame(text.as_str()) {
                    Ok(f) => f,
                    Err(e) => {
                        let f = error_frame(e.req_id(), e.code(), e.to_string());
                        if !send_frames(&mut ws, vec![f]).await { break; }
                        continue;
                    }
                };
                match &session {
                    None => {
                        let (frames, s) = login(&services, frame, &tx, &kill).await;
                        session = s;
                        if !send_frames(&mut ws, frames).await { break; }
                    }
                    Some(s) => {
                        if let ClientFrame::Logout { req_id } = frame {
                            services.hub().unregister(&s.user, s.conn_id);
                            session = None;
                            let _ = send_frames(&mut ws, vec![ServerFrame::Ok { req_id }]).await;
                            close_reason = Some((1000, "logged out"));
                            break;
                        }
                        inflight.push(handle(services.clone(), s, frame));
                    }
                }
            }
            _ = sleep_until(deadline) => {
                close_reason = Some((1000, "heartbeat timeout"));
                break;
            }
        }
    }

    if let Some(s) = &session {
        services.hub().unregister(&s.user, s.conn_id);
    }
    // Finish requests already taken (their commits are in flight), then close.
    while let Some(frame) = inflight.next().await {
        if !send_frames(&mut ws, vec![frame]).await {
            break;
        }
    }
    if let Some((code, reason)) = close_reason {
        let _ = timeout(
            WRITE_TIMEOUT,
            ws.send(WsMessage::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }))),
        )
        .await;
    }
}

/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;

enum Ready {
    Out(Outbound),
    Reply(ServerFrame),
}

enum Written {
    Ok,
    Kicked,
    Failed,
}

/// Whether the connection goes on after a write; a kick sets the close
/// reason and forgets the session (the hub already dropped it).
fn keep_going(
    w: Written,
    close_reason: &mut Option<(u16, &'static str)>,
    session: &mut Option<Session>,
) -> bool {
    match w {
        Written::Ok => true,
        Written::Kicked => {
            *close_reason = Some((1000, "kicked offline"));
            *session = None;
            false
        }
        Written::Failed => false,
    }
}

/// Writes `first` and whatever else is ready right now (queued deliveries,
/// finished replies), up to [`WRITE_BATCH`] frames, with one flush: one
/// syscall for many frames under load.
async fn write_ready(
    ws: &mut WebSocket,
    first: Ready,
    rx: &mut mpsc::Receiver<Outbound>,
    inflight: &mut SelectAll<Reply>,
) -> Written {
    let mut next = Some(first);
    let mut n = 0;
    while let Some(item) = next.take() {
        let (text, kick) = match item {
            Ready::Out(Outbound::Frame(t)) => (t, false),
            Ready::Out(Outbound::Kick(t)) => (t, true),
            Ready::Reply(f) => (frame_text(&f), false),
        };
        if !matches!(
            timeout(WRITE_TIMEOUT, ws.feed(WsMessage::Text(text))).await,
            Ok(Ok(()))
        ) {
            return Written::Failed;
        }
        n += 1;
        if kick {
            let _ = timeout(WRITE_TIMEOUT, ws.flush()).await;
            return Written::Kicked;
        }
        if n >= WRITE_BATCH {
            break;
        }
        next = match rx.try_recv() {
            Ok(o) => Some(Ready::Out(o)),
            Err(_) => match inflight.next().now_or_never() {
                Some(Some(f)) => Some(Ready::Reply(f)),
                _ => None,
            },
        };
    }
    if matches!(timeout(WRITE_TIMEOUT, ws.flush()).await, Ok(Ok(()))) {
        Written::Ok
    } else {
        Written::Failed
    }
}

async fn send_frames(ws: &mut WebSocket, frames: Vec<ServerFrame>) -> bool {
    let n = frames.len();
    for (i, f) in frames.into_iter().enumerate() {
        let msg = WsMessage::Text(frame_text(&f));
        // Batch the writes of a multi-frame answer; flush at the end.
        let r = if i + 1 < n {
            timeout(WRITE_TIMEOUT, ws.feed(msg)).await
        } else {
            timeout(WRITE_TIMEOUT, ws.send(msg)).await
        };
        if !matches!(r, Ok(Ok(()))) {
            return false;
        }
    }
    true
}

async fn login(
    services: &Arc<Services>,
    frame: ClientFrame,
    tx: &mpsc::Sender<Outbound>,
    kill: &Arc<Notify>,
) -> (Vec<ServerFrame>, Option<Session>) {
    let ClientFrame::Login {
        req_id,
        user_id,
        user_sig,
        device_id,
        platform,
        ..
    } = frame
    else {
        let f = error_frame(
            Some(frame.req_id()),
            codes::NOT_LOGGED_IN,
            "not logged in: send a login frame first",
        );
        return (vec![f], None);
    };
    let metrics = services.metrics();
    if device_id.is_empty() || device_id.len() > limits::MAX_DEVICE_ID_BYTES {
        metrics
            .login_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = error_frame(
            Some(req_id),
            codes::BAD_PARAMS,
            format!(
                "device_id must be 1 to {} bytes",
                limits::MAX_DEVICE_ID_BYTES
            ),
        );
        return (vec![f], None);
    }
    if metrics
        .connections
        .load(std::sync::atomic::Ordering::Relaxed)
        >= services.config().max_connections as u64
    {
        let f = error_frame(
            Some(req_id),
            codes::UNAVAILABLE,
            "server is at its connection limit",
        );
        return (vec![f], None);
    }
    let head = match services.authenticate(&user_id, &user_sig).await {
        Ok((_, head)) => head,
        Err(e) => {
            metrics
                .login_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return (vec![service_error(req_id, &e)], None);
        }
    };
    let user: Arc<str> = user_id.as_str().into();
    let conn_id = services.hub().next_conn_id();
    let platform = if platform.is_empty() {
        "Unknown".to_string()
    } else {
        platform.chars().take(16).collect()
    };
    let kick = frame_text(&ServerFrame::KickedOffline {
        code: codes::KICKED_OFFLINE,
        reason: format!("logged in on another device ({platform})"),
    });
    services.hub().register(
        &user,
        DeviceHandle {
            conn_id,
            device_id,
            platform,
            tx: tx.clone(),
            kill: kill.clone(),
        },
        &kick,
    );
    metrics
        .logins
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ok = ServerFrame::LoginOk {
        req_id,
        user_id,
        epoch: services.store().epoch().to_string(),
        head,
        server_time: services.clock().now_ms(),
        protocol_version: PROTOCOL_VERSION,
        heartbeat_timeout: services.config().heartbeat_timeout.as_secs(),
    };
    let send_order =
        (!services.store().keeps_issue_order()).then(|| Arc::new(tokio::sync::Mutex::new(())));
    (
        vec![ok],
        Some(Session {
            user,
            conn_id,
            deliveries: std::sync::OnceLock::new(),
            send_order,
        }),
    )
}

fn handle(services: Arc<Services>, s: &Session, frame: ClientFrame) -> Reply {
    if let ClientFrame::Sync { req_id, after } = frame {
        return sync_stream(services, s.user.clone(), req_id, after);
    }
    single(services, s, frame)
}

/// Entries read from the store per query. Each query evaluates the
/// per-conversation cut over the rest of the range, so reading in large pages
/// keeps a long drain linear; the pages go out in frames of `sync_batch`.
const SYNC_READ: u32 = 2048;

struct SyncState {
    from: u64,
    head: Option<u64>,
    buf: VecDeque<Entry>,
    store_done: bool,
    finished: bool,
}

/// `sync`: frames of at most `sync_batch` entries, read as the socket takes
/// them, then `sync_finished`.
fn sync_stream(services: Arc<Services>, user: Arc<str>, req_id: u64, after: u64) -> Reply {
    let state = SyncState {
        from: after,
        head: None,
        buf: VecDeque::new(),
        store_done: false,
        finished: false,
    };
    Box::pin(stream::unfold(state, move |mut st| {
        let services = services.clone();
        let user = user.clone();
        async move {
            if st.finished {
                return None;
            }
            let frame = match next_sync_frame(&services, &user, req_id, &mut st).await {
                Ok(f) => f,
                Err(e) => {
                    st.finished = true;
                    service_error(req_id, &e)
                }
            };
            Some((frame, st))
        }
    }))
}

async fn next_sync_frame(
    services: &Services,
    user: &str,
    req_id: u64,
    st: &mut SyncState,
) -> Result<ServerFrame, ServiceError> {
    let head = match st.head {
        Some(h) => h,
        None => {
            let h = services.store().head(user).await?;
            st.head = Some(h);
            h
        }
    };
    if st.buf.is_empty() && !st.store_done {
        let page = services.sync_page(user, st.from, head, SYNC_READ).await?;
        st.store_done = page.len() < SYNC_READ as usize;
        if let Some(last) = page.last() {
            st.from = last.seq;
        }
        st.buf.extend(page);
    }
    if st.buf.is_empty() {
        st.finished = true;
        return Ok(ServerFrame::SyncFinished {
            req_id,
            cursor: head,
            epoch: services.store().epoch().to_string(),
        });
    }
    let n = services.config().sync_batch.clamp(1, st.buf.len());
    Ok(ServerFrame::SyncBatch {
        req_id,
        entries: st.buf.drain(..n).collect(),
    })
}

fn request_kind(frame: &ClientFrame) -> RequestKind {
    match frame {
        ClientFrame::Send { .. } => RequestKind::Send,
        ClientFrame::History { .. } => RequestKind::History,
        ClientFrame::Conversations { .. } => RequestKind::Conversations,
        ClientFrame::MarkRead { .. } => RequestKind::MarkRead,
        ClientFrame::Recall { .. } => RequestKind::Recall,
        _ => RequestKind::Other,
    }
}

fn single(services: Arc<Services>, s: &Session, frame: ClientFrame) -> Reply {
    let (user, conn_id) = (s.user.clone(), s.conn_id);
    let send_order = s.send_order.clone();
    // Taken now, in the order the frames arrived.
    let turn = matches!(frame, ClientFrame::Send { .. })
        .then(|| s.deliveries.get_or_init(DeliveryOrder::new).turn());
    Box::pin(
        stream::once(async move {
            let req_id = frame.req_id();
            let started = std::time::Instant::now();
            let kind = request_kind(&frame);
            let r: Result<Vec<ServerFrame>, ServiceError> = async {
                Ok(match frame {
                    ClientFrame::Login { .. } => vec![error_frame(
                        Some(req_id),
                        codes::BAD_PARAMS,
                        "already logged in on this connection",
                    )],
                    ClientFrame::Ping { .. } => vec![ServerFrame::Pong {
                        req_id,
                        server_time: services.clock().now_ms(),
                        head: services.store().head(&user).await?,
                    }],
                    ClientFrame::Send {
                        to,
                        body,
                        msg_random,
                        msg_seq,
                        cloud_custom_data,
                        online_only,
                        no_unread,
                        no_last_msg,
                        ..
                    } => {
                        let req = SendRequest {
                            to,
                            body,
                            msg_random,
                            msg_seq,
                            cloud_custom_data,
                            online_only,
                            no_unread,
                            no_last_msg,
                            sender_copy: SenderCopy::Timeline,
                        };
                        // Taken in the order the frames arrived (the lock is
                        // fair and this is the future's first await).
                        let _in_line = match &send_order {
                            Some(order) => Some(order.lock().await),
                            None => None,
                        };
                        let r = services.send(&user, req, Some(conn_id), turn).await?;
                        vec![ServerFrame::SendAck {
                            req_id,
                            msg_key: r.message.msg_key,
                            msg_time: r.message.msg_time,
                            msg_seq: r.message.msg_seq,
                            msg_random: r.message.msg_random,
                            entry: r.sender_entry,
                            duplicate: r.duplicate,
                        }]
                    }
                    ClientFrame::Sync { .. } => {
                        return Err(ServiceError::Internal(
                            "sync is answered by sync_stream".into(),
                        ));
                    }
                    ClientFrame::History {
                        peer,
                        before,
                        count,
                        ..
                    } => {
                        let (messages, complete) =
                            services.history(&user, &peer, before, count).await?;
                        vec![ServerFrame::HistoryPage {
                            req_id,
                            peer,
                            messages,
                            complete,
                        }]
                    }
                    ClientFrame::Conversations { cursor, count, .. } => {
                        let (conversations, next) =
                            services.conversations(&user, cursor, count).await?;
                        vec![ServerFrame::ConversationPage {
                            req_id,
                            conversations,
                            next_cursor: next.unwrap_or(0),
                            complete: next.is_none(),
                        }]
                    }
                    ClientFrame::MarkRead { peer, .. } => {
                        services.mark_read(&user, &peer).await?;
                        vec![ServerFrame::Ok { req_id }]
                    }
                    ClientFrame::Recall { msg_key, .. } => {
                        services.recall(&user, &msg_key).await?;
                        vec![ServerFrame::Ok { req_id }]
                    }
                    ClientFrame::SetProfile { nick, face_url, .. } => {
                        services.set_profile(&user, nick, face_url).await?;
                        vec![ServerFrame::Ok { req_id }]
                    }
                    ClientFrame::Logout { .. } => vec![ServerFrame::Ok { req_id }],
                })
            }
            .await;
            services.metrics().request(kind, started.elapsed());
            r.unwrap_or_else(|e| vec![service_error(req_id, &e)])
        })
        .flat_map(stream::iter),
    )
}
