//! Every scenario, small, against an in-process test server.

use clap::Parser;
use duet_bench::{BenchArgs, Summary};
use duet_testkit::{SDKAPPID, SECRET, TestServer};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn bench(url: &str, scenario: &[&str]) -> Summary {
    let pid = std::process::id().to_string();
    let mut argv = vec![
        "duet-bench",
        "--server",
        url,
        "--json",
        "--server-pid",
        &pid,
    ];
    argv.extend_from_slice(scenario);
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let key = duet_usersig::UserSigKey::new(SDKAPPID, SECRET);
    match duet_bench::run(cli.bench, Some(key)) {
        Ok(s) => s,
        Err(e) => panic!("{scenario:?}: {e:#}"),
    }
}

#[test]
fn every_scenario_runs_and_accounts_for_every_message() {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => panic!("{e}"),
    };
    let server = rt.block_on(TestServer::start());
    let url = server.url();

    let s = bench(
        &url,
        &[
            "connections",
            "--count",
            "40",
            "--settle",
            "0.1",
            "--hold",
            "0.2",
        ],
    );
    assert_eq!(s.connections, Some(40));
    assert_eq!(s.failures, Some(0));
    assert!(s.logins_per_sec.is_some_and(|r| r > 0.0));
    assert!(s.login_latency_ms.is_some());
    assert!(s.rss_per_conn_kib.is_some());

    let s = bench(
        &url,
        &[
            "online",
            "--users",
            "10",
            "--rate",
            "400",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--grace",
            "3",
        ],
    );
    assert!(s.sent.is_some_and(|n| n > 200), "{s:?}");
    assert_eq!(s.lost, Some(0), "{s:?}");
    assert_eq!(s.duplicated, Some(0), "{s:?}");
    assert_eq!(s.send_errors, Some(0), "{s:?}");
    assert!(
        s.latency_ms.is_some_and(|l| l.count > 200 && l.p50 > 0.0),
        "{s:?}"
    );
    assert!(s.client_cpu_pct.is_some());
    // CPU time per message: the share over the window, per acked message.
    let per_msg = s.client_cpu_us_per_msg.expect("generator CPU per message");
    let (pct, acked, secs) = (
        s.client_cpu_pct.expect("pct"),
        s.acked.expect("acked"),
        s.measured_secs,
    );
    assert!(
        (per_msg - pct / 100.0 * secs * 1e6 / acked as f64).abs() < 1e-6 && per_msg > 0.0,
        "{s:?}"
    );
    // The server timed the sends too (its /metrics over the measured run).
    let server_side = s.server_send_ms.as_ref().expect("server-side send latency");
    assert!(server_side.count > 200, "{s:?}");
    assert!(server_side.p99_at_most.is_some(), "{s:?}");

    let s = bench(
        &url,
        &[
            "online",
            "--users",
            "4",
            "--rate",
            "max",
            "--window",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
        ],
    );
    assert!(s.acked.is_some_and(|n| n > 0), "{s:?}");
    assert_eq!(s.lost, Some(0), "{s:?}");

    let s = bench(
        &url,
        &["offline", "--messages", "300", "--conversations", "3"],
    );
    assert_eq!(s.messages, Some(300), "{s:?}");
    assert_eq!(s.synced, Some(300), "{s:?}");
    assert!(s.login_to_synced_ms.is_some());
    // The conversation list after the sync: one per sender, every message unread.
    assert_eq!(s.conversations, Some(3), "{s:?}");
    assert!(s.login_to_sync_finished_ms >= s.login_to_synced_ms, "{s:?}");
    assert!(s.notes.is_empty(), "{:?}", s.notes);

    let s = bench(
        &url,
        &[
            "history",
            "--pages",
            "30",
            "--page-rate",
            "100",
            "--seed",
            "100",
            "--users",
            "4",
            "--rate",
            "100",
            "--warmup",
            "0.1",
        ],
    );
    assert_eq!(s.pages, Some(30), "{s:?}");
    assert!(s.history_ms.is_some());
    // The server timed the same 30 pages (its /metrics over the window).
    let server_side = s
        .server_history_ms
        .as_ref()
        .expect("server-side history latency");
    assert_eq!(server_side.count, 30, "{s:?}");
    assert!(server_side.p99_at_most.is_some(), "{s:?}");
    assert_eq!(s.lost, Some(0), "{s:?}");
    drop(server);
}
