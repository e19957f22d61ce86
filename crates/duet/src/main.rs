//! `duet`: the server (`duet serve`), UserSig tool (`duet usersig`) and the
//! scriptable command-line client (`send`, `listen`, `history`, ...).

mod client;
mod serve;
mod settings;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use settings::AppFlags;

#[derive(Parser, Debug)]
#[command(
    name = "duet",
    version,
    about = "Self-hosted one-to-one messaging, Tencent Cloud Chat C2C compatible"
)]
struct Cli {
    #[command(flatten)]
    app: AppFlags,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the server (embedded SQLite store by default).
    Serve(serve::ServeArgs),
    /// Print a UserSig for USER, signed with the app's secret key.
    Usersig {
        /// The UserID.
        user: String,
        /// Lifetime in seconds (default 180 days).
        #[arg(long, default_value_t = duet_usersig::DEFAULT_EXPIRE_SECS)]
        expire: u64,
    },
    /// Send a message.
    Send(client::SendArgs),
    /// Offline sync, then live messages, as events.
    Listen(client::ListenArgs),
    /// A page of history with a peer.
    History(client::HistoryArgs),
    /// The conversation list with unread counts.
    Conversations(client::CommonArgs),
    /// Mark a conversation read (the peer gets a read report).
    Read(client::ReadArgs),
    /// Recall one of your messages.
    Recall(client::RecallArgs),
    /// Load generator: connections, online, offline and history scenarios.
    Bench(duet_bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.cmd, Cmd::Serve(_));
    if let Cmd::Bench(args) = cli.cmd {
        // The generator builds its own single-threaded runtime (one core).
        let key = match settings::find_key(&cli.app) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        };
        return match duet_bench::run(args, key) {
            Ok(_) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DUET_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if serving { "info" } else { "warn" })
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(args) => serve::run(cli.app, args).await,
            Cmd::Usersig { user, expire } => usersig(&cli.app, &user, expire),
            Cmd::Send(a) => client::send(&cli.app, a).await,
            Cmd::Listen(a) => client::listen(&cli.app, a).await,
            Cmd::History(a) => client::history(&cli.app, a).await,
            Cmd::Conversations(a) => client::conversations(&cli.app, a).await,
            Cmd::Read(a) => client::read(&cli.app, a).await,
            Cmd::Recall(a) => client::recall(&cli.app, a).await,
            Cmd::Bench(_) => unreachable!("handled before the runtime starts"),
        }
    });
    match r {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<duet_sdk::SdkError>() {
                Some(duet_sdk::SdkError::Server { code, info }) => {
                    eprintln!("error {code}: {info}")
                }
                _ => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn usersig(app: &AppFlags, user: &str, expire: u64) -> anyhow::Result<std::process::ExitCode> {
    let Some(key) = settings::find_key(app)? else {
        anyhow::bail!(
            "no app key: run `duet serve` once (it creates {}), or pass --sdkappid and --secret-key",
            PathBuf::from("duet-data/identity.toml").display()
        );
    };
    if !duet_proto::valid_user_id(user) {
        anyhow::bail!("UserID must be 1 to 32 bytes of printable ASCII");
    }
    println!("{}", key.issue(user, expire));
    Ok(std::process::ExitCode::SUCCESS)
}
