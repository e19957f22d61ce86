//! Test harness: `TestServer::builder().spawn()` starts a real server on
//! `127.0.0.1:0` with a temp data dir; `server.client("alice").connect()`
//! logs in a real SDK session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use duet_bus_nats::NatsBus;
use duet_proto::Message;
use duet_sdk::{Cache, Connection, Event, Push, Session, SessionOptions};
use duet_server::presence::{SharedPresence, start_reporter};
use duet_server::{Clock, Hub, ManualClock, Metrics, ServerConfig, ServerHandle, SystemClock};
use duet_store::{PresenceStore, Store};
use duet_store_postgres::{PgOptions, PostgresStore};
use duet_store_sqlite::{SqliteOptions, SqliteStore};
use duet_usersig::UserSigKey;
use tokio::sync::mpsc;

/// The app identity every test server uses.
pub const SDKAPPID: u64 = 1_400_000_000;
/// Its secret key.
pub const SECRET: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

/// How long a test waits for an expected event before failing.
pub const WAIT: Duration = Duration::from_secs(10);

/// Builds a test server.
pub struct TestServerBuilder {
    config: ServerConfig,
    clock: Option<ManualClock>,
    dir: Option<tempfile::TempDir>,
    shared_store: Option<Arc<dyn Store>>,
    bus: Option<(String, String, String)>,
    presence: Option<(Arc<dyn PresenceStore>, String)>,
}

impl TestServerBuilder {
    /// Use this clock (tests that move time).
    pub fn clock(mut self, c: ManualClock) -> Self {
        self.clock = Some(c);
        self
    }
    /// Reuse a data dir (restart tests).
    pub fn data_dir(mut self, d: tempfile::TempDir) -> Self {
        self.dir = Some(d);
        self
    }
    /// Use a store shared with other nodes (cluster tests); the caller closes it.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.shared_store = Some(store);
        self
    }
    /// Join the NATS bus at `url` in `namespace` as `node_id`.
    pub fn bus(mut self, url: &str, namespace: &str, node_id: &str) -> Self {
        self.bus = Some((url.into(), namespace.into(), node_id.into()));
        self
    }
    /// Report this node's devices to shared presence as `node_id`
    /// (reports every 200 ms; nodes silent for 2 s count as dead).
    pub fn presence(mut self, store: Arc<dyn PresenceStore>, node_id: &str) -> Self {
        self.presence = Some((store, node_id.into()));
        self
    }
    /// Changes any setting.
    pub fn config(mut self, f: impl FnOnce(&mut ServerConfig)) -> Self {
        f(&mut self.config);
        self
    }
    /// Starts it.
    pub async fn spawn(self) -> TestServer {
        let dir = match self.dir {
            Some(d) => d,
            None => tempfile::tempdir().expect("temp dir"),
        };
        let metrics = Arc::new(Metrics::default());
        let (store, owned): (Arc<dyn Store>, Option<Arc<SqliteStore>>) = match self.shared_store {
            Some(s) => (s, None),
            None => {
                let s = Arc::new(
                    SqliteStore::open(SqliteOptions {
                        observer: Some(metrics.clone()),
                        ..SqliteOptions::new(dir.path().join("duet.sqlite"))
                    })
                    .expect("open store"),
                );
                (s.clone(), Some(s))
            }
        };
        let clock: Arc<dyn Clock> = match &self.clock {
            Some(c) => Arc::new(c.clone()),
            None => Arc::new(SystemClock),
        };
        let hub = Arc::new(Hub::new(
            metrics.clone(),
            self.config.max_devices_per_platform,
        ));
        let bus = match self.bus {
            Some((url, ns, node)) => {
                let bus = Arc::new(
                    NatsBus::connect(&url, &ns, &node, hub.clone())
                        .await
                        .unwrap_or_else(|e| panic!("NATS is required for this test: {e}")),
                );
                hub.set_bus(bus.clone());
                Some(bus)
            }
            None => None,
        };
        let (presence_stop, presence_rx) = tokio::sync::watch::channel(false);
        let mut presence_task = None;
        let shared = match self.presence {
            Some((pstore, node)) => {
                let (sink, task) = start_reporter(
                    pstore.clone(),
                    &node,
                    clock.clone(),
                    Duration::from_millis(200),
                    presence_rx,
                )
                .await
                .expect("presence start");
                hub.set_presence(sink);
                presence_task = Some(task);
                Some(SharedPresence {
                    store: pstore,
                    ttl: Duration::from_secs(2),
                })
            }
            None => None,
        };
        let handle = duet_server::start_with_hub(self.config, store.clone(), clock, metrics, hub)
            .await
            .expect("start server");
        if let Some(p) = shared {
            handle.services().set_shared_presence(p);
        }
        TestServer {
            handle: Some(handle),
            _presence_stop: presence_stop,
            presence_task,
            owned,
            _bus: bus,
            dir: Some(dir),
            key: UserSigKey::new(SDKAPPID, SECRET),
            clock: self.clock,
        }
    }
}

/// A running server.
pub struct TestServer {
    handle: Option<ServerHandle>,
    _presence_stop: tokio::sync::watch::Sender<bool>,
    presence_task: Option<tokio::task::JoinHandle<()>>,
    owned: Option<Arc<SqliteStore>>,
    _bus: Option<Arc<NatsBus>>,
    dir: Option<tempfile::TempDir>,
    key: UserSigKey,
    clock: Option<ManualClock>,
}

impl TestServer {
    /// A builder with test defaults (port 0, the test key).
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            config: ServerConfig::new(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                UserSigKey::new(SDKAPPID, SECRET),
            ),
            clock: None,
            dir: None,
            shared_store: None,
            bus: None,
            presence: None,
        }
    }

    /// Starts one with defaults.
    pub async fn start() -> TestServer {
        Self::builder().spawn().await
    }

    fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("server running")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.handle().local_addr())
    }

    /// The services (to drive sweeps etc. directly).
    pub fn services(&self) -> &Arc<duet_server::Services> {
        self.handle().services()
    }

    /// The manual clock, if the builder was given one.
    pub fn clock(&self) -> &ManualClock {
        self.clock
            .as_ref()
            .expect("builder was given a ManualClock")
    }

    /// A UserSig for `user`, issued at the server clock's time.
    pub fn sig(&self, user: &str) -> String {
        let now = self.services().clock().now_secs();
        self.key.issue_at(user, now, 86_400)
    }

    /// The app key.
    pub fn key(&self) -> &UserSigKey {
        &self.key
    }

    /// Starts building a client.
    pub fn client(&self, user: &str) -> ClientBuilder<'_> {
        ClientBuilder {
            server: self,
            user: user.into(),
            device: "dev-1".into(),
            platform: "Linux".into(),
            cache: None,
        }
    }

    /// A protocol-level connection, not logged in, with its pushes.
    pub async fn raw(&self) -> (Connection, mpsc::UnboundedReceiver<Push>) {
        Connection::connect(&self.url()).await.expect("connect")
    }

    /// A logged-in protocol-level connection.
    pub async fn login_raw(
        &self,
        user: &str,
        device: &str,
    ) -> (Connection, mpsc::UnboundedReceiver<Push>) {
        let (c, p) = self.raw().await;
        c.login(user, &self.sig(user), device, "Linux")
            .await
            .expect("login");
        (c, p)
    }

    /// Stops reporting to shared presence, as if this node had died (its
    /// connections stay open).
    pub fn stop_presence(&mut self) {
        if let Some(t) = self.presence_task.take() {
            t.abort();
        }
    }

    /// Graceful stop; returns the data dir for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
        if let Some(s) = &self.owned {
            s.close();
        }
        self.dir.take().expect("dir")
    }
}

/// Builds a client.
pub struct ClientBuilder<'a> {
    server: &'a TestServer,
    user: String,
    device: String,
    platform: String,
    cache: Option<Cache>,
}

impl ClientBuilder<'_> {
    /// Device id.
    pub fn device(mut self, d: &str) -> Self {
        self.device = d.into();
        self
    }
    /// Platform.
    pub fn platform(mut self, p: &str) -> Self {
        self.platform = p.into();
        self
    }
    /// Keep the cursor in this cache.
    pub fn cache(mut self, c: Cache) -> Self {
        self.cache = Some(c);
        self
    }
    /// Logs in and starts the session.
    pub async fn connect(self) -> TestClient {
        let (session, events) = Session::start(SessionOptions {
            server: self.server.url(),
            user: self.user.clone(),
            user_sig: self.server.sig(&self.user),
            device_id: self.device,
            platform: self.platform,
            cache: self.cache,
        })
        .await
        .expect("session start");
        TestClient { session, events }
    }
}

/// A logged-in SDK session and its events.
pub struct TestClient {
    /// The session.
    pub session: Session,
    /// Its events.
    pub events: mpsc::UnboundedReceiver<Event>,
}

impl TestClient {
    /// The next event (fails the test after [`WAIT`]).
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("timed out waiting for an event")
            .expect("event channel closed")
    }

    /// Skips events until `SyncFinished`; returns the messages reported before it.
    pub async fn until_synced(&mut self) -> Vec<Message> {
        let mut msgs = Vec::new();
        loop {
            match self.next().await {
                Event::SyncFinished => return msgs,
                Event::NewMessage(m) => msgs.push(m),
                _ => {}
            }
        }
    }

    /// The next `NewMessage`, skipping other events.
    pub async fn next_message(&mut self) -> Message {
        loop {
            if let Event::NewMessage(m) = self.next().await {
                return m;
            }
        }
    }

    /// Waits for an event matching `f`, skipping others.
    pub async fn wait_for(&mut self, mut f: impl FnMut(&Event) -> bool) -> Event {
        loop {
            let e = self.next().await;
            if f(&e) {
                return e;
            }
        }
    }

    /// No event arrives within `d`.
    pub async fn expect_quiet(&mut self, d: Duration) {
        if let Ok(Some(e)) = tokio::time::timeout(d, self.events.recv()).await {
            panic!("expected no event, got {e:?}");
        }
    }
}

/// The NATS server tests use (`DUET_TEST_NATS_URL`, default the local one).
pub fn nats_url() -> String {
    std::env::var("DUET_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A fresh bus namespace, so concurrent tests never see each other's traffic.
pub fn fresh_namespace() -> String {
    format!("t{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The PostgreSQL server tests use (`DUET_TEST_PG_URL`, default the local one).
pub fn pg_url() -> String {
    std::env::var("DUET_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Several nodes joined by the NATS bus, each with its own connection pool
/// to one PostgreSQL schema (dropped at the end).
pub struct TestCluster {
    /// The nodes.
    pub nodes: Vec<TestServer>,
    schema: String,
}

impl TestCluster {
    /// Starts `n` nodes on a fresh PostgreSQL schema and a fresh bus namespace.
    pub async fn start(n: usize) -> TestCluster {
        let ns = fresh_namespace();
        let schema = format!("duet_cluster_{}", &ns[1..]);
        let mut nodes = Vec::new();
        for i in 0..n {
            let store = PostgresStore::connect(PgOptions {
                schema: Some(schema.clone()),
                ..PgOptions::new(pg_url())
            })
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is required for this test: {e}"));
            let store = Arc::new(store);
            nodes.push(
                TestServer::builder()
                    // Short heartbeats: a hint published before another node's
                    // subscription was in place heals within a second.
                    .config(|c| c.heartbeat_timeout = Duration::from_secs(3))
                    .shared_store(store.clone())
                    .presence(store, &format!("node{i}"))
                    .bus(&nats_url(), &ns, &format!("node{i}"))
                    .spawn()
                    .await,
            );
        }
        TestCluster { nodes, schema }
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &TestServer {
        &self.nodes[i]
    }

    /// Node `i`, mutably.
    pub fn node_mut(&mut self, i: usize) -> &mut TestServer {
        &mut self.nodes[i]
    }

    /// Stops the nodes and drops the schema.
    pub async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
        if let Ok((client, conn)) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
                .await;
        }
    }
}
