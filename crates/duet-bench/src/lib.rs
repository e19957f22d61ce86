//! `duet bench`: a load generator for a Duet server, built on the SDK's
//! protocol layer ([`duet_sdk::Connection`]).
//!
//! Scenarios (each bounded in count and time; it stops by itself):
//! - `connections --count N`: N logged-in idle connections; login rate and
//!   latency, server RSS per connection;
//! - `online --users U --rate R --duration S`: U users in pairs sending to
//!   each other, open loop at R msgs/s in all (or `--rate max`: closed loop
//!   with a window); throughput, end-to-end latency from a timestamp carried
//!   in each message, lost / duplicated / out-of-order, CPU;
//! - `offline --messages M --conversations C`: a user comes back to M
//!   messages; login → `sync_finished`;
//! - `history --pages P`: history page latency under a background load.
//!
//! The generator runs on one thread (a current-thread Tokio runtime), so on
//! a two-core machine the server gets the other core. See
//! `docs/benchmarks.md` for the method and the figures.

mod client;
mod connections;
mod fill;
mod history;
mod load;
mod offline;
mod online;
mod procstat;
mod report;
mod scrape;
mod stats;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use duet_usersig::UserSigKey;
use serde_json::json;

pub use load::Rate;
pub use report::Summary;
pub use stats::Latency;

/// Flags of `duet bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Server base URL (loopback only). `online` and `history` also take a comma-separated
    /// list of the nodes of one cluster and spread the users over them round-robin.
    #[arg(long, global = true, default_value = "http://127.0.0.1:7400")]
    pub server: String,
    /// SDKAppID (the generator signs its own UserSigs).
    #[arg(long, global = true)]
    pub sdkappid: Option<u64>,
    /// App secret key.
    #[arg(long, global = true, hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Server PID, for its CPU and RSS (default: the process listening on the server's port).
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Print one JSON summary line instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
    /// UserID prefix of the bench users.
    #[arg(long, global = true, default_value = "bench")]
    pub prefix: String,
    /// Give up after this many seconds, whatever the scenario.
    #[arg(long, global = true, default_value_t = 300)]
    pub max_secs: u64,
}

/// A bench scenario.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Scenario {
    /// N logged-in idle connections: login rate and latency, server RSS per connection.
    Connections {
        /// Connections to open (each costs one file descriptor here and one in the server).
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Connects + logins in flight at once (keep it under the server's listen backlog,
        /// 128 with Tokio's default listener, or dropped SYNs add 1 s to some logins).
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// Seconds after the last login before the server's RSS is read.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
        /// Seconds all connections stay open after the last login (then they close).
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
        /// Spread the connections over this many source addresses 127.0.0.1, .2, …
        /// (1: the kernel picks; its port search slows down past ~10,000 connections).
        #[arg(long, default_value_t = 8)]
        source_addrs: usize,
    },
    /// U online users in pairs: throughput, end-to-end latency, lost/duplicated/out-of-order, CPU.
    Online {
        /// Users (even: they send in pairs, each to its partner).
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Messages per second in all (open loop), or `max` (closed loop with --window).
        #[arg(long, default_value = "10000")]
        rate: Rate,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds sent before measuring.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// With `--rate max`: sends in flight per user.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Seconds to wait at the end for acks and deliveries.
        #[arg(long, default_value_t = 5.0)]
        grace: f64,
        /// Extra text bytes per message (a TIMTextElem).
        #[arg(long, default_value_t = 0)]
        payload: usize,
        /// Send this many messages in all, then stop (a fixed amount of work,
        /// e.g. to count the server's instructions per message); `--duration`
        /// still caps the run.
        #[arg(long)]
        messages: Option<u64>,
    },
    /// A user comes back to M messages over C conversations: login → sync finished.
    Offline {
        /// Messages waiting.
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
        /// Conversations they are spread over.
        #[arg(long, default_value_t = 100)]
        conversations: u64,
        /// Sends in flight per sender while writing them.
        #[arg(long, default_value_t = 16)]
        window: usize,
    },
    /// History page latency while a background load is sent.
    History {
        /// Pages to read (one at a time).
        #[arg(long, default_value_t = 2000)]
        pages: u64,
        /// Pages per second, evenly spaced (0: back to back).
        #[arg(long, default_value_t = 200.0)]
        page_rate: f64,
        /// Messages per page.
        #[arg(long, default_value_t = 20)]
        page_size: u32,
        /// Messages in the conversation paged through (written first).
        #[arg(long, default_value_t = 2000)]
        seed: u64,
        /// Background messages per second in all, or `max`.
        #[arg(long, default_value = "10000")]
        rate: Rate,
        /// Background users (even).
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Seconds of background load before paging starts.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Stop paging after this many seconds even if pages remain.
        #[arg(long, default_value_t = 60.0)]
        max_paging: f64,
    },
}

fn secs(v: f64, name: &str) -> Result<Duration> {
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        bail!("--{name} must be between 0 and 86400 seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

fn load_spec(
    rate: Rate,
    window: usize,
    warmup: Duration,
    duration: Duration,
    grace: Duration,
    payload: usize,
    server_pid: Option<u32>,
) -> load::LoadSpec {
    load::LoadSpec {
        rate,
        window,
        warmup,
        duration,
        grace,
        payload,
        max_inflight: 200_000,
        server_pid,
        max_messages: None,
    }
}

fn check_loopback(server: &str) -> Result<()> {
    let host = server
        .split("://")
        .nth(1)
        .unwrap_or(server)
        .split('/')
        .next()
        .unwrap_or("");
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !ok {
        bail!(
            "the bench only targets a server on this machine (127.0.0.0/8, ::1, localhost); got {server:?}"
        );
    }
    Ok(())
}

/// Runs the scenario; `key` is the app key found by the caller (flags,
/// config, data dir) when `--sdkappid`/`--secret-key` are not given. Builds
/// its own current-thread Tokio runtime (the generator uses at most one
/// core) and prints the human table, or with `--json` one JSON line, to stdout.
pub fn run(args: BenchArgs, key: Option<UserSigKey>) -> Result<Summary> {
    for node in args.server.split(',') {
        check_loopback(node.trim())?;
    }
    let key = match (args.sdkappid, args.secret_key.clone()) {
        (Some(a), Some(k)) => UserSigKey::new(a, k),
        _ => key.context(
            "no app key: pass --sdkappid and --secret-key (the server's; see `duet serve`)",
        )?,
    };
    if args.prefix.is_empty() || args.prefix.len() > 16 || !duet_proto::valid_user_id(&args.prefix)
    {
        bail!("--prefix must be 1 to 16 printable ASCII bytes");
    }
    let target = client::Target {
        server: args.server.clone(),
        key,
        prefix: args.prefix.clone(),
    };
    let found_pid = args.server_pid.or_else(|| {
        procstat::port_of(args.server.split(',').next().unwrap_or_default())
            .and_then(procstat::find_listener)
    });
    let mut s = Summary {
        server: args.server.clone(),
        server_pid: found_pid,
        ..Summary::default()
    };
    if found_pid.is_none() {
        s.notes
            .push("server PID unknown (pass --server-pid): no server CPU or RSS".into());
    } else if found_pid.is_some_and(|p| procstat::rss_kib(Some(p)).is_none()) {
        s.notes
            .push("cannot read the server's /proc entries: no server CPU or RSS".into());
    }
    let pid = found_pid;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let local = tokio::task::LocalSet::new();
    let t0 = Instant::now();
    let max = Duration::from_secs(args.max_secs);
    let scenario = args.scenario.clone();
    let out = local.block_on(&rt, async {
        tokio::time::timeout(max, run_scenario(&target, scenario, pid, &mut s)).await
    });
    match out {
        Ok(r) => r?,
        Err(_) => bail!("gave up after --max-secs {} s", args.max_secs),
    }
    s.wall_secs = t0.elapsed().as_secs_f64();
    // Let the runtime drop its connections now, before printing.
    drop(local);
    drop(rt);
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        print!("{}", s.table());
    }
    Ok(s)
}

async fn run_scenario(
    target: &client::Target,
    scenario: Scenario,
    pid: Option<u32>,
    s: &mut Summary,
) -> Result<()> {
    match scenario {
        Scenario::Connections {
            count,
            concurrency,
            settle,
            hold,
            source_addrs,
        } => {
            s.scenario = "connections".into();
            s.params = BTreeMap::from([
                ("count".into(), json!(count)),
                ("concurrency".into(), json!(concurrency)),
                ("source_addrs".into(), json!(source_addrs)),
            ]);
            let settle = secs(settle, "settle")?;
            let spec = connections::ConnSpec {
                count,
                concurrency,
                settle,
                hold: secs(hold, "hold")?.max(settle),
                server_pid: pid,
                source_addrs,
            };
            connections::run(target, &spec, s).await
        }
        Scenario::Online {
            users,
            rate,
            duration,
            warmup,
            window,
            grace,
            payload,
            messages,
        } => {
            s.scenario = "online".into();
            s.params = BTreeMap::from([
                ("users".into(), json!(users)),
                ("rate".into(), json!(rate.to_string())),
                ("duration".into(), json!(duration)),
                ("warmup".into(), json!(warmup)),
                ("payload".into(), json!(payload)),
            ]);
            if rate == Rate::Max {
                s.params.insert("window".into(), json!(window));
            }
            if let Some(m) = messages {
                s.params.insert("messages".into(), json!(m));
            }
            let mut spec = load_spec(
                rate,
                window,
                secs(warmup, "warmup")?,
                secs(duration, "duration")?,
                secs(grace, "grace")?,
                payload.min(7_000),
                pid,
            );
            spec.max_messages = messages;
            online::run(target, users, &spec, s).await
        }
        Scenario::Offline {
            messages,
            conversations,
            window,
        } => {
            s.scenario = "offline".into();
            s.params = BTreeMap::from([
                ("messages".into(), json!(messages)),
                ("conversations".into(), json!(conversations)),
            ]);
            let spec = offline::OfflineSpec {
                messages,
                conversations,
                window,
            };
            offline::run(target, &spec, s).await
        }
        Scenario::History {
            pages,
            page_rate,
            page_size,
            seed,
            rate,
            users,
            warmup,
            max_paging,
        } => {
            s.scenario = "history".into();
            s.params = BTreeMap::from([
                ("pages".into(), json!(pages)),
                ("page_rate".into(), json!(page_rate)),
                ("page_size".into(), json!(page_size)),
                ("seed".into(), json!(seed)),
                ("rate".into(), json!(rate.to_string())),
                ("users".into(), json!(users)),
            ]);
            let max_paging = secs(max_paging, "max-paging")?;
            let spec = history::HistorySpec {
                pages,
                page_size: page_size.clamp(1, duet_proto::limits::MAX_HISTORY_PAGE),
                seed,
                users,
                page_rate: if page_rate.is_finite() {
                    page_rate.max(0.0)
                } else {
                    0.0
                },
                max_paging,
            };
            let lspec = load_spec(
                rate,
                4,
                secs(warmup, "warmup")?,
                max_paging,
                Duration::from_secs(5),
                0,
                pid,
            );
            history::run(target, &spec, &lspec, s).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    /// A parent shaped like the `duet` binary: global app flags with the
    /// same names, and `bench` as a subcommand.
    #[derive(Parser, Debug)]
    struct Duet {
        #[arg(long, env = "DUET_SDKAPPID_TEST_ONLY", global = true)]
        sdkappid: Option<u64>,
        #[arg(long, global = true)]
        secret_key: Option<String>,
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand, Debug)]
    enum Cmd {
        Bench(BenchArgs),
    }

    #[test]
    fn parses_under_a_parent_with_the_same_global_flags() {
        let d = Duet::try_parse_from([
            "duet",
            "bench",
            "online",
            "--users",
            "10",
            "--rate",
            "max",
            "--json",
            "--sdkappid",
            "7",
            "--secret-key",
            "k",
        ]);
        let d = match d {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let Cmd::Bench(b) = d.cmd;
        assert!(b.json);
        assert!(matches!(
            b.scenario,
            Scenario::Online {
                users: 10,
                rate: Rate::Max,
                ..
            }
        ));
        // Given after `bench`, the flags land in BenchArgs; given before, in the parent.
        assert_eq!(b.sdkappid, Some(7));
        let d = Duet::try_parse_from(["duet", "--sdkappid", "8", "bench", "offline"]);
        let d = match d {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(d.sdkappid, Some(8));
    }

    #[test]
    fn loopback_only() {
        assert!(check_loopback("http://127.0.0.1:7400").is_ok());
        assert!(check_loopback("ws://127.3.4.5:1/ws").is_ok());
        assert!(check_loopback("http://localhost:7400").is_ok());
        assert!(check_loopback("http://[::1]:7400").is_ok());
        assert!(check_loopback("http://10.0.0.1:7400").is_err());
        assert!(check_loopback("http://example.com").is_err());
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Duet::command().debug_assert();
    }
}
