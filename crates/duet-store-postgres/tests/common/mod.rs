//! Test helpers: a real PostgreSQL server, one fresh schema per store.
//!
//! The server is `DUET_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). A server that cannot be reached
//! fails the test with a clear message: these tests never skip silently.
//! Schemas are named `duet_test_<random hex>` and dropped when the test ends
//! (set `DUET_TEST_PG_KEEP=1` to keep them for inspection).

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, PoisonError};

use duet_store_postgres::{PgOptions, PostgresStore};
use futures_util::FutureExt;

/// The server the tests use.
pub fn pg_url() -> String {
    std::env::var("DUET_TEST_PG_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A new random schema name.
pub fn fresh_schema() -> String {
    format!("duet_test_{:016x}", rand::random::<u64>())
}

/// Connects a store (one "node") to `schema`; panics with a clear message if
/// the server cannot be reached.
pub async fn connect(url: &str, schema: &str, pool_size: usize) -> PostgresStore {
    let mut opts = PgOptions::new(url);
    opts.schema = Some(schema.to_owned());
    opts.pool_size = pool_size;
    PostgresStore::connect(opts).await.unwrap_or_else(|e| {
        panic!(
            "cannot open a PostgreSQL store at {url} (schema {schema}): {e}\n\
             These tests need a running PostgreSQL server: start it, or point \
             DUET_TEST_PG_URL at one (e.g. postgres://postgres@127.0.0.1:5432/test)."
        )
    })
}

/// Schemas made by a test, dropped by [`Schemas::run`].
pub struct Schemas {
    url: String,
    names: Mutex<Vec<String>>,
}

impl Schemas {
    /// No schemas yet, on the test server.
    pub fn new() -> Self {
        Schemas {
            url: pg_url(),
            names: Mutex::new(Vec::new()),
        }
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new schema name, to be dropped at the end.
    pub fn make(&self) -> String {
        let name = fresh_schema();
        self.names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name.clone());
        name
    }

    /// Runs `test`, then drops every schema made (even if `test` panicked),
    /// then resumes any panic.
    pub async fn run<F: Future<Output = ()>>(&self, test: F) {
        let outcome = AssertUnwindSafe(test).catch_unwind().await;
        self.drop_all().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    async fn drop_all(&self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap_or_else(PoisonError::into_inner));
        if names.is_empty() {
            return;
        }
        if std::env::var("DUET_TEST_PG_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("keeping test schemas: {}", names.join(", "));
            return;
        }
        let (client, conn) = match tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("cannot drop test schemas {}: {e}", names.join(", "));
                return;
            }
        };
        let task = tokio::spawn(conn);
        for name in &names {
            // Names come from `fresh_schema`: safe to splice.
            if let Err(e) = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await
            {
                eprintln!("cannot drop test schema {name}: {e}");
            }
        }
        drop(client);
        let _ = task.await;
    }
}
