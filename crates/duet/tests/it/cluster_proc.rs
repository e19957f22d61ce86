//! Scale-out with real processes: `duet serve` nodes on PostgreSQL and NATS.
//! These need the PostgreSQL (127.0.0.1:5432) and `nats-server` of the
//! machine; they fail, never skip, when those are missing.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use duet_proto::MsgElem;
use duet_sdk::{Cache, Connection, Event, SendOptions, Session, SessionOptions};
use duet_testkit::{SECRET, fresh_namespace};
use duet_usersig::UserSigKey;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::serve_proc::ServeProc;

fn pg_url() -> String {
    std::env::var("DUET_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

struct Cluster {
    dir: tempfile::TempDir,
    schema: String,
    appid: u64,
    bus: String,
}

impl Cluster {
    fn new(bus: String) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("duet.toml"),
            "heartbeat_timeout_secs = 6\nsync_per_conversation = 100000\n",
        )
        .unwrap();
        let ns = fresh_namespace();
        Cluster {
            schema: format!("duet_it_{}", &ns[1..]),
            appid: 1_500_000_000
                + u64::from_str_radix(&ns[ns.len() - 6..], 16).unwrap() % 1_000_000,
            dir,
            bus,
        }
    }

    fn key(&self) -> UserSigKey {
        UserSigKey::new(self.appid, SECRET)
    }

    fn node(&self, name: &str) -> ServeProc {
        let data = self.dir.path().join(name);
        let cfg = self.dir.path().join("duet.toml");
        let appid = self.appid.to_string();
        let pg = pg_url();
        ServeProc::start(
            &data,
            &[
                "--config",
                cfg.to_str().unwrap(),
                "--store",
                &pg,
                "--pg-schema",
                &self.schema,
                "--bus",
                &self.bus,
                "--node-id",
                name,
                "--sdkappid",
                &appid,
                "--secret-key",
                SECRET,
            ],
        )
    }

    async fn session(
        &self,
        url: &str,
        user: &str,
        device: &str,
        cache: &Cache,
    ) -> (Session, UnboundedReceiver<Event>) {
        Session::start(SessionOptions {
            server: url.into(),
            user: user.into(),
            user_sig: self.key().issue(user, 3600),
            device_id: device.into(),
            platform: device.into(),
            cache: Some(cache.clone()),
        })
        .await
        .expect("session")
    }

    async fn conn(&self, url: &str, user: &str, device: &str) -> Connection {
        let (c, _) = Connection::connect(url).await.expect("connect");
        c.login(user, &self.key().issue(user, 3600), device, "Linux")
            .await
            .expect("login");
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &pg_url(),
                "-q",
                "-c",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Reads events, recording each message key seen, until `want` are all there.
async fn collect(
    ev: &mut UnboundedReceiver<Event>,
    seen: &mut HashMap<String, u32>,
    want: &HashSet<String>,
    limit: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if want.iter().all(|k| seen.contains_key(k)) {
            return true;
        }
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Ok(Some(Event::NewMessage(m))) => *seen.entry(m.msg_key).or_default() += 1,
            Ok(Some(Event::Disconnected)) | Ok(None) => return false,
            Ok(Some(_)) => {}
            Err(_) => return false,
        }
    }
}

async fn send_steadily(alice: Connection, n: u32, gap: Duration) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0..n {
        let opts = SendOptions {
            msg_seq: Some(i),
            msg_random: Some(4242),
            ..Default::default()
        };
        let ack = alice
            .send("bob", vec![MsgElem::text(format!("load {i}"))], opts)
            .await
            .expect("send");
        acked.push(ack.msg_key);
        tokio::time::sleep(gap).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_one_node_under_load_its_clients_resync_elsewhere_and_nothing_is_lost() {
    let c = Cluster::new("nats://127.0.0.1:4222".into());
    let a = c.node("a");
    let b = c.node("b");
    let node_c = c.node("c");
    let phone_cache = Cache::in_memory().unwrap();
    let laptop_cache = Cache::in_memory().unwrap();
    // bob's phone on b, laptop on c; alice sends through a.
    let (_phone, mut phone_ev) = c.session(&b.url, "bob", "phone", &phone_cache).await;
    let (_laptop, mut laptop_ev) = c.session(&node_c.url, "bob", "laptop", &laptop_cache).await;
    let alice = c.conn(&a.url, "alice", "pc").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sender = tokio::spawn(send_steadily(alice, 600, Duration::from_millis(4)));
    tokio::time::sleep(Duration::from_millis(800)).await;
    node_c.kill9();
    // The laptop notices, and reconnects to node b with its cursor.
    let mut laptop_seen: HashMap<String, u32> = HashMap::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), laptop_ev.recv())
            .await
            .expect("laptop notices")
        {
            Some(Event::NewMessage(m)) => *laptop_seen.entry(m.msg_key).or_default() += 1,
            Some(Event::Disconnected) | None => break,
            Some(_) => {}
        }
    }
    let (_laptop2, mut laptop_ev2) = c.session(&b.url, "bob", "laptop", &laptop_cache).await;
    let acked = sender.await.unwrap();
    let want: HashSet<String> = acked.iter().cloned().collect();
    let mut phone_seen = HashMap::new();
    let phone_ok = collect(
        &mut phone_ev,
        &mut phone_seen,
        &want,
        Duration::from_secs(20),
    )
    .await;
    let laptop_ok = collect(
        &mut laptop_ev2,
        &mut laptop_seen,
        &want,
        Duration::from_secs(20),
    )
    .await;
    let lost_phone = want.iter().filter(|k| !phone_seen.contains_key(*k)).count();
    let lost_laptop = want
        .iter()
        .filter(|k| !laptop_seen.contains_key(*k))
        .count();
    eprintln!(
        "acked {}, lost on phone {lost_phone}, lost on laptop {lost_laptop}",
        acked.len()
    );
    assert!(
        phone_ok && laptop_ok,
        "lost: phone {lost_phone}, laptop {lost_laptop}"
    );
    assert!(
        phone_seen.values().all(|n| *n == 1),
        "phone saw a message twice"
    );
    assert!(
        laptop_seen.values().all(|n| *n == 1),
        "laptop saw a message twice"
    );
    assert_eq!(a.terminate().code(), Some(0));
    assert_eq!(b.terminate().code(), Some(0));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server` of our own (so a test may kill and restart it).
struct NatsProc(Child);

impl NatsProc {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NatsProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_nats(port: u16, store_dir: &Path) -> NatsProc {
    let mut nats = NatsProc(
        Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is required (Debian package nats-server)"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return nats;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    nats.kill();
    panic!("nats-server did not start on port {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_run_loses_nothing() {
    let port = free_port();
    let nats_dir = tempfile::tempdir().unwrap();
    let mut nats = start_nats(port, nats_dir.path());
    let c = Cluster::new(format!("nats://127.0.0.1:{port}"));
    let a = c.node("a");
    let b = c.node("b");
    let cache = Cache::in_memory().unwrap();
    let (_bob, mut bob_ev) = c.session(&b.url, "bob", "phone", &cache).await;
    let alice = c.conn(&a.url, "alice", "pc").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sender = tokio::spawn(send_steadily(alice, 300, Duration::from_millis(10)));
    tokio::time::sleep(Duration::from_millis(700)).await;
    nats.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut nats = start_nats(port, nats_dir.path());
    let acked = sender.await.unwrap();
    let want: HashSet<String> = acked.iter().cloned().collect();
    let mut seen = HashMap::new();
    let ok = collect(&mut bob_ev, &mut seen, &want, Duration::from_secs(20)).await;
    let lost = want.iter().filter(|k| !seen.contains_key(*k)).count();
    eprintln!("acked {}, lost {lost}", acked.len());
    assert!(ok, "{lost} messages never reached bob");
    assert!(seen.values().all(|n| *n == 1), "a message arrived twice");
    // And live delivery works again through the restarted NATS.
    let alice = c.conn(&a.url, "alice", "pc2").await;
    let ack = alice
        .send(
            "bob",
            vec![MsgElem::text("after restart")],
            Default::default(),
        )
        .await
        .unwrap();
    let want: HashSet<String> = [ack.msg_key].into_iter().collect();
    assert!(collect(&mut bob_ev, &mut seen, &want, Duration::from_secs(10)).await);
    nats.kill();
}
