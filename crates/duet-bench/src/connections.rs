//! `connections`: N logged-in idle connections. Login rate and latency,
//! server RSS per connection.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use duet_sdk::{Connection, SdkError};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::client::{DEVICE, PLATFORM, Target, error_kind};
use crate::procstat::{self, CpuSample, rss_kib};
use crate::report::Summary;
use crate::stats::Recorder;

/// Shape of a connections run.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// Connections to open.
    pub count: usize,
    /// Connects + logins in flight at once.
    pub concurrency: usize,
    /// After the last login: wait this long, then read the server's RSS.
    pub settle: Duration,
    /// Keep all connections open this long after the last login (≥ settle).
    pub hold: Duration,
    /// Server process.
    pub server_pid: Option<u32>,
    /// Source addresses to spread the connections over (127.0.0.1, .2, …);
    /// 1: let the kernel choose (plain `Connection::connect`).
    pub source_addrs: usize,
}

/// Connects from `src` (port chosen at connect time, per 4-tuple) to `dst`,
/// then runs the WebSocket handshake on that stream through the SDK.
async fn connect_bound(
    server: &str,
    dst: std::net::SocketAddr,
    src: std::net::IpAddr,
) -> Result<
    (
        Connection,
        tokio::sync::mpsc::UnboundedReceiver<duet_sdk::Push>,
    ),
    SdkError,
> {
    use std::os::fd::AsRawFd;
    let io = |e: std::io::Error| SdkError::Io(format!("{src} -> {dst}: {e}"));
    let sock = tokio::net::TcpSocket::new_v4().map_err(io)?;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    // IP_BIND_ADDRESS_NO_PORT defers the port choice to connect(), where only
    // the 4-tuple must be unique: each source address has the whole port range.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.bind(std::net::SocketAddr::new(src, 0)).map_err(io)?;
    let tcp = sock.connect(dst).await.map_err(io)?;
    tcp.set_nodelay(true).map_err(io)?;
    // Idle connections receive small frames only: a page of read buffer
    // each, not the SDK's 16 KiB (19,000 of those cost the generator more
    // page faults than its logins cost it).
    Connection::connect_with_stream_sized(server, tcp, IDLE_READ_BUFFER).await
}

/// Read buffer of each idle connection, in bytes.
const IDLE_READ_BUFFER: usize = 4096;

/// The server's socket address, from its base URL (an IP literal or `localhost`).
fn server_addr(server: &str) -> Option<std::net::SocketAddr> {
    let hostport = server
        .split("://")
        .nth(1)
        .unwrap_or(server)
        .split('/')
        .next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let ip: std::net::IpAddr = if host == "localhost" {
        std::net::Ipv4Addr::LOCALHOST.into()
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?
    };
    Some(std::net::SocketAddr::new(ip, port))
}

struct Opened {
    result: Result<Connection, SdkError>,
    connect: Duration,
    login: Duration,
}

async fn open(
    server: &str,
    bind: Option<(std::net::SocketAddr, std::net::IpAddr)>,
    user: String,
    sig: String,
) -> Opened {
    let t0 = Instant::now();
    let connected = match bind {
        Some((dst, src)) => connect_bound(server, dst, src).await,
        None => Connection::connect(server).await,
    };
    let conn = match connected {
        Ok((c, _pushes)) => c, // idle: pushes are not read (none are expected)
        Err(e) => {
            return Opened {
                result: Err(e),
                connect: t0.elapsed(),
                login: Duration::ZERO,
            };
        }
    };
    let t1 = Instant::now();
    let result = conn.login(&user, &sig, DEVICE, PLATFORM).await;
    let login = t1.elapsed();
    let result = result.map(|info| {
        conn.start_heartbeat(Duration::from_secs((info.heartbeat_timeout / 3).max(1)));
        conn
    });
    Opened {
        result,
        connect: t1.duration_since(t0),
        login,
    }
}

/// Ephemeral ports the kernel hands out per source address.
fn ephemeral_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    let (Some(Some(lo)), Some(Some(hi))) = (it.next(), it.next()) else {
        return None;
    };
    Some(hi.saturating_sub(lo) + 1)
}

/// Runs the scenario.
pub async fn run(target: &Target, spec: &ConnSpec, s: &mut Summary) -> Result<()> {
    let nofile = procstat::raise_nofile();
    let need = spec.count as u64 + 64;
    if nofile < need {
        bail!(
            "this process may open {nofile} files but {} connections need about {need}: raise the hard limit (ulimit -Hn)",
            spec.count
        );
    }
    let sources = spec.source_addrs.clamp(1, 250);
    let dst = server_addr(target.first_server());
    if sources > 1 && dst.is_none() {
        bail!("--source-addrs needs the server URL to name an IP address or localhost");
    }
    if let Some(ports) = ephemeral_ports()
        && spec.count as u64 > ports * sources as u64
    {
        bail!(
            "{} connections from {sources} source address(es) exceed the {ports} ephemeral ports of each \
             (ip_local_port_range): use more --source-addrs",
            spec.count
        );
    }
    let srcs: Vec<std::net::IpAddr> = (0..sources)
        .map(|i| std::net::Ipv4Addr::new(127, 0, 0, 1 + i as u8).into())
        .collect();
    if let Some(pid) = spec.server_pid
        && let Some(lim) = procstat::nofile_of(pid)
        && lim < need
    {
        s.notes.push(format!(
            "the server may open only {lim} files: expect failures past ~{} connections",
            lim.saturating_sub(32)
        ));
    }

    // Sign first: a real client comes with its UserSig.
    let users: Vec<(String, String)> = (0..spec.count)
        .map(|i| {
            let u = target.user("c", i);
            let sig = target.sig(&u);
            (u, sig)
        })
        .collect();

    let rss_before = rss_kib(spec.server_pid);
    let cpu0 = (CpuSample::take(spec.server_pid), CpuSample::take(None));
    let t0 = Instant::now();
    let mut conns: Vec<Connection> = Vec::with_capacity(spec.count);
    let mut total = Recorder::new();
    let mut rtt = Recorder::new();
    let mut failures = 0u64;
    let mut pending = FuturesUnordered::new();
    let mut it = users.into_iter().enumerate();
    loop {
        while pending.len() < spec.concurrency.max(1) {
            let Some((i, (u, sig))) = it.next() else {
                break;
            };
            let bind = match (sources > 1, dst, srcs.get(i % sources)) {
                (true, Some(d), Some(s)) => Some((d, *s)),
                _ => None,
            };
            pending.push(open(target.first_server(), bind, u, sig));
        }
        let Some(o) = pending.next().await else { break };
        match o.result {
            Ok(c) => {
                total.record(o.connect + o.login);
                rtt.record(o.login);
                conns.push(c);
            }
            Err(e) => {
                failures += 1;
                *s.errors.entry(error_kind(&e)).or_default() += 1;
            }
        }
    }
    let login_secs = t0.elapsed().as_secs_f64();
    let cpu1 = (CpuSample::take(spec.server_pid), CpuSample::take(None));

    tokio::time::sleep(spec.settle).await;
    let rss_after = rss_kib(spec.server_pid);
    let client_rss = rss_kib(None);
    tokio::time::sleep(spec.hold.saturating_sub(spec.settle)).await;
    let closed = conns.iter().filter(|c| c.is_closed()).count() as u64;

    let ok = conns.len() as u64;
    s.measured_secs = login_secs;
    s.connections = Some(ok - closed);
    s.failures = Some(failures + closed);
    if closed > 0 {
        *s.errors
            .entry("closed by the server during the hold".into())
            .or_default() += closed;
    }
    s.logins_per_sec = Some(ok as f64 / login_secs.max(1e-9));
    s.login_latency_ms = total.summary();
    s.login_rtt_ms = rtt.summary();
    s.server_rss_before_kib = rss_before;
    s.server_rss_kib = rss_after;
    if let (Some(a), Some(b)) = (rss_before, rss_after)
        && ok > 0
    {
        s.rss_per_conn_kib = Some((b as f64 - a as f64) / ok as f64);
    }
    s.client_rss_kib = client_rss;
    if let (Some(a), Some(b)) = (&cpu0.0, &cpu1.0) {
        s.server_cpu_pct = Some(a.pct_until(b));
    }
    if let (Some(a), Some(b)) = (&cpu0.1, &cpu1.1) {
        s.client_cpu_pct = Some(a.pct_until(b));
    }
    if sources == 1 && spec.count > 5_000 {
        s.notes.push(
            "one source address: the kernel's ephemeral-port search in connect() grows with the connections \
             open (use --source-addrs 8)"
                .into(),
        );
    }
    // Close politely so the server does not hold them until the idle timeout.
    for c in &conns {
        c.close().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(
            server_addr("http://127.0.0.1:7400"),
            Some(([127, 0, 0, 1], 7400).into())
        );
        assert_eq!(
            server_addr("ws://localhost:81/ws"),
            Some(([127, 0, 0, 1], 81).into())
        );
        assert!(server_addr("http://[::1]:7400").is_some());
        assert_eq!(server_addr("http://127.0.0.1"), None);
    }
}
