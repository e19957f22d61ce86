//! `duet serve`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use duet_bus_nats::NatsBus;
use duet_server::{Hub, Metrics, SystemClock};
use duet_store::Store;
use duet_store_postgres::{PgOptions, PostgresStore};
use duet_store_sqlite::{SqliteOptions, SqliteStore};

use crate::settings::{self, AppFlags};

/// Flags of `duet serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "DUET_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// `sqlite` (default) or a `postgres://` URL.
    #[arg(long, env = "DUET_STORE")]
    pub store: Option<String>,
    /// Cross-node bus: a `nats://` URL (default: none, single node).
    #[arg(long, env = "DUET_BUS")]
    pub bus: Option<String>,
    /// PostgreSQL schema to use (created if missing; default: the connection's search_path).
    #[arg(long, env = "DUET_PG_SCHEMA")]
    pub pg_schema: Option<String>,
    /// This node's id on the bus (default: random).
    #[arg(long, env = "DUET_NODE_ID")]
    pub node_id: Option<String>,
}

pub async fn run(app: AppFlags, args: ServeArgs) -> Result<std::process::ExitCode> {
    let file = settings::load_file(&app)?;
    let data = settings::data_dir(&app, &file);
    let store_kind = args
        .store
        .or(file.store.clone())
        .unwrap_or_else(|| "sqlite".into());
    if store_kind != "sqlite"
        && !store_kind.starts_with("postgres://")
        && !store_kind.starts_with("postgresql://")
    {
        bail!("--store must be `sqlite` or a postgres:// URL, not {store_kind:?}");
    }
    let bus_url = args
        .bus
        .or(file.bus.clone())
        .filter(|b| !b.is_empty() && b != "none");
    let node_id = args
        .node_id
        .or(file.node_id.clone())
        .unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let (key, created) = settings::server_key(&app, &file, &data)?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400)));
    let config = settings::server_config(listen, key.clone(), &file);
    let metrics = Arc::new(Metrics::default());
    let store = if store_kind == "sqlite" {
        StoreHandle::Sqlite(Arc::new(
            SqliteStore::open(SqliteOptions {
                observer: Some(metrics.clone()),
                ..SqliteOptions::new(data.join("duet.sqlite"))
            })
            .with_context(|| format!("opening the store in {}", data.display()))?,
        ))
    } else {
        StoreHandle::Postgres(Arc::new(
            PostgresStore::connect(PgOptions {
                observer: Some(metrics.clone()),
                schema: args.pg_schema.clone().or(file.pg_schema.clone()),
                ..PgOptions::new(store_kind.clone())
            })
            .await
            .context("connecting to PostgreSQL")?,
        ))
    };
    let hub = Arc::new(Hub::new(metrics.clone(), config.max_devices_per_platform));
    let _bus = match &bus_url {
        Some(url) => {
            let bus = Arc::new(
                NatsBus::connect(url, &key.sdkappid().to_string(), &node_id, hub.clone()).await?,
            );
            hub.set_bus(bus.clone());
            eprintln!("node {node_id} joined the bus at {url}");
            Some(bus)
        }
        None => None,
    };
    // With PostgreSQL, nodes share presence (which devices are where).
    let (_presence_stop, presence_rx) = tokio::sync::watch::channel(false);
    let clock: Arc<dyn duet_server::Clock> = Arc::new(SystemClock);
    let shared_presence = match &store {
        StoreHandle::Postgres(pg) => {
            let (sink, _task) = duet_server::presence::start_reporter(
                pg.clone(),
                &node_id,
                clock.clone(),
                PRESENCE_INTERVAL,
                presence_rx,
            )
            .await
            .context("starting shared presence")?;
            hub.set_presence(sink);
            Some(duet_server::presence::SharedPresence {
                store: pg.clone(),
                ttl: PRESENCE_TTL,
            })
        }
        StoreHandle::Sqlite(_) => None,
    };
    let handle = duet_server::start_with_hub(config, store.dyn_store(), clock, metrics, hub)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    if let Some(p) = shared_presence {
        handle.services().set_shared_presence(p);
    }
    let addr = handle.local_addr();
    if created {
        eprintln!(
            "created a new app identity in {}",
            data.join("identity.toml").display()
        );
    }
    eprintln!(
        "duet listening on http://{addr} (SDKAppID {}, data in {})",
        key.sdkappid(),
        data.display()
    );
    eprintln!("get a UserSig with: duet usersig USER   (client WebSocket: ws://{addr}/ws)");
    println!("listening on {addr}");
    shutdown_signal().await;
    eprintln!("shutting down: finishing in-flight commits");
    handle.shutdown().await;
    store.close().await;
    eprintln!("stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How often a node reports its devices (and that it is alive).
const PRESENCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// A node silent this long counts as dead: its devices are offline.
const PRESENCE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

enum StoreHandle {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PostgresStore>),
}

impl StoreHandle {
    fn dyn_store(&self) -> Arc<dyn Store> {
        match self {
            StoreHandle::Sqlite(s) => s.clone(),
            StoreHandle::Postgres(s) => s.clone(),
        }
    }

    async fn close(&self) {
        match self {
            StoreHandle::Sqlite(s) => s.close(),
            StoreHandle::Postgres(s) => s.close().await,
        }
    }
}
