//! Logged-in bench users on the SDK's protocol layer, and the probe carried
//! in every bench message.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use duet_proto::{Message, MsgElem};
use duet_sdk::{Connection, Push, SdkError};
use duet_usersig::UserSigKey;
use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;

/// Device id every bench connection logs in with.
pub const DEVICE: &str = "bench";
/// Platform every bench connection logs in with.
pub const PLATFORM: &str = "Linux";
/// Lifetime of the UserSigs the generator signs, seconds.
const SIG_LIFETIME: u64 = 24 * 3600;

/// Where and as whom the generator connects.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server base URL; for `online` and `history`, a comma-separated list
    /// of nodes of one cluster, users assigned round-robin.
    pub server: String,
    /// App key: the generator signs its own UserSigs.
    pub key: UserSigKey,
    /// UserID prefix.
    pub prefix: String,
}

impl Target {
    /// The node user number `i` connects to.
    pub fn server_for(&self, i: usize) -> &str {
        let nodes: Vec<&str> = self.server.split(',').map(str::trim).collect();
        nodes[i % nodes.len()]
    }

    /// The first node.
    pub fn first_server(&self) -> &str {
        self.server_for(0)
    }

    /// A UserID: `<prefix>-<tag><i>` (at most 32 bytes).
    pub fn user(&self, tag: &str, i: usize) -> String {
        format!("{}-{tag}{i}", self.prefix)
    }

    /// A fresh UserSig for `user`.
    pub fn sig(&self, user: &str) -> String {
        self.key.issue(user, SIG_LIFETIME)
    }
}

/// A logged-in user with one device.
pub struct Client {
    /// UserID.
    pub user: String,
    /// The connection.
    pub conn: Connection,
    /// Its pushes (taken by whoever receives).
    pub pushes: Option<UnboundedReceiver<Push>>,
    /// Timeline head at login.
    pub head: u64,
    /// Server idle timeout, seconds.
    pub heartbeat_timeout: u64,
}

/// Connects and logs `user` in with a pre-signed `sig`.
pub async fn login(server: &str, user: &str, sig: &str) -> Result<Client, SdkError> {
    let (conn, pushes) = Connection::connect(server).await?;
    let info = conn.login(user, sig, DEVICE, PLATFORM).await?;
    Ok(Client {
        user: user.to_string(),
        conn,
        pushes: Some(pushes),
        head: info.head,
        heartbeat_timeout: info.heartbeat_timeout,
    })
}

/// Logs every user in, `concurrency` at a time, in order. Each client
/// pings at a third of the server's idle timeout.
pub async fn login_all(
    target: &Target,
    users: Vec<String>,
    concurrency: usize,
) -> Result<Vec<Client>> {
    let n = users.len();
    let results: Vec<Result<Client, SdkError>> =
        futures_util::stream::iter(users.into_iter().enumerate())
            .map(|(i, u)| async move {
                let sig = target.sig(&u);
                login(target.server_for(i), &u, &sig).await
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
    let mut out = Vec::with_capacity(n);
    for r in results {
        let c = r.with_context(|| format!("logging in to {}", target.server))?;
        c.conn
            .start_heartbeat(Duration::from_secs((c.heartbeat_timeout / 3).max(1)));
        out.push(c);
    }
    if out.len() != n {
        bail!("logged in {} of {n} users", out.len());
    }
    Ok(out)
}

/// Now, Unix nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What a bench message carries: who sent it, its number in that sender's
/// stream, and when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Sender index.
    pub sender: u32,
    /// Per-sender sequence number (from 0).
    pub seq: u64,
    /// Send time, Unix nanoseconds.
    pub sent_ns: u64,
}

impl Probe {
    /// The message body: a `TIMCustomElem` with `Data` =
    /// `<sender>:<seq>:<unix_nanos>`, plus a `TIMTextElem` of `payload` bytes if asked.
    pub fn body(&self, payload: &str) -> Vec<MsgElem> {
        let mut b = vec![MsgElem::custom(
            format!("{}:{}:{}", self.sender, self.seq, self.sent_ns),
            "",
            "",
        )];
        if !payload.is_empty() {
            b.push(MsgElem::text(payload));
        }
        b
    }

    /// Reads the probe of a bench message.
    pub fn read(m: &Message) -> Option<Probe> {
        let data = m
            .body
            .iter()
            .find(|e| e.msg_type == "TIMCustomElem")?
            .str_field("Data")?;
        let mut it = data.split(':');
        let p = Probe {
            sender: it.next()?.parse().ok()?,
            seq: it.next()?.parse().ok()?,
            sent_ns: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(p)
    }
}

/// A short name for an SDK error, to count errors by kind.
pub fn error_kind(e: &SdkError) -> String {
    match e {
        SdkError::Server { code, .. } => format!("server error {code}"),
        SdkError::Closed => "connection closed".into(),
        SdkError::Io(s) => {
            // "ws://...: IO error: Connection refused (os error 111)" → the tail.
            let tail = s.rsplit(": ").next().unwrap_or(s);
            format!("connect: {tail}")
        }
        SdkError::Protocol(_) => "protocol error".into(),
        SdkError::Cache(_) => "cache error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_round_trip() {
        let p = Probe {
            sender: 7,
            seq: 42,
            sent_ns: 1_700_000_000_123_456_789,
        };
        let body = p.body("xx");
        let m = Message {
            from: "a".into(),
            to: "b".into(),
            msg_seq: 1,
            msg_random: 1,
            msg_time: 1,
            msg_key: "1_1_1".into(),
            flag_bits: 0,
            body,
            cloud_custom_data: String::new(),
            nick: String::new(),
            face_url: String::new(),
            online_only: false,
        };
        assert_eq!(Probe::read(&m), Some(p));
        let mut other = m.clone();
        other.body = vec![MsgElem::text("hi")];
        assert_eq!(Probe::read(&other), None);
        other.body = vec![MsgElem::custom("1:2", "", "")];
        assert_eq!(Probe::read(&other), None);
    }

    #[test]
    fn user_ids_fit() {
        let t = Target {
            server: String::new(),
            key: UserSigKey::new(1, "k"),
            prefix: "bench".into(),
        };
        assert_eq!(t.user("c", 18_999), "bench-c18999");
        assert!(duet_proto::valid_user_id(&t.user("o", 1_000_000)));
    }
}
