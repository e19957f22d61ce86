//! The writer's view of accounts: a bounded cache of committed account state
//! plus the uncommitted changes of the running batch and job.
//!
//! The writer thread is the only writer of `accounts`, so it can know every
//! account's timeline head exactly without reading it back for each write.
//! Three layers, looked up newest first:
//!
//! 1. **job**: what the running job changed (at most a few accounts);
//!    dropped if the job fails, folded into the batch layer if it succeeds;
//! 2. **batch**: what the batch's successful jobs changed; its heads are
//!    written to `heads` just before `COMMIT` (one upsert per account per
//!    batch), and it is folded into the cache only once that
//!    `COMMIT` succeeded, or dropped if the batch rolls back;
//! 3. **cache**: committed state only (Law 3: no cache can roll a number
//!    back, because numbers reach it only after they are durable).
//!
//! A miss in all three reads the row. That is safe mid-transaction: every
//! change the batch makes to an account is in the batch or job layer, so an
//! account found in neither still has its committed row.
//!
//! The cache is bounded (Law 6) by two generations: lookups and commits fill
//! the young one; when it is full it becomes the old one and the previous old
//! one is dropped. Correctness never depends on it being warm: it is cleared
//! whenever another connection wrote to the database, and after any failed batch.

use foldhash::HashMap;
use std::sync::Arc;

use duet_store::{Account, StoreResult};
use rusqlite::{Connection, OptionalExtension};

use crate::db;
use crate::rows::{sql_u64, u64_at};

/// What the writer knows of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountState {
    /// The account's key, `accounts.uid` (an `INTEGER PRIMARY KEY`: it never
    /// changes), which the account's rows in other tables carry.
    pub(crate) uid: i64,
    /// The newest entry number of the account's timeline.
    pub(crate) head: u64,
    /// Nickname.
    pub(crate) nick: Arc<str>,
    /// Face URL.
    pub(crate) face_url: Arc<str>,
    /// Creation time, Unix milliseconds.
    pub(crate) created_ms: u64,
}

impl AccountState {
    /// The public account record of `user`.
    pub(crate) fn to_account(&self, user: &str) -> Account {
        Account {
            user_id: user.to_owned(),
            nick: self.nick.to_string(),
            face_url: self.face_url.to_string(),
            created_ms: self.created_ms,
        }
    }
}

/// An uncommitted change to an account.
#[derive(Debug, Clone)]
struct Pending {
    state: AccountState,
    /// The head changed and must be written back before `COMMIT`.
    head_dirty: bool,
}

/// Committed account states, bounded by two generations of `half` entries.
#[derive(Debug)]
struct Cache {
    young: HashMap<String, AccountState>,
    old: HashMap<String, AccountState>,
    half: usize,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Cache {
            young: HashMap::default(),
            old: HashMap::default(),
            half: (capacity / 2).max(1),
        }
    }

    fn get(&mut self, user: &str) -> Option<&AccountState> {
        if !self.young.contains_key(user)
            && let Some((key, state)) = self.old.remove_entry(user)
        {
            self.insert(key, state);
        }
        self.young.get(user)
    }

    fn insert(&mut self, user: String, state: AccountState) {
        if self.young.len() >= self.half && !self.young.contains_key(&user) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(user, state);
    }

    fn clear(&mut self) {
        self.young = HashMap::default();
        self.old = HashMap::default();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// The writer's accounts: committed cache, batch and job layers.
#[derive(Debug)]
pub(crate) struct Accounts {
    cache: Cache,
    batch: HashMap<String, Pending>,
    job: Vec<(String, Pending)>,
}

const SELECT_STATE: &str = "SELECT a.uid, COALESCE(h.head, 0), a.nick, a.face_url, a.created_ms \
     FROM accounts a LEFT JOIN heads h ON h.uid = a.uid WHERE a.user_id = ?1";

impl Accounts {
    /// An empty view keeping at most `capacity` committed accounts.
    pub(crate) fn new(capacity: usize) -> Self {
        Accounts {
            cache: Cache::new(capacity),
            batch: HashMap::default(),
            job: Vec::new(),
        }
    }

    /// The account as this point of the transaction sees it; `None` if it
    /// does not exist.
    pub(crate) fn get(
        &mut self,
        conn: &Connection,
        user: &str,
    ) -> StoreResult<Option<AccountState>> {
        if let Some((_, p)) = self.job.iter().rev().find(|(u, _)| u == user) {
            return Ok(Some(p.state.clone()));
        }
        if let Some(p) = self.batch.get(user) {
            return Ok(Some(p.state.clone()));
        }
        if let Some(state) = self.cache.get(user) {
            return Ok(Some(state.clone()));
        }
        // Not changed by this transaction: the row is the committed state.
        let found = conn
            .prepare_cached(SELECT_STATE)
            .and_then(|mut s| {
                s.query_row([user], |r| {
                    Ok(AccountState {
                        uid: r.get(0)?,
                        head: u64_at(r, 1)?,
                        nick: Arc::from(r.get_ref(2)?.as_str()?),
                        face_url: Arc::from(r.get_ref(3)?.as_str()?),
                        created_ms: u64_at(r, 4)?,
                    })
                })
                .optional()
            })
            .map_err(db)?;
        if let Some(state) = &found {
            self.cache.insert(user.to_owned(), state.clone());
        }
        Ok(found)
    }

    /// Records the running job's new state of `user`; `head_moved` if its
    /// timeline head changed.
    pub(crate) fn put(&mut self, user: &str, state: AccountState, head_moved: bool) {
        if let Some((_, p)) = self.job.iter_mut().rev().find(|(u, _)| u == user) {
            p.state = state;
            p.head_dirty |= head_moved;
            return;
        }
        let head_dirty = head_moved || self.batch.get(user).is_some_and(|p| p.head_dirty);
        self.job
            .push((user.to_owned(), Pending { state, head_dirty }));
    }

    /// Sets `user`'s head to `head` (which must be its current head + 1 or
    /// more) in the running job's layer.
    pub(crate) fn set_head(&mut self, user: &str, mut state: AccountState, head: u64) {
        state.head = head;
        self.put(user, state, true);
    }

    /// The running job succeeded: its changes join the batch.
    pub(crate) fn job_succeeded(&mut self) {
        for (user, p) in self.job.drain(..) {
            self.batch.insert(user, p);
        }
    }

    /// The running job failed: its changes are forgotten.
    pub(crate) fn job_failed(&mut self) {
        self.job.clear();
    }

    /// Writes the batch's moved heads to `heads` (inside the batch's
    /// transaction, before `COMMIT`).
    pub(crate) fn write_heads(&self, conn: &Connection) -> StoreResult<()> {
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO heads (uid, head) VALUES (?1, ?2) \
                 ON CONFLICT (uid) DO UPDATE SET head = excluded.head",
            )
            .map_err(db)?;
        // In key order: neighbouring rows share pages.
        let mut dirty: Vec<(i64, u64)> = self
            .batch
            .values()
            .filter(|p| p.head_dirty)
            .map(|p| (p.state.uid, p.state.head))
            .collect();
        dirty.sort_unstable();
        for (uid, head) in dirty {
            stmt.execute([uid, sql_u64(head)]).map_err(db)?;
        }
        Ok(())
    }

    /// The batch committed: its changes become the committed state.
    pub(crate) fn batch_committed(&mut self) {
        debug_assert!(self.job.is_empty(), "a job is still open at commit");
        self.job.clear();
        for (user, p) in self.batch.drain() {
            self.cache.insert(user, p.state);
        }
    }

    /// The batch rolled back: its changes are forgotten, and so is the cache
    /// (cheap insurance; a failed batch is rare).
    pub(crate) fn batch_rolled_back(&mut self) {
        self.job.clear();
        self.batch.clear();
        self.cache.clear();
    }

    /// Another connection changed the database: nothing cached can be trusted.
    pub(crate) fn invalidate(&mut self) {
        debug_assert!(self.batch.is_empty() && self.job.is_empty());
        self.cache.clear();
    }

    /// Committed accounts held (for tests).
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(uid: i64, head: u64) -> AccountState {
        AccountState {
            uid,
            head,
            nick: Arc::from(""),
            face_url: Arc::from(""),
            created_ms: 0,
        }
    }

    #[test]
    fn cache_is_bounded_and_keeps_recent_entries() {
        let mut cache = Cache::new(10);
        for i in 0..100 {
            cache.insert(format!("u{i}"), state(i, 0));
            assert!(cache.len() <= 10, "at most the capacity is kept");
        }
        assert!(cache.get("u99").is_some(), "the newest entry is kept");
        assert!(cache.get("u0").is_none(), "old entries are evicted");
        // A hit in the old generation moves the entry to the young one.
        let mut cache = Cache::new(4);
        cache.insert("a".into(), state(1, 1));
        cache.insert("b".into(), state(2, 1));
        cache.insert("c".into(), state(3, 1)); // a, b become old
        assert_eq!(cache.get("a").map(|s| s.uid), Some(1));
        cache.insert("d".into(), state(4, 1)); // c, a become old; b dropped
        assert!(cache.get("b").is_none());
        assert!(cache.get("a").is_some() && cache.get("c").is_some());
    }

    #[test]
    fn layers_shadow_each_other_and_fold_on_success_only() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(
            "CREATE TABLE accounts (uid INTEGER PRIMARY KEY, user_id TEXT NOT NULL UNIQUE, \
             nick TEXT NOT NULL DEFAULT '', \
             face_url TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL); \
             CREATE TABLE heads (uid INTEGER PRIMARY KEY, head INTEGER NOT NULL); \
             INSERT INTO accounts (user_id, created_ms) VALUES ('a', 5); \
             INSERT INTO heads (uid, head) SELECT uid, 3 FROM accounts;",
        )
        .expect("schema");
        let mut acc = Accounts::new(100);
        let a = acc.get(&conn, "a").expect("get").expect("a exists");
        assert_eq!((a.head, a.created_ms), (3, 5));
        assert_eq!(acc.get(&conn, "zz").expect("get"), None);

        // A failed job leaves nothing behind.
        acc.set_head("a", a.clone(), 4);
        assert_eq!(acc.get(&conn, "a").expect("get").map(|s| s.head), Some(4));
        acc.job_failed();
        assert_eq!(acc.get(&conn, "a").expect("get").map(|s| s.head), Some(3));

        // A successful job is seen by the next job of the batch.
        acc.set_head("a", a.clone(), 4);
        acc.job_succeeded();
        assert_eq!(acc.get(&conn, "a").expect("get").map(|s| s.head), Some(4));

        // A rolled-back batch leaves the committed state.
        acc.batch_rolled_back();
        assert_eq!(acc.get(&conn, "a").expect("get").map(|s| s.head), Some(3));

        // A committed batch writes its heads and becomes the cache.
        acc.set_head("a", a, 4);
        acc.job_succeeded();
        acc.write_heads(&conn).expect("write heads");
        acc.batch_committed();
        let head: i64 = conn
            .query_row(
                "SELECT h.head FROM accounts a JOIN heads h ON h.uid = a.uid \
                 WHERE a.user_id = 'a'",
                [],
                |r| r.get(0),
            )
            .expect("head");
        assert_eq!(head, 4);
        assert_eq!(acc.cached(), 1);
        assert_eq!(acc.get(&conn, "a").expect("get").map(|s| s.head), Some(4));
    }
}
