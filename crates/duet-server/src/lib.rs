//! The Duet server: services, connection hub, WebSocket gateway and the
//! HTTP edge (`/ws`, `/healthz`, `/metrics`), on one port.
//!
//! Layering (Law 8): [`gateway`] (transport) → [`service`] → `duet_store::Store`.

pub mod bus;
pub mod clock;
pub mod config;
pub mod error;
pub mod gateway;
pub mod hub;
pub mod metrics;
pub mod order;
pub mod presence;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use duet_proto::limits;
use duet_store::Store;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use bus::{Bus, LocalDelivery};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::ServerConfig;
pub use error::ServiceError;
pub use hub::Hub;
pub use metrics::Metrics;
pub use service::{SendRequest, SendResult, Services};

#[derive(Clone)]
struct AppState {
    services: Arc<Services>,
    shutdown: watch::Receiver<bool>,
    ready: Arc<AtomicBool>,
    /// Each connection task holds a clone; shutdown waits for all to drop.
    conns: mpsc::Sender<()>,
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    services: Arc<Services>,
    shutdown_tx: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    http: JoinHandle<()>,
    sweeper: JoinHandle<()>,
    conns_rx: mpsc::Receiver<()>,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The services (tests and the binary use them directly).
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Graceful shutdown: stop accepting, let connections finish the requests
    /// they took (their commits complete), close them, stop background work.
    /// The caller closes the store afterwards.
    pub async fn shutdown(mut self) {
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.conns_rx.recv()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.http).await;
        self.sweeper.abort();
    }
}

/// Starts a single node on `config.listen` with `store`.
pub async fn start(
    config: ServerConfig,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> std::io::Result<ServerHandle> {
    let hub = Arc::new(Hub::new(metrics.clone(), config.max_devices_per_platform));
    start_with_hub(config, store, clock, metrics, hub).await
}

/// Starts a node with a hub made by the caller (who may have connected it
/// to a [`Bus`] with [`Hub::set_bus`]).
pub async fn start_with_hub(
    config: ServerConfig,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    hub: Arc<Hub>,
) -> std::io::Result<ServerHandle> {
    // A deep accept backlog: logins arrive in bursts (mio's default is 128).
    let socket = if config.listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(config.listen)?;
    let listener: TcpListener = socket.listen(4096)?;
    let addr = listener.local_addr()?;
    // No Nagle: an ack or a delivery is a small write that must leave now;
    // with Nagle on, one written while an earlier one is unacknowledged
    // waits for the peer's delayed ACK (40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
    });
    let config = Arc::new(config);
    let services = Arc::new(Services::new(store, hub, clock, config.clone(), metrics));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (conns_tx, conns_rx) = mpsc::channel(1);
    let ready = Arc::new(AtomicBool::new(true));
    let state = AppState {
        services: services.clone(),
        shutdown: shutdown_rx.clone(),
        ready: ready.clone(),
        conns: conns_tx,
    };
    let app = Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let mut graceful = shutdown_rx.clone();
    let http = tokio::spawn(async move {
        let r = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = graceful.changed().await;
        })
        .await;
        if let Err(e) = r {
            tracing::error!("http server failed: {e}");
        }
    });
    let sweeper = tokio::spawn(sweep_loop(services.clone(), shutdown_rx));
    Ok(ServerHandle {
        addr,
        services,
        shutdown_tx,
        ready,
        http,
        sweeper,
        conns_rx,
    })
}

async fn sweep_loop(services: Arc<Services>, mut shutdown: watch::Receiver<bool>) {
    let interval = services.config().sweep_interval;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match services.sweep_once().await {
            Ok(r) if r.total() > 0 => tracing::info!(
                entries = r.entries,
                messages = r.messages,
                conversations = r.conversations,
                "retention sweep"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("retention sweep failed: {e}"),
        }
    }
}

async fn ws_upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    if *state.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let buf = state.services.config().ws_buffer;
    // Frames queue in the write buffer until it holds `WS_WRITE_BATCH`
    // bytes or the gateway flushes: one `send` for a batch of frames.
    ws.read_buffer_size(buf)
        .write_buffer_size(WS_WRITE_BATCH)
        .max_write_buffer_size(limits::MAX_FRAME_BYTES * 64)
        .max_message_size(limits::MAX_FRAME_BYTES)
        .max_frame_size(limits::MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            let _guard = state.conns.clone();
            gateway::serve_socket(socket, state.services.clone(), state.shutdown.clone()).await;
        })
}

/// Bytes of WebSocket frames gathered before a write to the socket (the
/// gateway flushes after each batch of ready frames anyway). The buffer
/// grows only as frames are queued, so an idle connection keeps no more
/// than the last frame it was sent.
const WS_WRITE_BATCH: usize = 16 * 1024;

async fn healthz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.services.metrics().render(),
    )
        .into_response()
}
