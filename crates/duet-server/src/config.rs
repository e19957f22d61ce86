//! Runtime settings of the server (the binary fills them from flags, env and `duet.toml`).

use std::net::SocketAddr;
use std::time::Duration;

use duet_usersig::UserSigKey;

/// Settings the services and the gateway use.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:7400` by default; port 0 picks one).
    pub listen: SocketAddr,
    /// App identity used to verify UserSigs.
    pub key: UserSigKey,
    /// App administrators (REST `identifier`), `administrator` by default.
    pub admins: Vec<String>,
    /// Users may recall their own messages for this long (Tencent: 2 minutes).
    pub recall_window: Duration,
    /// Offline entries and roaming history are kept this long; `None` = forever.
    pub retention: Option<Duration>,
    /// How often the retention sweep runs.
    pub sweep_interval: Duration,
    /// Rows removed per sweep statement.
    pub sweep_chunk: u32,
    /// Offline sync hands a device at most this many newest messages per conversation.
    pub sync_per_conversation: u32,
    /// Entries per `sync_batch` frame.
    pub sync_batch: usize,
    /// A connection that sends nothing for this long is closed.
    pub heartbeat_timeout: Duration,
    /// Devices per platform a user may have logged in at once; a new login
    /// beyond this kicks the oldest.
    pub max_devices_per_platform: usize,
    /// Most open client connections.
    pub max_connections: usize,
    /// Frames queued per connection before it counts as a slow consumer and is closed.
    pub outbound_queue: usize,
    /// Requests one connection may have in flight.
    pub max_inflight_per_connection: usize,
    /// WebSocket read/write buffer size per connection, bytes.
    pub ws_buffer: usize,
}

impl ServerConfig {
    /// Defaults for everything but the listen address and the key.
    pub fn new(listen: SocketAddr, key: UserSigKey) -> Self {
        ServerConfig {
            listen,
            key,
            admins: vec!["administrator".into()],
            recall_window: Duration::from_secs(120),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            sweep_interval: Duration::from_secs(60),
            sweep_chunk: 1000,
            sync_per_conversation: 100,
            sync_batch: 200,
            heartbeat_timeout: Duration::from_secs(90),
            max_devices_per_platform: 3,
            max_connections: 1_000_000,
            outbound_queue: 1024,
            max_inflight_per_connection: 64,
            ws_buffer: 1024,
        }
    }
}
