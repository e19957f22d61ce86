//! The scriptable client commands, built on `duet-sdk`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use duet_proto::{Conversation, Message, MsgElem};
use duet_sdk::{Cache, Connection, Event, SendOptions, Session, SessionOptions};
use serde_json::json;

use crate::settings::{self, AppFlags};

/// Flags of every client command.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Server base URL.
    #[arg(long, env = "DUET_SERVER", default_value = "http://127.0.0.1:7400")]
    pub server: String,
    /// Your UserID.
    #[arg(long, env = "DUET_USER")]
    pub user: String,
    /// Your UserSig (signed locally when the app key is readable).
    #[arg(long, env = "DUET_USERSIG", hide_env_values = true)]
    pub usersig: Option<String>,
    /// This device's id.
    #[arg(long, env = "DUET_DEVICE", default_value = "cli")]
    pub device: String,
    /// Platform reported at login.
    #[arg(long, default_value = "Linux")]
    pub platform: String,
    /// Local cache directory (keeps the sync cursor).
    #[arg(long, env = "DUET_CACHE")]
    pub cache: Option<PathBuf>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// `duet send`.
#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Recipient UserID.
    #[arg(long)]
    pub to: String,
    /// Text (a TIMTextElem).
    #[arg(long, conflicts_with = "body")]
    pub text: Option<String>,
    /// A full MsgBody as JSON (array of elements).
    #[arg(long)]
    pub body: Option<String>,
    /// CloudCustomData.
    #[arg(long, default_value = "")]
    pub cloud_custom_data: String,
    /// MsgRandom (reuse to retry idempotently).
    #[arg(long)]
    pub random: Option<u32>,
    /// MsgSeq.
    #[arg(long)]
    pub seq: Option<u32>,
    /// Deliver to online devices only; never stored.
    #[arg(long)]
    pub online_only: bool,
}

/// `duet listen`.
#[derive(Args, Debug, Clone)]
pub struct ListenArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long = "for")]
    pub for_secs: Option<f64>,
}

/// `duet history`.
#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The peer.
    #[arg(long = "with")]
    pub with: String,
    /// Messages to show.
    #[arg(long, default_value_t = 20)]
    pub count: u32,
    /// Only entries before this timeline number (paging).
    #[arg(long)]
    pub before: Option<u64>,
}

/// `duet read`.
#[derive(Args, Debug, Clone)]
pub struct ReadArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The peer.
    #[arg(long = "with")]
    pub with: String,
}

/// `duet recall`.
#[derive(Args, Debug, Clone)]
pub struct RecallArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The MsgKey to recall.
    #[arg(long)]
    pub key: String,
}

fn user_sig(app: &AppFlags, c: &CommonArgs) -> Result<String> {
    if let Some(s) = &c.usersig {
        return Ok(s.clone());
    }
    match settings::find_key(app)? {
        Some(key) => Ok(key.issue(&c.user, 24 * 3600)),
        None => bail!(
            "no --usersig given and no app key readable (pass --usersig, or --sdkappid/--secret-key, or --data pointing at the server's data dir)"
        ),
    }
}

fn cache_dir(c: &CommonArgs) -> PathBuf {
    c.cache.clone().unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("duet")
    })
}

async fn connect(app: &AppFlags, c: &CommonArgs) -> Result<Connection> {
    let sig = user_sig(app, c)?;
    let (conn, _pushes) = Connection::connect(&c.server).await?;
    conn.login(&c.user, &sig, &c.device, &c.platform).await?;
    Ok(conn)
}

fn print_json(v: serde_json::Value) {
    println!("{v}");
}

fn text_of(m: &Message) -> String {
    m.body
        .iter()
        .map(|e| match e.as_text() {
            Some(t) => t.to_string(),
            None => format!("[{}]", e.msg_type),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn human_message(m: &Message) -> String {
    let who = if m.nick.is_empty() {
        m.from.clone()
    } else {
        format!("{} ({})", m.nick, m.from)
    };
    let recalled = if m.is_recalled() { " [recalled]" } else { "" };
    format!(
        "{} {} -> {}: {}{}  [{}]",
        m.msg_time,
        who,
        m.to,
        text_of(m),
        recalled,
        m.msg_key
    )
}

pub async fn send(app: &AppFlags, a: SendArgs) -> Result<ExitCode> {
    let body: Vec<MsgElem> = match (&a.text, &a.body) {
        (Some(t), _) => vec![MsgElem::text(t.clone())],
        (None, Some(b)) => {
            serde_json::from_str(b).context("--body must be a JSON array of MsgBody elements")?
        }
        (None, None) => bail!("give --text or --body"),
    };
    let conn = connect(app, &a.common).await?;
    let ack = conn
        .send(
            &a.to,
            body,
            SendOptions {
                msg_random: a.random,
                msg_seq: a.seq,
                cloud_custom_data: a.cloud_custom_data,
                online_only: a.online_only,
                ..Default::default()
            },
        )
        .await?;
    if a.common.json {
        print_json(json!({
            "event": "sent", "MsgKey": ack.msg_key, "MsgTime": ack.msg_time,
            "MsgSeq": ack.msg_seq, "MsgRandom": ack.msg_random, "duplicate": ack.duplicate,
        }));
    } else {
        println!("sent {}", ack.msg_key);
    }
    conn.close().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn listen(app: &AppFlags, a: ListenArgs) -> Result<ExitCode> {
    let c = &a.common;
    let sig = user_sig(app, c)?;
    let cache = Cache::open(&cache_dir(c))?;
    let (session, mut events) = Session::start(SessionOptions {
        server: c.server.clone(),
        user: c.user.clone(),
        user_sig: sig,
        device_id: c.device.clone(),
        platform: c.platform.clone(),
        cache: Some(cache),
    })
    .await?;
    let deadline = a
        .for_secs
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let code = loop {
        let ev = match deadline {
            Some(d) => match tokio::time::timeout_at(d, events.recv()).await {
                Ok(ev) => ev,
                Err(_) => break ExitCode::SUCCESS,
            },
            None => tokio::select! {
                ev = events.recv() => ev,
                _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
            },
        };
        let Some(ev) = ev else {
            break ExitCode::FAILURE;
        };
        let stop = print_event(&ev, c.json);
        if let Some(code) = stop {
            break code;
        }
    };
    session.close().await;
    // Let the cursor write and the close frame go out.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(code)
}

/// Prints an event; returns an exit code when listening must stop.
fn print_event(ev: &Event, json: bool) -> Option<ExitCode> {
    match ev {
        Event::NewMessage(m) => {
            if json {
                print_json(json!({"event": "new_message", "message": m}));
            } else {
                println!("{}", human_message(m));
            }
        }
        Event::MessageRecalled(r) => {
            if json {
                print_json(
                    json!({"event": "message_recalled", "MsgKey": r.msg_key, "From_Account": r.from, "To_Account": r.to}),
                );
            } else {
                println!("recalled {} ({} -> {})", r.msg_key, r.from, r.to);
            }
        }
        Event::ReadReceipt(r) => {
            if json {
                print_json(
                    json!({"event": "read_receipt", "reader": r.reader, "peer": r.peer, "read_time": r.read_time}),
                );
            } else {
                println!(
                    "{} read messages from {} up to {}",
                    r.reader, r.peer, r.read_time
                );
            }
        }
        Event::Conversations(list) => {
            if json {
                print_json(json!({"event": "conversations", "conversations": list}));
            } else {
                for c in list {
                    println!("{}", human_conversation(c));
                }
            }
        }
        Event::SyncFinished => {
            if json {
                print_json(json!({"event": "sync_finished"}));
            } else {
                println!("-- sync finished --");
            }
        }
        Event::KickedOffline { code, reason } => {
            if json {
                print_json(json!({"event": "kicked_offline", "code": code, "reason": reason}));
            } else {
                println!("kicked offline ({code}): {reason}");
            }
            return Some(ExitCode::from(2));
        }
        Event::Disconnected => {
            if json {
                print_json(json!({"event": "disconnected"}));
            } else {
                eprintln!("disconnected");
            }
            return Some(ExitCode::from(3));
        }
    }
    None
}

fn human_conversation(c: &Conversation) -> String {
    let last = c.last_message.as_ref().map(text_of).unwrap_or_default();
    format!(
        "{}  unread {}  last {}: {}",
        c.peer, c.unread, c.last_time, last
    )
}

pub async fn history(app: &AppFlags, a: HistoryArgs) -> Result<ExitCode> {
    let conn = connect(app, &a.common).await?;
    let (items, complete) = conn.history(&a.with, a.before, a.count).await?;
    // Oldest first on screen.
    for item in items.iter().rev() {
        if a.common.json {
            let mut m = serde_json::to_value(&item.message)?;
            m["seq"] = json!(item.seq);
            print_json(m);
        } else {
            println!("#{} {}", item.seq, human_message(&item.message));
        }
    }
    if !a.common.json
        && !complete
        && let Some(oldest) = items.last()
    {
        println!("-- older messages: --before {} --", oldest.seq);
    }
    conn.close().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn conversations(app: &AppFlags, c: CommonArgs) -> Result<ExitCode> {
    let conn = connect(app, &c).await?;
    for conv in conn.all_conversations().await? {
        if c.json {
            print_json(serde_json::to_value(&conv)?);
        } else {
            println!("{}", human_conversation(&conv));
        }
    }
    conn.close().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn read(app: &AppFlags, a: ReadArgs) -> Result<ExitCode> {
    let conn = connect(app, &a.common).await?;
    conn.mark_read(&a.with).await?;
    if a.common.json {
        print_json(json!({"event": "marked_read", "peer": a.with}));
    } else {
        println!("marked {} read", a.with);
    }
    conn.close().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn recall(app: &AppFlags, a: RecallArgs) -> Result<ExitCode> {
    let conn = connect(app, &a.common).await?;
    conn.recall(&a.key).await?;
    if a.common.json {
        print_json(json!({"event": "recalled", "MsgKey": a.key}));
    } else {
        println!("recalled {}", a.key);
    }
    conn.close().await;
    Ok(ExitCode::SUCCESS)
}
