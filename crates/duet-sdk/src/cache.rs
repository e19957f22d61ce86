//! The local cache: the device's timeline cursor and the store epoch it
//! belongs to, in a SQLite file.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use crate::{SdkError, SdkResult};

/// A cursor cache, in a file or in memory.
#[derive(Clone)]
pub struct Cache {
    db: Arc<Mutex<Connection>>,
}

fn err(e: rusqlite::Error) -> SdkError {
    SdkError::Cache(e.to_string())
}

impl Cache {
    /// Opens (creating) the cache file `dir/duet-cache.sqlite`.
    pub fn open(dir: &Path) -> SdkResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SdkError::Cache(format!("{}: {e}", dir.display())))?;
        let db = Connection::open(dir.join("duet-cache.sqlite")).map_err(err)?;
        Self::init(db)
    }

    /// A cache that lives only as long as the process.
    pub fn in_memory() -> SdkResult<Self> {
        Self::init(Connection::open_in_memory().map_err(err)?)
    }

    fn init(db: Connection) -> SdkResult<Self> {
        db.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS cursors(
                 user_id TEXT NOT NULL, device_id TEXT NOT NULL, epoch TEXT NOT NULL,
                 cursor INTEGER NOT NULL, PRIMARY KEY(user_id, device_id));",
        )
        .map_err(err)?;
        Ok(Cache {
            db: Arc::new(Mutex::new(db)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The saved (epoch, cursor) of a user's device.
    pub fn load(&self, user: &str, device: &str) -> SdkResult<Option<(String, u64)>> {
        self.lock()
            .query_row(
                "SELECT epoch, cursor FROM cursors WHERE user_id=?1 AND device_id=?2",
                params![user, device],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map_err(err)
    }

    /// Saves the cursor.
    pub fn save(&self, user: &str, device: &str, epoch: &str, cursor: u64) -> SdkResult<()> {
        self.lock()
            .prepare_cached(
                "INSERT INTO cursors(user_id, device_id, epoch, cursor) VALUES(?1,?2,?3,?4)
                 ON CONFLICT(user_id, device_id) DO UPDATE SET epoch=excluded.epoch, cursor=excluded.cursor",
            )
            .and_then(|mut s| s.execute(params![user, device, epoch, cursor as i64]))
            .map(|_| ())
            .map_err(err)
    }
}
