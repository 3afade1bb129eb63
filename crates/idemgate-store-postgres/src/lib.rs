//! idemgate's PostgreSQL store: one table shared by a fleet of gateways.
//!
//! - **Schema.** [`PostgresStore::connect`] creates its tables if they are missing, inside one
//!   transaction holding `pg_advisory_xact_lock`, so any number of gateways may start at once
//!   against a fresh database. The schema version is the `schema_version` row of `idemgate_meta`;
//!   a database written by a newer idemgate is refused ([`OpenError::SchemaTooNew`]).
//! - **One statement per operation.** A claim is one statement that either returns the live
//!   record (read only: a replay writes nothing) or takes the key with `INSERT … ON CONFLICT … DO
//!   UPDATE … WHERE` (absent, or its deadline passed): a first request costs two round trips
//!   (claim, complete), a replay one. Statements are
//!   prepared once per pooled connection, when the connection is made.
//! - **Batching** (`batch`). Claims and completions that arrive while [`Options::batches`]
//!   statements of their kind are already running wait, and the next statement carries up to
//!   [`Options::batch_size`] of them ([`CLAIM_MANY`], [`COMPLETE_MANY`]: the same decisions,
//!   row by row, over arrays): one commit, one WAL flush and one round trip for the lot. An idle
//!   store runs each operation alone, at once, with the one-row statements. A batch holds each
//!   key at most once and locks its rows in id order (so two batches never deadlock); a batch
//!   that fails answers every operation in it with the error; an operation whose caller gave up
//!   before its batch started is skipped. `batch_size=1` turns batching off.
//! - **The state machine of `idemgate_core::record`, in SQL.** Every time decision compares the
//!   caller's `now_ms` with the row's `deadline_ms` (the database's clock is never used);
//!   `complete` and `release` apply only to an in-flight row holding the caller's fencing token,
//!   so a stale owner's `complete` is rejected ([`CompleteError::Fenced`]).
//! - **Durability** is what the server's `synchronous_commit` says; the store does not change it.
//! - **Outages.** Every operation (waiting for a pooled connection, connecting, the statement) is
//!   bounded by one timeout ([`DEFAULT_OP_TIMEOUT`]) and answers [`StoreError::Timeout`] or
//!   [`StoreError::Unavailable`]. A connection that failed or timed out is dropped from the pool;
//!   the pool makes new ones when the server answers again.
//! - **Purge.** `purge_expired` deletes at most `limit` expired rows per call (rows another
//!   session holds locked are skipped), so the gateway's background purge stays in small batches.
//!
//! `--store postgres://user@host:port/db?pool_size=16&timeout_ms=2000&batch_size=64&batches=1`
//! (or `postgresql://`): `pool_size`, `timeout_ms`, `batch_size` and `batches` are this store's
//! options and are removed from the URL; every other parameter goes to `tokio-postgres`.
//! Connections are made without TLS.
#![deny(missing_docs)]

mod batch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use idemgate_core::record::CorruptRecord;
use idemgate_core::{
    BoxFuture, Claim, ClaimRequest, CompleteError, FencingToken, Fingerprint, Purged, Record, RecordId, Store,
    StoreError, StoredResponse,
};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

/// Pooled connections per store unless the URL says `pool_size=N`.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// The bound on one operation unless the URL says `timeout_ms=N`.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Most operations one batch statement carries unless the URL says `batch_size=N`.
pub const DEFAULT_BATCH_SIZE: usize = 64;

/// Batch statements of one kind (claims, completions) running at once unless the URL says
/// `batches=N`. One claim and one completion statement at a time made the most new keys per
/// second in the harness (0.19 × nginx against 0.13–0.17 with two, 0.16 with four): the server's
/// cost is per statement (commit, WAL flush), so fewer, fuller statements carry more keys.
pub const DEFAULT_BATCHES: usize = 1;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

/// How often a claim is retried when it raced with a concurrent writer (see [`CLAIM`]).
const CLAIM_ATTEMPTS: usize = 5;

/// The key of the transaction-scoped advisory lock held while the schema is checked or created.
const MIGRATION_LOCK: i64 = 0x6964_656d_6761_7465; // "idemgate"

/// The schema, version 1. `state`: 1 in flight, 2 completed. `token`: the owner's fencing token
/// (a `u64` stored as the `i64` with the same bits), NULL once completed. `deadline_ms`: lease end
/// or TTL end (Unix ms). `takeover`: the current lease took over an expired one.
pub const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS idemgate_records (
    id          bytea    PRIMARY KEY,
    state       smallint NOT NULL CHECK (state IN (1, 2)),
    fingerprint bytea    NOT NULL,
    token       bigint,
    deadline_ms bigint   NOT NULL,
    response    bytea,
    takeover    boolean  NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS idemgate_records_deadline ON idemgate_records (deadline_ms);
";

/// Claims a key in one statement. `$1` id, `$2` fingerprint, `$3` the new token, `$4` the new
/// lease end, `$5` now.
///
/// `live` reads the row first: when the key is live (a replay, or a request in flight) the
/// statement writes nothing, takes no row lock and needs no transaction id, so its commit does
/// not wait for a WAL flush. Otherwise the `INSERT` takes the key when no row exists, or when the
/// row's deadline has passed (`DO UPDATE … WHERE deadline_ms <= now`, evaluated on the latest
/// row version under its row lock, so two claims never both take it). `takeover` is computed
/// from the replaced row. When the `INSERT` finds a live row that the statement's snapshot did
/// not show (a concurrent writer), it returns nothing and the last branch returns the row as the
/// snapshot sees it (absent or expired): the caller then retries the statement, whose new
/// snapshot sees it.
pub const CLAIM: &str = "
WITH live AS (
    SELECT state, fingerprint, deadline_ms, response FROM idemgate_records
    WHERE id = $1 AND deadline_ms > $5
), ins AS (
    INSERT INTO idemgate_records AS r (id, state, fingerprint, token, deadline_ms, response, takeover)
    SELECT $1, 1, $2, $3, $4, NULL, false WHERE NOT EXISTS (SELECT 1 FROM live)
    ON CONFLICT (id) DO UPDATE
        SET state = 1, fingerprint = EXCLUDED.fingerprint, token = EXCLUDED.token,
            deadline_ms = EXCLUDED.deadline_ms, response = NULL, takeover = (r.state = 1)
        WHERE r.deadline_ms <= $5
    RETURNING r.takeover
)
SELECT 0::smallint AS state, ins.takeover, NULL::bytea AS fingerprint, NULL::bigint AS deadline_ms,
       NULL::bytea AS response
FROM ins
UNION ALL
SELECT l.state, false, l.fingerprint, l.deadline_ms, l.response FROM live l
UNION ALL
SELECT r.state, false, r.fingerprint, r.deadline_ms, r.response
FROM idemgate_records r
WHERE r.id = $1 AND NOT EXISTS (SELECT 1 FROM ins) AND NOT EXISTS (SELECT 1 FROM live)
";

/// [`CLAIM`] for many keys at once: `$1` ids, `$2` fingerprints, `$3` new tokens, `$4` lease
/// ends, `$5` each caller's now (arrays of one length, ids distinct and sorted). Each key is
/// decided exactly as [`CLAIM`] decides it, against its own caller's clock; every result row
/// starts with its id, and a key without a row raced with a concurrent writer (retry it). The
/// insert takes its rows in id order, so two batches never wait on each other in a cycle.
pub const CLAIM_MANY: &str = "
WITH req AS (
    SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[], $5::bigint[])
        AS q(id, fingerprint, token, lease_until, now_ms)
), live AS (
    SELECT r.id, r.state, r.fingerprint, r.deadline_ms, r.response
    FROM idemgate_records r JOIN req q ON r.id = q.id
    WHERE r.deadline_ms > q.now_ms
), ins AS (
    INSERT INTO idemgate_records AS r (id, state, fingerprint, token, deadline_ms, response, takeover)
    SELECT q.id, 1, q.fingerprint, q.token, q.lease_until, NULL, false
    FROM req q WHERE NOT EXISTS (SELECT 1 FROM live l WHERE l.id = q.id)
    ORDER BY q.id
    ON CONFLICT (id) DO UPDATE
        SET state = 1, fingerprint = EXCLUDED.fingerprint, token = EXCLUDED.token,
            deadline_ms = EXCLUDED.deadline_ms, response = NULL, takeover = (r.state = 1)
        WHERE r.deadline_ms <= (SELECT q.now_ms FROM req q WHERE q.id = r.id)
    RETURNING r.id, r.takeover
)
SELECT ins.id, 0::smallint AS state, ins.takeover, NULL::bytea AS fingerprint,
       NULL::bigint AS deadline_ms, NULL::bytea AS response
FROM ins
UNION ALL
SELECT l.id, l.state, false, l.fingerprint, l.deadline_ms, l.response FROM live l
UNION ALL
SELECT r.id, r.state, false, r.fingerprint, r.deadline_ms, r.response
FROM idemgate_records r JOIN req q ON r.id = q.id
WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.id = r.id)
  AND NOT EXISTS (SELECT 1 FROM live WHERE live.id = r.id)
";

/// `$1` id, `$2` token, `$3` TTL end, `$4` response. No row: the caller was fenced off.
pub const COMPLETE: &str = "
UPDATE idemgate_records SET state = 2, deadline_ms = $3, response = $4, token = NULL
WHERE id = $1 AND state = 1 AND token = $2
";

/// [`COMPLETE`] for many keys at once: `$1` ids (distinct, sorted), `$2` tokens, `$3` TTL ends,
/// `$4` responses. Returns the ids completed; a key not returned was fenced off.
pub const COMPLETE_MANY: &str = "
WITH q AS (
    SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::bytea[])
        AS q(id, token, deadline_ms, response)
    ORDER BY id
)
UPDATE idemgate_records r
SET state = 2, deadline_ms = q.deadline_ms, response = q.response, token = NULL
FROM q
WHERE r.id = q.id AND r.state = 1 AND r.token = q.token
RETURNING r.id
";

/// `$1` id, `$2` token.
pub const RELEASE: &str = "DELETE FROM idemgate_records WHERE id = $1 AND state = 1 AND token = $2";

/// `$1` id.
pub const GET: &str = "SELECT state, fingerprint, token, deadline_ms, response FROM idemgate_records WHERE id = $1";

/// `$1` id.
pub const DELETE: &str = "DELETE FROM idemgate_records WHERE id = $1";

/// `$1` now, `$2` limit. The outer `deadline_ms <= $1` is re-checked on the latest row version,
/// so a row taken over between the scan and the delete is kept.
pub const PURGE: &str = "
DELETE FROM idemgate_records
WHERE deadline_ms <= $1 AND id IN (
    SELECT id FROM idemgate_records WHERE deadline_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED
)
";

/// Liveness check.
pub const PING: &str = "SELECT 1";

/// `$1` the secret check value; kept if none is stored yet.
pub const SECRET_INSERT: &str =
    "INSERT INTO idemgate_meta (key, value) VALUES ('secret_check', $1) ON CONFLICT (key) DO NOTHING";

/// The stored secret check value.
pub const SECRET_SELECT: &str = "SELECT value FROM idemgate_meta WHERE key = 'secret_check'";

/// Set on each new pooled connection, before any statement runs. Every statement of the store
/// finds its rows by id (the purge by deadline), but PostgreSQL plans a prepared statement once
/// (a generic plan, after five runs) from the table's statistics of that moment: planned while
/// the table is new and empty, the batch statements' joins became a sequential scan of the whole
/// table per statement (11 ms at 30k rows, measured). With these off, every plan looks rows up
/// through an index, whatever the statistics said when it was made.
pub const SESSION: &str = "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off";

/// Every statement, prepared on each new pooled connection.
const STATEMENTS: [&str; 11] = [
    CLAIM,
    CLAIM_MANY,
    COMPLETE,
    COMPLETE_MANY,
    RELEASE,
    GET,
    DELETE,
    PURGE,
    PING,
    SECRET_INSERT,
    SECRET_SELECT,
];

/// What a statement returned.
enum Ran {
    Rows(Vec<Row>),
    Changed(u64),
}

/// Opening the store failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The URL is not a PostgreSQL connection string tokio-postgres understands.
    #[error("invalid PostgreSQL URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// One of this store's URL options has a bad value.
    #[error("invalid PostgreSQL store option {name}={value:?}: {reason}")]
    Option {
        /// The option.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The connection pool could not be built.
    #[error("cannot build the PostgreSQL connection pool: {0}")]
    Pool(#[source] deadpool_postgres::BuildError),
    /// The server could not be reached.
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        /// Host, port and database (no password).
        target: String,
        /// The cause.
        source: StoreError,
    },
    /// Creating or checking the schema failed.
    #[error("cannot create or check the idemgate schema in {target}: {source}")]
    Migrate {
        /// Host, port and database (no password).
        target: String,
        /// The cause.
        source: tokio_postgres::Error,
    },
    /// The schema version row is not a number.
    #[error("the idemgate schema version stored in {target} is not readable")]
    BadSchemaVersion {
        /// Host, port and database (no password).
        target: String,
    },
    /// The database was written by a newer idemgate.
    #[error("the idemgate schema in {target} is version {found}; this build understands up to {supported}")]
    SchemaTooNew {
        /// Host, port and database (no password).
        target: String,
        /// The stored version.
        found: u32,
        /// [`SCHEMA_VERSION`].
        supported: u32,
    },
}

/// Store options; [`PostgresStore::connect`] reads them from the URL.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Most pooled connections.
    pub pool_size: usize,
    /// The bound on one operation, from waiting for a connection to the statement's answer.
    pub op_timeout: Duration,
    /// Most claims or completions one statement carries (1: every operation runs alone).
    pub batch_size: usize,
    /// Batch statements of one kind running at once; operations arriving while that many run
    /// wait for the next one.
    pub batches: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pool_size: DEFAULT_POOL_SIZE,
            op_timeout: DEFAULT_OP_TIMEOUT,
            batch_size: DEFAULT_BATCH_SIZE,
            batches: DEFAULT_BATCHES,
        }
    }
}

/// The PostgreSQL store (see the crate docs).
pub struct PostgresStore {
    inner: Arc<Inner>,
}

/// What the store's operations and its batch drivers share.
struct Inner {
    pool: Pool,
    op_timeout: Duration,
    round_trips: AtomicU64,
    target: String,
    batch_size: usize,
    claims: batch::Queue<ClaimJob>,
    completions: batch::Queue<CompleteJob>,
}

/// A claim waiting for its batch.
struct ClaimJob {
    req: ClaimRequest,
    token: FencingToken,
    attempts: usize,
    tx: oneshot::Sender<Result<Claim, StoreError>>,
}

impl batch::Job for ClaimJob {
    type Key = RecordId;
    fn key(&self) -> RecordId {
        self.req.id
    }
    fn abandoned(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A completion waiting for its batch.
struct CompleteJob {
    id: RecordId,
    token: FencingToken,
    response: StoredResponse,
    expires_at_ms: u64,
    tx: oneshot::Sender<Result<(), CompleteError>>,
}

impl batch::Job for CompleteJob {
    type Key = RecordId;
    fn key(&self) -> RecordId {
        self.id
    }
    fn abandoned(&self) -> bool {
        self.tx.is_closed()
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.inner.target)
            .field("op_timeout", &self.inner.op_timeout)
            .field("batch_size", &self.inner.batch_size)
            .finish_non_exhaustive()
    }
}

/// Splits this store's options off `url`: the URL for tokio-postgres, and the options.
pub fn parse_url(url: &str) -> Result<(String, Options), OpenError> {
    let mut opts = Options::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), opts));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "pool_size" => opts.pool_size = count_option("pool_size", v)?,
            "batch_size" => opts.batch_size = count_option("batch_size", v)?,
            "batches" => opts.batches = count_option("batches", v)?,
            "timeout_ms" => {
                opts.op_timeout = match v.parse::<u64>() {
                    Ok(n) if n >= 1 => Duration::from_millis(n),
                    _ => {
                        return Err(OpenError::Option {
                            name: "timeout_ms",
                            value: v.to_string(),
                            reason: "expected a whole number of milliseconds, at least 1",
                        })
                    }
                }
            }
            _ => kept.push(pair),
        }
    }
    if kept.is_empty() {
        Ok((base.to_string(), opts))
    } else {
        Ok((format!("{base}?{}", kept.join("&")), opts))
    }
}

/// A count option: a whole number from 1 to 1024.
fn count_option(name: &'static str, v: &str) -> Result<usize, OpenError> {
    match v.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(OpenError::Option {
            name,
            value: v.to_string(),
            reason: "expected a whole number from 1 to 1024",
        }),
    }
}

/// Host, port and database of a config, for messages (never the password).
fn describe(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", cfg.get_dbname().unwrap_or("(default)"))
}

/// A deadline as an `i64` column value: deadlines past `i64::MAX` ms (in 292 million years) are
/// kept as `i64::MAX`, which compares the same against any real clock.
fn to_db_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn from_db_ms(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

fn fingerprint(bytes: &[u8]) -> Result<Fingerprint, CorruptRecord> {
    bytes
        .try_into()
        .map(Fingerprint)
        .map_err(|_| CorruptRecord("fingerprint is not 32 bytes"))
}

fn response(bytes: Option<Vec<u8>>) -> Result<StoredResponse, CorruptRecord> {
    let bytes = bytes.ok_or(CorruptRecord("completed record without a response"))?;
    StoredResponse::from_bytes(Bytes::from(bytes)).map_err(|e| CorruptRecord(e.0))
}

fn map_pg(e: &tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 08: connection exception; 57P0x: shutdown, crash, starting up; 53300: too many clients.
        if code.starts_with("08") || code.starts_with("57P") || code == "53300" {
            return StoreError::Unavailable(format!("PostgreSQL: {db}"));
        }
        // 53100 disk full, 53200 out of memory: full, not down (nothing may run unprotected).
        if code == "53100" || code == "53200" {
            return StoreError::OutOfSpace(format!("PostgreSQL: {db}"));
        }
        return StoreError::Backend(Box::new(db.clone()));
    }
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P")
        }
        None => true,
    }
}

/// A claim that kept racing with concurrent writers.
fn raced(id: RecordId) -> StoreError {
    StoreError::Unavailable(format!(
        "claim of {} kept racing with concurrent writers ({CLAIM_ATTEMPTS} attempts)",
        id.to_hex()
    ))
}

/// A deadlock (`40P01`) or serialization failure (`40001`): the statement changed nothing and
/// may run again.
fn is_retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Backend(b) => b
            .downcast_ref::<tokio_postgres::error::DbError>()
            .is_some_and(|db| matches!(db.code().code(), "40P01" | "40001")),
        _ => false,
    }
}

/// One batch's error, for each operation in it.
fn copy_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Timeout(d) => StoreError::Timeout(*d),
        StoreError::Corrupt(c) => StoreError::Corrupt(c.clone()),
        StoreError::OutOfSpace(s) => StoreError::OutOfSpace(s.clone()),
        other => StoreError::Backend(other.to_string().into()),
    }
}

/// Decodes a claim's result row whose columns start at `base`: `None` when the row shows the key
/// as the statement's snapshot saw it while a concurrent claim had taken it (try again).
fn decode_claim(row: &Row, base: usize, now: i64, token: FencingToken) -> Result<Option<Claim>, StoreError> {
    let state: i16 = get_col(row, base)?;
    if state == 0 {
        let takeover: bool = get_col(row, base + 1)?;
        return Ok(Some(Claim::Acquired { token, takeover }));
    }
    let fp = fingerprint(&get_col::<Vec<u8>>(row, base + 2)?)?;
    let deadline: i64 = get_col(row, base + 3)?;
    if deadline <= now {
        // Our snapshot shows an expired row, yet the insert found a live one: a concurrent
        // claim took it after our snapshot. Try again.
        return Ok(None);
    }
    match state {
        1 => Ok(Some(Claim::InFlight {
            fingerprint: fp,
            lease_until_ms: from_db_ms(deadline),
        })),
        2 => Ok(Some(Claim::Completed {
            fingerprint: fp,
            response: response(get_col(row, base + 4)?)?,
        })),
        _ => Err(CorruptRecord("unknown record state").into()),
    }
}

/// Answers a caller waiting for its batch: the outcome, or an error when the batch's driver went
/// away (its runtime shut down) or the operation's time ran out.
async fn answer<T, E: From<StoreError>>(
    rx: oneshot::Receiver<Result<T, E>>,
    deadline: Instant,
    timeout: Duration,
) -> Result<T, E> {
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => {
            Err(StoreError::Unavailable("the PostgreSQL store's batch stopped before answering".into()).into())
        }
        Err(_) => Err(StoreError::Timeout(timeout).into()),
    }
}

/// Runs batches of claims until the queue is empty.
async fn drive_claims(inner: Arc<Inner>) {
    let mut driver = batch::DriverGuard::new(&inner.claims);
    while let Some(jobs) = driver.next() {
        inner.claim_batch(jobs).await;
    }
}

/// Runs batches of completions until the queue is empty.
async fn drive_completions(inner: Arc<Inner>) {
    let mut driver = batch::DriverGuard::new(&inner.completions);
    while let Some(jobs) = driver.next() {
        inner.complete_batch(jobs).await;
    }
}

fn get_col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T, StoreError> {
    row.try_get(idx).map_err(|e| StoreError::Backend(Box::new(e)))
}

impl PostgresStore {
    /// Connects to `url` (`postgres://` or `postgresql://`, see the crate docs), creates or checks
    /// the schema, and returns the store.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use idemgate_core::Store;
    /// use idemgate_store_postgres::PostgresStore;
    ///
    /// let url = "postgres://idemgate:secret@127.0.0.1:5432/idemgate?pool_size=16";
    /// let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(url).await?);
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        let (url, opts) = parse_url(url)?;
        Self::connect_with(&url, opts).await
    }

    /// Like [`PostgresStore::connect`], with the options given here (`url` must not carry them).
    pub async fn connect_with(url: &str, opts: Options) -> Result<Self, OpenError> {
        let mut cfg: tokio_postgres::Config = url.parse().map_err(OpenError::Url)?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(opts.op_timeout);
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("idemgate");
        }
        let target = describe(&cfg);
        let mgr = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                // Only checks that the connection is open: no extra round trip per operation.
                // Connections that fail are taken out of the pool by the store itself.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(opts.op_timeout))
            .create_timeout(Some(opts.op_timeout))
            .recycle_timeout(Some(opts.op_timeout))
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client.batch_execute(SESSION).await.map_err(HookError::Backend)?;
                    // Prepare every statement at once (pipelined: about one round trip).
                    let prepared = futures_util::future::join_all(STATEMENTS.iter().map(|s| client.prepare_cached(s)));
                    for r in prepared.await {
                        r.map_err(HookError::Backend)?;
                    }
                    Ok(())
                })
            }))
            .build()
            .map_err(OpenError::Pool)?;
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                op_timeout: opts.op_timeout,
                round_trips: AtomicU64::new(0),
                target,
                batch_size: opts.batch_size,
                claims: batch::Queue::new(opts.batches, opts.batch_size),
                completions: batch::Queue::new(opts.batches, opts.batch_size),
            }),
        };
        store.inner.migrate(&cfg).await?;
        Ok(store)
    }
}

impl Inner {
    /// Creates the schema if it is missing, under the migration lock, in one transaction, on a
    /// connection of its own (pooled connections prepare statements that need the tables).
    async fn migrate(&self, cfg: &tokio_postgres::Config) -> Result<(), OpenError> {
        let target = || self.target.clone();
        let bound = self.op_timeout.max(Duration::from_secs(10));
        let migrate_err = |source| OpenError::Migrate {
            target: target(),
            source,
        };
        let work = async {
            let (mut client, conn) = cfg.connect(NoTls).await.map_err(|e| OpenError::Connect {
                target: target(),
                source: map_pg(&e),
            })?;
            let conn = tokio::spawn(conn);
            let result = async {
                let tx = client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                    .await?;
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS idemgate_meta (key text PRIMARY KEY, value bytea NOT NULL)",
                )
                .await?;
                let row = tx
                    .query_opt("SELECT value FROM idemgate_meta WHERE key = 'schema_version'", &[])
                    .await?;
                let found = row.map(|r| r.try_get::<_, Vec<u8>>(0)).transpose()?;
                if found.is_none() {
                    tx.batch_execute(SCHEMA_V1).await?;
                    tx.execute(
                        "INSERT INTO idemgate_meta (key, value) VALUES ('schema_version', $1)",
                        &[&SCHEMA_VERSION.to_string().into_bytes()],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok::<_, tokio_postgres::Error>(found)
            }
            .await
            .map_err(migrate_err);
            drop(client);
            conn.abort();
            result
        };
        let found = tokio::time::timeout(bound, work)
            .await
            .map_err(|_| OpenError::Connect {
                target: target(),
                source: StoreError::Timeout(bound),
            })??;
        if let Some(v) = found {
            let version = std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or_else(|| OpenError::BadSchemaVersion { target: target() })?;
            if version > SCHEMA_VERSION {
                return Err(OpenError::SchemaTooNew {
                    target: target(),
                    found: version,
                    supported: SCHEMA_VERSION,
                });
            }
        }
        Ok(())
    }

    async fn connection(&self, deadline: Instant) -> Result<Object, StoreError> {
        match tokio::time::timeout_at(deadline, self.pool.get()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(PoolError::Timeout(_))) | Err(_) => Err(StoreError::Timeout(self.op_timeout)),
            Ok(Err(PoolError::Backend(e))) => Err(map_pg(&e)),
            Ok(Err(PoolError::PostCreateHook(HookError::Backend(e)))) => Err(map_pg(&e)),
            Ok(Err(PoolError::Closed)) => Err(StoreError::Unavailable("the PostgreSQL store is closed".into())),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("PostgreSQL pool: {e}"))),
        }
    }

    /// Runs one statement on a pooled connection, bounded by the operation timeout: its rows
    /// (`want_rows`) or the number of rows it changed. A connection that failed or did not answer
    /// in time is dropped instead of going back to the pool.
    async fn run(&self, sql: &str, params: &[&(dyn ToSql + Sync)], want_rows: bool) -> Result<Ran, StoreError> {
        let deadline = Instant::now() + self.op_timeout;
        let client = self.connection(deadline).await?;
        let work = async {
            let st = client.prepare_cached(sql).await?;
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            if want_rows {
                client.query(&st, params).await.map(Ran::Rows)
            } else {
                client.execute(&st, params).await.map(Ran::Changed)
            }
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(Ok(ran)) => Ok(ran),
            Ok(Err(e)) => {
                if is_connection_error(&e) {
                    let _ = Object::take(client);
                }
                Err(map_pg(&e))
            }
            Err(_) => {
                let _ = Object::take(client);
                Err(StoreError::Timeout(self.op_timeout))
            }
        }
    }

    /// A statement's result rows.
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        match self.run(sql, params, true).await? {
            Ran::Rows(rows) => Ok(rows),
            Ran::Changed(_) => Ok(Vec::new()),
        }
    }

    /// The number of rows a statement without result rows changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        match self.run(sql, params, false).await? {
            Ran::Changed(n) => Ok(n),
            Ran::Rows(rows) => Ok(rows.len() as u64),
        }
    }

    async fn claim_once(&self, req: &ClaimRequest, token: FencingToken) -> Result<Option<Claim>, StoreError> {
        let lease_until = to_db_ms(req.now_ms.saturating_add(req.lease_ms));
        let now = to_db_ms(req.now_ms);
        let rows = self
            .query(
                CLAIM,
                &[
                    &&req.id.0[..],
                    &&req.fingerprint.0[..],
                    &(token.0 as i64),
                    &lease_until,
                    &now,
                ],
            )
            .await?;
        match rows.first() {
            Some(row) => decode_claim(row, 0, now, token),
            // The row was written by a transaction our snapshot does not see: try again.
            None => Ok(None),
        }
    }

    /// Claims every key of `batch` (distinct, sorted) in one [`CLAIM_MANY`]: each job's outcome,
    /// in order (`None`: retry it).
    async fn claim_many(&self, batch: &[ClaimJob]) -> Vec<Result<Option<Claim>, StoreError>> {
        let ids: Vec<&[u8]> = batch.iter().map(|j| &j.req.id.0[..]).collect();
        let fps: Vec<&[u8]> = batch.iter().map(|j| &j.req.fingerprint.0[..]).collect();
        let tokens: Vec<i64> = batch.iter().map(|j| j.token.0 as i64).collect();
        let leases: Vec<i64> = batch
            .iter()
            .map(|j| to_db_ms(j.req.now_ms.saturating_add(j.req.lease_ms)))
            .collect();
        let nows: Vec<i64> = batch.iter().map(|j| to_db_ms(j.req.now_ms)).collect();
        let rows = match self.query(CLAIM_MANY, &[&ids, &fps, &tokens, &leases, &nows]).await {
            Ok(rows) => rows,
            // A deadlock or serialization failure wrote nothing: every key tries again.
            Err(e) if is_retryable(&e) => return batch.iter().map(|_| Ok(None)).collect(),
            Err(e) => return batch.iter().map(|_| Err(copy_error(&e))).collect(),
        };
        batch
            .iter()
            .zip(&nows)
            .map(|(job, &now)| {
                let row = rows
                    .iter()
                    .find(|r| r.try_get::<_, &[u8]>(0).is_ok_and(|id| id == job.req.id.0));
                match row {
                    Some(row) => decode_claim(row, 1, now, job.token),
                    None => Ok(None),
                }
            })
            .collect()
    }

    /// Runs one batch of claims and answers each caller; claims that raced go back to the queue.
    async fn claim_batch(&self, mut batch: Vec<ClaimJob>) {
        let outcomes = if let [job] = &batch[..] {
            vec![self.claim_once(&job.req, job.token).await]
        } else {
            batch.sort_unstable_by_key(|j| j.req.id);
            self.claim_many(&batch).await
        };
        let mut retry = Vec::new();
        for (mut job, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                Ok(Some(claim)) => drop(job.tx.send(Ok(claim))),
                Ok(None) => {
                    job.attempts += 1;
                    if job.attempts >= CLAIM_ATTEMPTS {
                        drop(job.tx.send(Err(raced(job.req.id))));
                    } else {
                        retry.push(job);
                    }
                }
                Err(e) => drop(job.tx.send(Err(e))),
            }
        }
        if !retry.is_empty() {
            self.claims.requeue(retry);
        }
    }

    async fn complete_one(
        &self,
        id: RecordId,
        token: FencingToken,
        response: &StoredResponse,
        expires_at_ms: u64,
    ) -> Result<(), CompleteError> {
        let n = self
            .execute(
                COMPLETE,
                &[
                    &&id.0[..],
                    &(token.0 as i64),
                    &to_db_ms(expires_at_ms),
                    &&response.as_bytes()[..],
                ],
            )
            .await?;
        if n == 1 {
            Ok(())
        } else {
            Err(CompleteError::Fenced)
        }
    }

    /// Runs one batch of completions and answers each caller.
    async fn complete_batch(&self, mut batch: Vec<CompleteJob>) {
        if batch.len() == 1 {
            if let Some(job) = batch.pop() {
                let outcome = self
                    .complete_one(job.id, job.token, &job.response, job.expires_at_ms)
                    .await;
                drop(job.tx.send(outcome));
            }
            return;
        }
        batch.sort_unstable_by_key(|j| j.id);
        let ids: Vec<&[u8]> = batch.iter().map(|j| &j.id.0[..]).collect();
        let tokens: Vec<i64> = batch.iter().map(|j| j.token.0 as i64).collect();
        let ttls: Vec<i64> = batch.iter().map(|j| to_db_ms(j.expires_at_ms)).collect();
        let bodies: Vec<&[u8]> = batch.iter().map(|j| &j.response.as_bytes()[..]).collect();
        let result = self.query(COMPLETE_MANY, &[&ids, &tokens, &ttls, &bodies]).await;
        match result {
            Ok(rows) => {
                for job in batch {
                    let done = rows
                        .iter()
                        .any(|r| r.try_get::<_, &[u8]>(0).is_ok_and(|id| id == job.id.0));
                    drop(job.tx.send(if done { Ok(()) } else { Err(CompleteError::Fenced) }));
                }
            }
            Err(e) => {
                for job in batch {
                    drop(job.tx.send(Err(copy_error(&e).into())));
                }
            }
        }
    }

    async fn get_record(&self, id: RecordId) -> Result<Option<Record>, StoreError> {
        let rows = self.query(GET, &[&&id.0[..]]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let state: i16 = get_col(row, 0)?;
        let fp = fingerprint(&get_col::<Vec<u8>>(row, 1)?)?;
        let token: Option<i64> = get_col(row, 2)?;
        let deadline = from_db_ms(get_col(row, 3)?);
        match state {
            1 => Ok(Some(Record::InFlight {
                fingerprint: fp,
                token: FencingToken(token.ok_or(CorruptRecord("in-flight record without a token"))? as u64),
                lease_until_ms: deadline,
            })),
            2 => Ok(Some(Record::Completed {
                fingerprint: fp,
                expires_at_ms: deadline,
                response: response(get_col(row, 4)?)?,
            })),
            _ => Err(CorruptRecord("unknown record state").into()),
        }
    }
}

impl PostgresStore {
    /// Statements this store has executed (one round trip each, whatever the number of
    /// operations a batch carries; preparing statements when a pooled connection is made is not
    /// counted).
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    /// The server, port and database this store uses.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// Closes the pool: idle connections are closed and later operations fail.
    pub fn close(&self) {
        self.inner.pool.close();
    }
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, Result<Claim, StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let token = FencingToken::random();
            if inner.batch_size <= 1 {
                for _ in 0..CLAIM_ATTEMPTS {
                    if let Some(claim) = inner.claim_once(&req, token).await? {
                        return Ok(claim);
                    }
                }
                return Err(raced(req.id));
            }
            let deadline = Instant::now() + inner.op_timeout;
            let (tx, rx) = oneshot::channel();
            let job = ClaimJob {
                req,
                token,
                attempts: 0,
                tx,
            };
            if inner.claims.push(job) {
                tokio::spawn(drive_claims(Arc::clone(inner)));
            }
            answer(rx, deadline, inner.op_timeout).await
        })
    }

    fn complete(
        &self,
        id: RecordId,
        token: FencingToken,
        response: StoredResponse,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, Result<(), CompleteError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.batch_size <= 1 {
                return inner.complete_one(id, token, &response, expires_at_ms).await;
            }
            let deadline = Instant::now() + inner.op_timeout;
            let (tx, rx) = oneshot::channel();
            let job = CompleteJob {
                id,
                token,
                response,
                expires_at_ms,
                tx,
            };
            if inner.completions.push(job) {
                tokio::spawn(drive_completions(Arc::clone(inner)));
            }
            answer(rx, deadline, inner.op_timeout).await
        })
    }

    fn release(&self, id: RecordId, token: FencingToken) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let n = self.inner.execute(RELEASE, &[&&id.0[..], &(token.0 as i64)]).await?;
            Ok(n == 1)
        })
    }

    fn get(&self, id: RecordId) -> BoxFuture<'_, Result<Option<Record>, StoreError>> {
        Box::pin(self.inner.get_record(id))
    }

    fn delete(&self, id: RecordId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.inner.execute(DELETE, &[&&id.0[..]]).await? > 0) })
    }

    fn purge_expired(&self, now_ms: u64, limit: usize) -> BoxFuture<'_, Result<Purged, StoreError>> {
        Box::pin(async move {
            if limit == 0 {
                return Ok(Purged::default());
            }
            let lim = i64::try_from(limit).unwrap_or(i64::MAX);
            let n = self.inner.execute(PURGE, &[&to_db_ms(now_ms), &lim]).await?;
            let removed = usize::try_from(n).unwrap_or(usize::MAX);
            Ok(Purged {
                removed,
                more: removed >= limit,
            })
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.inner.query(PING, &[]).await.map(drop) })
    }

    fn check_secret(&self, check: [u8; 32]) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.inner.execute(SECRET_INSERT, &[&&check[..]]).await?;
            let rows = self.inner.query(SECRET_SELECT, &[]).await?;
            let stored: Vec<u8> = match rows.first() {
                Some(row) => get_col(row, 0)?,
                None => return Err(StoreError::Unavailable("the secret check value vanished".into())),
            };
            if stored == check {
                Ok(())
            } else {
                Err(StoreError::SecretMismatch)
            }
        })
    }
}
