//! The tail: message entries committed (or about to be) but not yet merged
//! into `chunks`.
//!
//! A send writes its message row and nothing else to the database; its
//! timeline entries (the recipient's and the sender's) wait here, in memory,
//! and the writer merges them into the views' chunks later, many at a time
//! (see `merge`). Readers take the union of the two.
//!
//! **What readers may rely on.** For each account, the tail holds a *suffix*
//! of its message entries: every entry with a number below the tail's first
//! one (the account's *floor*) is in `chunks` (or swept with its message),
//! and every entry from the floor on is here, in order. The writer keeps
//! this so:
//!
//! 1. a batch's entries are published here (as *pending*) before its
//!    `COMMIT`, marked committed right after it, and retracted if it fails:
//!    whoever learned of a committed entry (its number from `heads`,
//!    an ack, a live delivery) finds it here or in `chunks`;
//! 2. a merge writes a prefix of an account's entries into `chunks` in a
//!    transaction, and only once that committed drops them from here.
//!
//! So a reader first takes its account's entries and floor from here, then
//! opens its read snapshot of the database: an entry dropped before the
//! first step was merged before the second. From the database it takes only
//! entries below the floor (the rest may have been merged since, but the
//! reader has them from here already). Readers that answer "as of now"
//! (history, conversations) see only committed entries; `sync` reads a
//! window whose upper end is a committed head, so every entry in it is
//! committed.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use foldhash::HashMap;

use crate::chunk::ChunkEntry;

/// One message entry waiting to be merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TailEntry {
    /// Entry number in the account's timeline.
    pub(crate) seq: u64,
    /// Write time, Unix milliseconds.
    pub(crate) ts: u64,
    /// The other party of the conversation.
    pub(crate) peer_uid: i64,
    /// The message.
    pub(crate) msg_id: i64,
    /// `ENTRY_*` flags.
    pub(crate) flags: u8,
    /// The writer's transaction that wrote it.
    pub(crate) batch: u64,
}

impl From<&TailEntry> for ChunkEntry {
    /// The entry as a view's chunk holds it (the peer is the view's).
    fn from(e: &TailEntry) -> Self {
        ChunkEntry {
            seq: e.seq,
            ts: e.ts,
            msg_id: e.msg_id,
            flags: e.flags,
        }
    }
}

/// Which entries a reader sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Visible {
    /// Only entries of committed transactions.
    Committed,
    /// Pending ones too (for a window bounded by a committed head).
    All,
}

/// An account's entries as a reader took them.
#[derive(Debug, Default)]
pub(crate) struct UserTail {
    /// The account's first entry number held here: entries below it are in
    /// `chunks`; from it on, the database holds nothing the reader needs.
    /// `None` if the tail held nothing of the account.
    pub(crate) floor: Option<u64>,
    /// The entries kept by the reader's filter, in increasing `seq`.
    pub(crate) entries: Vec<TailEntry>,
}

impl UserTail {
    /// Whether a message entry read from `chunks` belongs to the reader's
    /// view (it is below the floor).
    pub(crate) fn below_floor(&self, seq: u64) -> bool {
        self.floor.is_none_or(|f| seq < f)
    }
}

/// What a merge takes: an account and a prefix of its entries.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The account.
    pub(crate) uid: i64,
    /// Its oldest entries, in increasing `seq`.
    pub(crate) entries: Vec<TailEntry>,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<i64, VecDeque<TailEntry>>,
    /// Accounts with entries, oldest first (in the order their first
    /// waiting entry arrived); each at most once.
    order: VecDeque<i64>,
    /// Transactions up to this one are committed.
    committed: u64,
    /// Entries held.
    len: usize,
}

/// The tail, shared by the writer (the only one that changes it) and readers.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    inner: Mutex<Inner>,
}

impl Tail {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }

    /// Writer: publishes transaction `batch`'s entries (`(account, entry)`,
    /// each account's in increasing `seq`, all above what it holds) as
    /// pending, before the transaction commits.
    pub(crate) fn publish(&self, batch: u64, entries: &[(i64, TailEntry)]) {
        if entries.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        for &(uid, entry) in entries {
            let q = inner.users.entry(uid).or_default();
            if q.is_empty() {
                inner.order.push_back(uid);
            }
            debug_assert!(
                q.back()
                    .is_none_or(|b| b.seq < entry.seq && b.msg_id < entry.msg_id)
            );
            q.push_back(TailEntry { batch, ..entry });
        }
        inner.len += entries.len();
    }

    /// Writer: transaction `batch` committed.
    pub(crate) fn commit(&self, batch: u64) {
        self.lock().committed = batch;
    }

    /// Writer: transaction `batch` did not commit; its entries (published
    /// for the accounts `uids`) go.
    pub(crate) fn retract(&self, batch: u64, uids: impl Iterator<Item = i64>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for uid in uids {
            let Some(q) = inner.users.get_mut(&uid) else {
                continue;
            };
            while q.back().is_some_and(|e| e.batch == batch) {
                q.pop_back();
                inner.len -= 1;
            }
            if q.is_empty() {
                inner.users.remove(&uid);
                inner.order.retain(|u| *u != uid);
            }
        }
    }

    /// Reader: `uid`'s floor and its entries that are `visible` and `keep`.
    pub(crate) fn read(
        &self,
        uid: i64,
        visible: Visible,
        keep: impl Fn(&TailEntry) -> bool,
    ) -> UserTail {
        let inner = self.lock();
        let Some(q) = inner.users.get(&uid) else {
            return UserTail::default();
        };
        let committed = inner.committed;
        UserTail {
            floor: q.front().map(|e| e.seq),
            entries: q
                .iter()
                .filter(|e| (visible == Visible::All || e.batch <= committed) && keep(e))
                .copied()
                .collect(),
        }
    }

    /// Writer: whether `uid` has a waiting entry with `peer_uid`.
    pub(crate) fn has_peer(&self, uid: i64, peer_uid: i64) -> bool {
        self.lock()
            .users
            .get(&uid)
            .is_some_and(|q| q.iter().any(|e| e.peer_uid == peer_uid))
    }

    /// Writer, between transactions (nothing pending): the oldest accounts'
    /// entries, whole accounts while they fit, until `max_entries` entries
    /// or `max_users` accounts are taken (the first account's oldest
    /// `max_entries` if it alone has more).
    pub(crate) fn take(&self, max_entries: usize, max_users: usize) -> Vec<Taken> {
        let inner = self.lock();
        debug_assert!(
            inner
                .users
                .values()
                .all(|q| q.iter().all(|e| e.batch <= inner.committed)),
            "merging while a transaction is pending"
        );
        let mut out = Vec::new();
        let mut room = max_entries.max(1);
        for uid in inner.order.iter().take(max_users.max(1)) {
            let Some(q) = inner.users.get(uid) else {
                continue;
            };
            if q.len() > room && !out.is_empty() {
                break;
            }
            let n = q.len().min(room);
            out.push(Taken {
                uid: *uid,
                entries: q.iter().take(n).copied().collect(),
            });
            room -= n;
            if room == 0 {
                break;
            }
        }
        out
    }

    /// Writer: the smallest message id among the entries that `taken` does
    /// not cover (`None` if there are none): what stays unmerged once
    /// `taken` is.
    ///
    /// An account's entries come in increasing message id as well as `seq`
    /// (both are given in commit order), so only the first entry after what
    /// is taken counts: one look per account, not a walk over every entry
    /// (which took 7 % of the writer's time at 25,000 sends/s, holding the
    /// readers' lock).
    pub(crate) fn min_msg_id_besides(&self, taken: &[Taken]) -> Option<i64> {
        let inner = self.lock();
        let prefix: HashMap<i64, usize> = taken.iter().map(|t| (t.uid, t.entries.len())).collect();
        inner
            .users
            .iter()
            .filter_map(|(uid, q)| q.get(prefix.get(uid).copied().unwrap_or(0)))
            .map(|e| e.msg_id)
            .min()
    }

    /// Writer: `taken` was merged and committed; its entries go.
    pub(crate) fn drop_merged(&self, taken: &[Taken]) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        for t in taken {
            let Some(last) = t.entries.last().map(|e| e.seq) else {
                continue;
            };
            let Some(q) = inner.users.get_mut(&t.uid) else {
                continue;
            };
            while q.front().is_some_and(|e| e.seq <= last) {
                q.pop_front();
                inner.len -= 1;
            }
            if q.is_empty() {
                inner.users.remove(&t.uid);
                // Taken accounts come from the front of the order.
                if let Some(i) = inner.order.iter().position(|u| *u == t.uid) {
                    inner.order.remove(i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(seq: u64, peer_uid: i64, msg_id: i64) -> TailEntry {
        TailEntry {
            seq,
            ts: 1000 + seq,
            peer_uid,
            msg_id,
            flags: 0,
            batch: 0,
        }
    }

    fn seqs(t: &UserTail) -> Vec<u64> {
        t.entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn pending_entries_are_seen_only_by_window_readers_until_committed() {
        let tail = Tail::default();
        tail.publish(1, &[(1, e(1, 2, 10)), (2, e(1, 1, 10))]);
        tail.commit(1);
        tail.publish(2, &[(1, e(2, 2, 11))]);
        let committed = tail.read(1, Visible::Committed, |_| true);
        assert_eq!((committed.floor, seqs(&committed)), (Some(1), vec![1]));
        assert_eq!(seqs(&tail.read(1, Visible::All, |_| true)), vec![1, 2]);
        tail.commit(2);
        assert_eq!(
            seqs(&tail.read(1, Visible::Committed, |_| true)),
            vec![1, 2]
        );
        assert_eq!(tail.len(), 3);
        // A filter keeps the floor of the whole account.
        let peer = tail.read(1, Visible::Committed, |e| e.seq > 1);
        assert_eq!((peer.floor, seqs(&peer)), (Some(1), vec![2]));
        assert!(peer.below_floor(0) && !peer.below_floor(1));
        assert!(tail.read(9, Visible::All, |_| true).below_floor(u64::MAX));
    }

    #[test]
    fn a_failed_transaction_leaves_nothing() {
        let tail = Tail::default();
        tail.publish(1, &[(1, e(1, 2, 10))]);
        tail.commit(1);
        tail.publish(2, &[(1, e(2, 2, 11)), (3, e(1, 1, 11))]);
        tail.retract(2, [1, 3].into_iter());
        assert_eq!(seqs(&tail.read(1, Visible::All, |_| true)), vec![1]);
        assert_eq!(tail.read(3, Visible::All, |_| true).floor, None);
        assert_eq!(tail.len(), 1);
        let taken = tail.take(100, 100);
        assert_eq!(taken.len(), 1, "the retracted account left the order");
    }

    #[test]
    fn merges_take_the_oldest_accounts_and_drop_only_what_they_took() {
        let tail = Tail::default();
        // Account 5 first, then 3, then 4.
        tail.publish(
            1,
            &[
                (5, e(1, 3, 1)),
                (3, e(1, 5, 1)),
                (5, e(2, 4, 2)),
                (4, e(1, 5, 2)),
                (5, e(3, 3, 3)),
                (3, e(2, 5, 3)),
            ],
        );
        tail.commit(1);
        let taken = tail.take(4, 10);
        let got: Vec<(i64, Vec<u64>)> = taken
            .iter()
            .map(|t| (t.uid, t.entries.iter().map(|e| e.seq).collect()))
            .collect();
        assert_eq!(
            got,
            vec![(5, vec![1, 2, 3])],
            "whole accounts while they fit"
        );
        assert_eq!(tail.min_msg_id_besides(&taken), Some(1));
        tail.drop_merged(&taken);
        assert_eq!(tail.read(5, Visible::All, |_| true).floor, None);
        assert_eq!(tail.len(), 3);

        // An account with more than a merge takes: its oldest entries.
        let taken = tail.take(1, 10);
        assert_eq!(taken[0].uid, 3);
        assert_eq!(taken[0].entries.len(), 1);
        assert_eq!(tail.min_msg_id_besides(&taken), Some(2));
        tail.drop_merged(&taken);
        let rest = tail.read(3, Visible::All, |_| true);
        assert_eq!((rest.floor, seqs(&rest)), (Some(2), vec![2]));
        // Account 3 stays first: it is still the oldest.
        assert_eq!(tail.take(100, 1)[0].uid, 3);
        let all = tail.take(100, 100);
        assert_eq!(tail.min_msg_id_besides(&all), None);
        tail.drop_merged(&all);
        assert_eq!(tail.len(), 0);
        assert!(tail.take(100, 100).is_empty());
    }

    #[test]
    fn has_peer_sees_waiting_entries() {
        let tail = Tail::default();
        tail.publish(1, &[(1, e(1, 2, 10))]);
        assert!(tail.has_peer(1, 2));
        assert!(!tail.has_peer(1, 3) && !tail.has_peer(2, 1));
    }
}
