//! The ledger: one SQLite row per executed charge.
//!
//! SQLite calls block, so every call runs on tokio's blocking pool (`spawn_blocking`) against one
//! connection behind a mutex (SQLite serialises writers anyway). The database runs in WAL mode
//! with `synchronous = NORMAL`: durable across process crashes, fast enough for a demo.
//!
//! The ledger records the idempotency key each charge was made with, for auditing only: it does
//! *not* enforce uniqueness on it. Exactly-once comes from the idempotency layer in front; the
//! test checks it by counting rows per key.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// A ledger failure.
#[derive(Debug)]
pub struct LedgerError(String);

impl std::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ledger: {}", self.0)
    }
}

impl std::error::Error for LedgerError {}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError(e.to_string())
    }
}

/// A charge as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// `ch_000001`, …
    pub id: String,
    /// Minor units (cents).
    pub amount: i64,
    /// ISO currency code, lower case.
    pub currency: String,
    /// The customer charged.
    pub customer: String,
    /// The authenticated user who made the charge.
    pub user: String,
    /// The idempotency key the request carried, if any (audit only).
    pub idempotency_key: Option<String>,
}

/// A charge to record.
#[derive(Clone, Debug)]
pub struct NewCharge {
    /// Minor units.
    pub amount: i64,
    /// Currency code.
    pub currency: String,
    /// Customer.
    pub customer: String,
    /// Authenticated user.
    pub user: String,
    /// The request's idempotency key.
    pub idempotency_key: Option<String>,
}

/// The SQLite ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

impl Ledger {
    /// Opens (creating when missing) the ledger database at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// A ledger in memory (gone with the process).
    pub fn in_memory() -> Result<Self, LedgerError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, LedgerError> {
        // `journal_mode` answers with a row, so it is read rather than executed.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS charges (
                 seq             INTEGER PRIMARY KEY AUTOINCREMENT,
                 amount          INTEGER NOT NULL,
                 currency        TEXT NOT NULL,
                 customer        TEXT NOT NULL,
                 user_id         TEXT NOT NULL,
                 idempotency_key TEXT,
                 created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             );",
        )?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic under the lock cannot leave a half-written row (SQLite transactions).
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c).map_err(LedgerError::from)
        })
        .await
        .map_err(|e| LedgerError(format!("ledger task failed: {e}")))?
    }

    /// Records a charge (one transaction) and returns it.
    pub async fn insert(&self, new: NewCharge) -> Result<Charge, LedgerError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO charges (amount, currency, customer, user_id, idempotency_key) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![new.amount, new.currency, new.customer, new.user, new.idempotency_key],
            )?;
            let seq = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Charge {
                id: charge_id(seq),
                amount: new.amount,
                currency: new.currency,
                customer: new.customer,
                user: new.user,
                idempotency_key: new.idempotency_key,
            })
        })
        .await
    }

    /// The number of charges.
    pub async fn count(&self) -> Result<u64, LedgerError> {
        self.with(|c| c.query_row("SELECT COUNT(*) FROM charges", [], |r| r.get::<_, i64>(0)))
            .await
            .map(|n| u64::try_from(n).unwrap_or(0))
    }

    /// Every charge, oldest first.
    pub async fn all(&self) -> Result<Vec<Charge>, LedgerError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, amount, currency, customer, user_id, idempotency_key FROM charges ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Charge {
                    id: charge_id(r.get(0)?),
                    amount: r.get(1)?,
                    currency: r.get(2)?,
                    customer: r.get(3)?,
                    user: r.get(4)?,
                    idempotency_key: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// The charge with this id, if any.
    pub async fn get(&self, id: &str) -> Result<Option<Charge>, LedgerError> {
        let Some(seq) = id.strip_prefix("ch_").and_then(|n| n.parse::<i64>().ok()) else {
            return Ok(None);
        };
        self.with(move |c| {
            c.query_row(
                "SELECT seq, amount, currency, customer, user_id, idempotency_key FROM charges WHERE seq = ?1",
                [seq],
                |r| {
                    Ok(Charge {
                        id: charge_id(r.get(0)?),
                        amount: r.get(1)?,
                        currency: r.get(2)?,
                        customer: r.get(3)?,
                        user: r.get(4)?,
                        idempotency_key: r.get(5)?,
                    })
                },
            )
            .optional()
        })
        .await
    }
}

fn charge_id(seq: i64) -> String {
    format!("ch_{seq:06}")
}
