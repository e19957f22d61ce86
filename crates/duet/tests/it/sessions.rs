//! Login policy (kick), heartbeat timeout, health, metrics, graceful shutdown.

use std::time::Duration;

use duet_proto::codes;
use duet_sdk::{Event, Push};
use duet_testkit::{TestServer, WAIT};

#[tokio::test]
async fn a_login_beyond_the_policy_kicks_the_oldest_device() {
    let server = TestServer::builder()
        .config(|c| c.max_devices_per_platform = 1)
        .spawn()
        .await;
    let mut old = server
        .client("alice")
        .device("phone-1")
        .platform("Android")
        .connect()
        .await;
    old.until_synced().await;
    let mut web = server
        .client("alice")
        .device("web")
        .platform("Web")
        .connect()
        .await;
    web.until_synced().await;
    let mut new = server
        .client("alice")
        .device("phone-2")
        .platform("Android")
        .connect()
        .await;
    new.until_synced().await;
    let ev = old
        .wait_for(|e| matches!(e, Event::KickedOffline { .. }))
        .await;
    assert!(matches!(ev, Event::KickedOffline { code, .. } if code == codes::KICKED_OFFLINE));
    // The other platform stays; the new device receives messages, the old does not.
    let bob = server.client("bob").connect().await;
    bob.session.send_text("alice", "still here?").await.unwrap();
    assert_eq!(
        new.next_message().await.body[0].as_text().as_deref(),
        Some("still here?")
    );
    assert_eq!(
        web.next_message().await.body[0].as_text().as_deref(),
        Some("still here?")
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_heartbeat_timeout() {
    let server = TestServer::builder()
        .config(|c| c.heartbeat_timeout = Duration::from_millis(300))
        .spawn()
        .await;
    // A raw connection that never pings.
    let (conn, mut pushes) = server.login_raw("idle", "d").await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match pushes.recv().await {
                Some(Push::Closed) | None => return,
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection was not closed");
    assert!(conn.ping().await.is_err());
}

#[tokio::test]
async fn healthz_and_metrics() {
    let server = TestServer::start().await;
    let a = server.client("alice").connect().await;
    let mut b = server.client("bob").connect().await;
    b.until_synced().await;
    a.session.send_text("bob", "count me").await.unwrap();
    b.next_message().await;
    b.session.history("alice", None, 20).await.unwrap();
    let addr = server.url().trim_start_matches("http://").to_string();
    let health = http_get(&addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = http_get(&addr, "/metrics").await;
    assert!(metrics.contains("duet_connections 2"), "{metrics}");
    assert!(metrics.contains("duet_sends_total 1"), "{metrics}");
    assert!(metrics.contains("duet_deliveries_total 1"), "{metrics}");
    let commits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("duet_commit_batch_size_count "))
        .and_then(|v| v.parse().ok())
        .expect("commit batch histogram");
    assert!(commits >= 1, "{metrics}");
    assert!(
        metrics.contains("duet_commit_latency_seconds_bucket{le=\"+Inf\"}"),
        "{metrics}"
    );
    // Requests timed by the server, per kind.
    for (kind, n) in [("send", 1), ("history", 1), ("recall", 0)] {
        let line = format!("duet_request_seconds_count{{kind=\"{kind}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
        let inf = format!("duet_request_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {n}");
        assert!(metrics.contains(&inf), "{inf} in {metrics}");
    }
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Every accepted connection has Nagle off: acks and deliveries are small
/// writes that must not wait for the peer's delayed ACK. The test process is
/// the server, so the server's end of a connection is one of its own sockets.
#[tokio::test]
async fn accepted_connections_have_tcp_nodelay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let addr = server.url().trim_start_matches("http://").to_string();
    let mut client = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // An answer means the server accepted (and configured) the connection.
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    let server_end = nodelay_of_socket_with_peer(client.local_addr().unwrap());
    assert_eq!(server_end, Some(true), "TCP_NODELAY on the accepted socket");
    // The client's own socket (Nagle left at the system default) shows the
    // probe reads the option rather than a constant.
    assert_eq!(
        nodelay_of_socket_with_peer(client.peer_addr().unwrap()),
        Some(false)
    );
}

/// A connection with a one-page read buffer (as the load generator's idle
/// connections have) still reads frames several times that size.
#[tokio::test]
async fn a_small_read_buffer_reads_large_frames() {
    let server = TestServer::start().await;
    let addr = server.url().trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (bob, _pushes) = duet_sdk::Connection::connect_with_stream_sized(&server.url(), tcp, 4096)
        .await
        .unwrap();
    bob.login("bob", &server.sig("bob"), "d", "Linux")
        .await
        .unwrap();
    let alice = server.client("alice").connect().await;
    let texts: Vec<String> = (0..3).map(|i| format!("{i}").repeat(6000)).collect();
    for t in &texts {
        alice.session.send_text("bob", t).await.unwrap();
    }
    // One history frame of ~18 KB, read through the 4 KiB buffer.
    let (page, _) = bob.history("alice", None, 20).await.unwrap();
    let got: Vec<String> = page
        .iter()
        .rev()
        .map(|i| i.message.body[0].as_text().unwrap().to_string())
        .collect();
    assert_eq!(got, texts);
}

/// Whether this process's TCP socket whose peer is `peer` has Nagle off
/// (`None`: no such socket).
fn nodelay_of_socket_with_peer(peer: std::net::SocketAddr) -> Option<bool> {
    use std::os::fd::FromRawFd;
    for entry in std::fs::read_dir("/proc/self/fd").ok()? {
        let entry = entry.ok()?;
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: `fd` is an open socket of this process; `ManuallyDrop`
        // leaves it open (its owner, the server, keeps it).
        let sock = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        if sock.peer_addr().is_ok_and(|a| a == peer) {
            return sock.nodelay().ok();
        }
    }
    None
}

#[tokio::test]
async fn graceful_shutdown_closes_connections_and_keeps_acked_messages() {
    let server = TestServer::start().await;
    let mut bob = server.client("bob").connect().await;
    bob.until_synced().await;
    let alice = server.client("alice").connect().await;
    let ack = alice
        .session
        .send_text("bob", "before shutdown")
        .await
        .unwrap();
    let dir = server.stop().await;
    let ev = bob.wait_for(|e| matches!(e, Event::Disconnected)).await;
    assert_eq!(ev, Event::Disconnected);
    let server = TestServer::builder().data_dir(dir).spawn().await;
    let (conn, _) = server.login_raw("bob", "other").await;
    let (page, _) = conn.history("alice", None, 10).await.unwrap();
    assert_eq!(page[0].message.msg_key, ack.msg_key);
}

/// The default idle timeout (90 s), checked on paused time: no real waiting.
#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_after_the_default_heartbeat_timeout() {
    let server = TestServer::start().await;
    let start = tokio::time::Instant::now();
    let (conn, mut pushes) = server.raw().await;
    loop {
        match pushes.recv().await {
            Some(Push::Closed) | None => break,
            Some(_) => {}
        }
    }
    let idle = start.elapsed();
    assert!(idle >= Duration::from_secs(90), "closed after {idle:?}");
    assert!(idle < Duration::from_secs(120), "closed after {idle:?}");
    assert!(conn.ping().await.is_err());
}
