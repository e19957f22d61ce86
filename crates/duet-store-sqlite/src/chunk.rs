//! Message entries packed into chunks: the stored form of a conversation
//! view's timeline entries (schema 5).
//!
//! A chunk holds consecutive message entries (by entry number) of one
//! account's view of one peer, at most [`MAX_ENTRIES`] of them and about
//! [`MAX_BYTES`] bytes, so that a chunk row stays inside its B-tree page
//! (no overflow pages). Merging a few dozen entries of a view costs one row
//! written instead of two B-tree inserts per entry.
//!
//! Encoding (little data, no alignment): a format byte ([`FORMAT`]), then per
//! entry in increasing `seq` order:
//!
//! - `seq`: unsigned LEB128 varint of the difference to the previous entry's
//!   `seq` (the first entry's difference to the chunk's `first_seq`, i.e. 0);
//! - `ts`: zigzag varint of the difference to the previous entry's `ts`
//!   (the first to 0);
//! - `msg_id`: zigzag varint of the difference to the previous entry's
//!   `msg_id` (the first to 0);
//! - `flags`: one byte ([`crate::rows::ENTRY_UNREAD`], [`crate::rows::ENTRY_NO_LAST`]).

/// The encoding's version byte.
const FORMAT: u8 = 1;
/// Most entries in one chunk.
pub(crate) const MAX_ENTRIES: usize = 96;
/// A chunk is closed once its encoding passes this many bytes (it may
/// exceed it by one entry: at most 31 bytes).
pub(crate) const MAX_BYTES: usize = 900;

/// One message entry of a view (its peer is the chunk's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkEntry {
    /// Entry number in the account's timeline.
    pub(crate) seq: u64,
    /// Write time, Unix milliseconds.
    pub(crate) ts: u64,
    /// The message.
    pub(crate) msg_id: i64,
    /// `ENTRY_*` flags.
    pub(crate) flags: u8,
}

/// A chunk that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CorruptChunk {
    /// Unknown format byte (or an empty blob).
    #[error("unknown chunk format {0:?}")]
    Format(Option<u8>),
    /// The blob ends inside an entry.
    #[error("chunk ends inside an entry")]
    Truncated,
    /// A varint longer than 64 bits.
    #[error("chunk varint too long")]
    Varint,
    /// Entry numbers not increasing, or not starting at the chunk's first.
    #[error("chunk entries out of order")]
    Order,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes `entries` (increasing `seq`, the first being the chunk's first).
pub(crate) fn encode(entries: &[ChunkEntry], out: &mut Vec<u8>) {
    out.clear();
    out.push(FORMAT);
    let (mut seq, mut ts, mut msg_id) = (entries.first().map_or(0, |e| e.seq), 0u64, 0i64);
    for e in entries {
        put_varint(out, e.seq.wrapping_sub(seq));
        put_varint(out, zigzag(e.ts.wrapping_sub(ts) as i64));
        put_varint(out, zigzag(e.msg_id.wrapping_sub(msg_id)));
        out.push(e.flags);
        (seq, ts, msg_id) = (e.seq, e.ts, e.msg_id);
    }
}

/// The encoded size of `entries`, as [`encode`] writes them.
#[cfg(test)]
pub(crate) fn encoded_len(entries: &[ChunkEntry]) -> usize {
    let mut out = Vec::new();
    encode(entries, &mut out);
    out.len()
}

struct Reader<'a> {
    blob: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, CorruptChunk> {
        let b = *self.blob.get(self.at).ok_or(CorruptChunk::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, CorruptChunk> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(CorruptChunk::Varint);
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CorruptChunk::Varint)
    }
}

/// Decodes a chunk whose first entry is `first_seq`, appending its entries
/// to `out` in increasing `seq` order.
pub(crate) fn decode_into(
    blob: &[u8],
    first_seq: u64,
    out: &mut Vec<ChunkEntry>,
) -> Result<(), CorruptChunk> {
    match blob.first() {
        Some(&FORMAT) => {}
        other => return Err(CorruptChunk::Format(other.copied())),
    }
    let mut r = Reader { blob, at: 1 };
    let (mut seq, mut ts, mut msg_id) = (first_seq, 0u64, 0i64);
    let mut first = true;
    while r.at < blob.len() {
        let step = r.varint()?;
        if first != (step == 0) {
            return Err(CorruptChunk::Order);
        }
        first = false;
        seq = seq.checked_add(step).ok_or(CorruptChunk::Order)?;
        ts = ts.wrapping_add(unzigzag(r.varint()?) as u64);
        msg_id = msg_id.wrapping_add(unzigzag(r.varint()?));
        let flags = r.byte()?;
        out.push(ChunkEntry {
            seq,
            ts,
            msg_id,
            flags,
        });
    }
    Ok(())
}

/// Decodes a chunk (see [`decode_into`]).
pub(crate) fn decode(blob: &[u8], first_seq: u64) -> Result<Vec<ChunkEntry>, CorruptChunk> {
    let mut out = Vec::new();
    decode_into(blob, first_seq, &mut out)?;
    Ok(out)
}

/// Splits `entries` (increasing `seq`) into chunks: the longest prefixes
/// that stay within [`MAX_ENTRIES`] and [`MAX_BYTES`].
pub(crate) fn split(entries: &[ChunkEntry]) -> impl Iterator<Item = &[ChunkEntry]> {
    let mut rest = entries;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 1;
        let mut prev: Option<&ChunkEntry> = None;
        let mut n = 0;
        for e in rest.iter().take(MAX_ENTRIES) {
            if bytes > MAX_BYTES {
                break;
            }
            bytes += entry_len(prev, e);
            prev = Some(e);
            n += 1;
        }
        let (head, tail) = rest.split_at(n.max(1));
        rest = tail;
        Some(head)
    })
}

/// Whether a chunk of `entries` entries and `bytes` bytes takes more.
pub(crate) fn has_room(entries: usize, bytes: usize) -> bool {
    entries < MAX_ENTRIES && bytes <= MAX_BYTES
}

fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

/// Encoded size of `e` after `prev` (or as a chunk's first entry).
fn entry_len(prev: Option<&ChunkEntry>, e: &ChunkEntry) -> usize {
    let (seq, ts, msg_id) = prev.map_or((e.seq, 0, 0), |p| (p.seq, p.ts, p.msg_id));
    varint_len(e.seq.wrapping_sub(seq))
        + varint_len(zigzag(e.ts.wrapping_sub(ts) as i64))
        + varint_len(zigzag(e.msg_id.wrapping_sub(msg_id)))
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), for varied entries.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn entries(rng: &mut Rng, n: usize) -> Vec<ChunkEntry> {
        let mut seq = rng.next() % 1_000_000 + 1;
        let mut ts = 1_700_000_000_000 + rng.next() % 1_000_000;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(ChunkEntry {
                seq,
                ts,
                // Messages of a view are mostly newer, but not always
                // (ids are the store's, entries the account's).
                msg_id: (rng.next() % 100_000_000) as i64 - 1000,
                flags: (rng.next() % 4) as u8,
            });
            seq += 1 + rng.next() % 300;
            // Clocks may step back.
            ts = ts.wrapping_add(rng.next() % 10_000).wrapping_sub(2_000);
        }
        out
    }

    #[test]
    fn entries_round_trip() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut buf = Vec::new();
        for n in [0, 1, 2, 7, 96, 500] {
            for _ in 0..50 {
                let e = entries(&mut rng, n);
                encode(&e, &mut buf);
                assert_eq!(buf.len(), encoded_len(&e));
                let first = e.first().map_or(0, |e| e.seq);
                assert_eq!(decode(&buf, first), Ok(e));
            }
        }
        // Extremes of every field.
        let e = vec![
            ChunkEntry {
                seq: 1,
                ts: 0,
                msg_id: i64::MIN,
                flags: 255,
            },
            ChunkEntry {
                seq: u64::MAX,
                ts: u64::MAX,
                msg_id: i64::MAX,
                flags: 0,
            },
        ];
        encode(&e, &mut buf);
        assert_eq!(decode(&buf, 1), Ok(e));
    }

    #[test]
    fn split_keeps_chunks_small_and_everything_in_order() {
        let mut rng = Rng(42);
        for n in [1, 95, 96, 97, 1000] {
            let e = entries(&mut rng, n);
            let parts: Vec<&[ChunkEntry]> = split(&e).collect();
            let joined: Vec<ChunkEntry> = parts.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(joined, e, "every entry, once, in order");
            for p in &parts {
                assert!(!p.is_empty() && p.len() <= MAX_ENTRIES);
                assert!(encoded_len(p) <= MAX_BYTES + 31, "{} bytes", encoded_len(p));
            }
        }
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        let e = entries(&mut Rng(7), 10);
        let mut buf = Vec::new();
        encode(&e, &mut buf);
        assert_eq!(decode(&[], 1), Err(CorruptChunk::Format(None)));
        assert_eq!(decode(&[9, 0], 1), Err(CorruptChunk::Format(Some(9))));
        for cut in 2..buf.len() {
            // Every prefix either decodes to a prefix of the entries or fails.
            match decode(&buf[..cut], e[0].seq) {
                Ok(got) => assert_eq!(got[..], e[..got.len()]),
                Err(err) => assert!(matches!(err, CorruptChunk::Truncated)),
            }
        }
        // A first entry that does not start at the chunk's number.
        let mut bad = vec![FORMAT];
        put_varint(&mut bad, 3);
        bad.extend_from_slice(&[0, 0, 0]);
        assert_eq!(decode(&bad, 1), Err(CorruptChunk::Order));
        // A varint of eleven bytes.
        let mut long = vec![FORMAT];
        long.extend_from_slice(&[0xff; 10]);
        long.push(1);
        assert_eq!(decode(&long, 1), Err(CorruptChunk::Varint));
        let mut rng = Rng(3);
        for _ in 0..2000 {
            let len = (rng.next() % 40) as usize;
            let junk: Vec<u8> = std::iter::once(FORMAT)
                .chain((0..len).map(|_| rng.next() as u8))
                .collect();
            let _ = decode(&junk, rng.next());
        }
    }
}
