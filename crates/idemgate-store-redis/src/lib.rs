//! idemgate's shared Redis store: every gateway of a fleet claims keys in one Redis.
//!
//! - **One key per record.** A record is one Redis string named `idemgate2:{<64 hex id>}`, the
//!   record as [`Record::encode`] writes it for every store; the braces are an explicit hash tag,
//!   so whatever Redis Cluster does, all of a record lives in one slot and every command touches
//!   exactly one key. (Format 1 kept hashes of fields under `idemgate:{…}`; they are not read.)
//! - **Atomic steps.** On Redis 7.0 and later a claim is one `SET … NX GET PX`: it writes the
//!   new in-flight record only where there is none and returns the record there is, which the
//!   store then decides exactly as [`idemgate_core::record::decide_claim`] does. A record that
//!   has expired by the caller's clock (a takeover) goes to the claim script ([`CLAIM_LUA`]),
//!   which decides again atomically; before 7.0 every claim is that script. A complete
//!   ([`COMPLETE_LUA`]) and a release ([`RELEASE_LUA`]) are compare-and-set on the fencing
//!   token, compared as its 8 bytes (tokens are `u64`, beyond the 2^53 a Lua number holds
//!   exactly). A gateway whose lease was taken over can never overwrite the record of the one
//!   that took over.
//! - **Round trips.** A first request costs two (claim, complete); a replay one (the claim
//!   returns the stored record); a takeover of an expired lease two. Scripts are sent with `EVALSHA` and loaded at connect; after a
//!   Redis restart the first call of each script reloads it by itself (`NOSCRIPT` → `SCRIPT LOAD`).
//!   [`RedisStore::round_trips`] counts commands sent, for tests and diagnostics.
//! - **Time.** Every decision uses the caller's `now_ms`, compared with `d`. Redis's own TTLs
//!   (`PX`) only collect garbage: a completed record lives `d - now`, an in-flight one its
//!   lease plus [`RedisOptions::in_flight_slack`], so a claim after the lease still sees the
//!   record and reports a takeover. Correctness never depends on Redis's clock.
//! - **Connections.** One multiplexed connection ([`redis::aio::ConnectionManager`]) is shared by
//!   every request, except on a gateway serving thread (a current-thread runtime with a
//!   `ReplyQueue`), which opens a connection of its own on first use so that its commands wake no
//!   other thread (a single Redis only; a cluster connection stays shared). A request waiting on a
//!   key holds no connection. After an outage it
//!   reconnects by itself: the gateway recovers without a restart. Every command is bounded by
//!   [`RedisOptions::timeout`], so an outage answers [`StoreError::Unavailable`] or
//!   [`StoreError::Timeout`] quickly instead of hanging.
//! - **Eviction.** A Redis that evicts keys under memory pressure silently forgets records (a
//!   duplicate execution). At connect the store reads `maxmemory-policy` and warns unless it is
//!   `noeviction` (or when `CONFIG` is refused and it cannot tell).
//! - **Purge.** Redis expires records itself. [`Store::purge_expired`] only sweeps records that
//!   the caller's clock already considers expired while Redis's TTL has not fired yet (clock skew,
//!   the in-flight slack): one bounded `SCAN` step per call, its cursor carried to the next call,
//!   so a purge tick never walks the whole keyspace.
//!
//! - **Cluster.** `redis+cluster://h1:p1[,h2:p2,…]` speaks the Redis Cluster protocol
//!   ([`redis::cluster_async::ClusterConnection`]: one multiplexed connection per node, redirects
//!   and topology changes followed, nodes reconnected by themselves). Every record is one key,
//!   so every claim, complete and release is still one command or script on one node.
//!   Scripts are loaded on every primary at connect (and reloaded on `NOSCRIPT`, e.g. on a node
//!   added later). The purge steps through the primaries one `SCAN` step per call (the list of
//!   primaries is asked of the cluster at the start of each pass) and checks each key it finds
//!   with its own one-key script, a few at a time. The eviction-policy check asks every primary.
//!   A cluster has only database 0.
//! - **TLS.** `rediss://host:port[/db]` and `rediss+cluster://h1:p1[,…]` connect over TLS
//!   (rustls with the `ring` crypto provider, installed as the process default unless one is
//!   already installed). Servers are verified against the system's trusted roots; the URL option
//!   `?ca=/path/to/ca.pem` trusts the CA certificates of that PEM file *instead* (a private
//!   CA). The path is percent-decoded; `ca=` on a plain `redis://` URL is refused. The server's
//!   certificate must name the host as written in the URL (an IP address needs an IP SAN).
//!   Client certificates (mutual TLS) are not configurable here.
//!
//! URLs: `redis://[user:password@]host:port[/db]`, `rediss://…[?ca=PATH]`,
//! `redis+cluster://[user:password@]h1:p1[,h2:p2,…]`, `rediss+cluster://…[?ca=PATH]`; the
//! `valkey` spellings (`valkey://`, `valkeys://`, `valkey+cluster://`, `valkeys+cluster://`) are
//! the same. Other query options are passed to the redis crate (e.g. `?protocol=resp3`).

#![deny(missing_docs)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use idemgate_core::record::CorruptRecord;
use idemgate_core::{
    BoxFuture, Claim, ClaimRequest, CompleteError, FencingToken, Purged, Record, RecordId, Store, StoreError,
    StoredResponse,
};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, Script, ServerErrorKind, TlsCertificates, Value};

/// Prefix of every record key; the record id follows inside a `{…}` hash tag. (`idemgate2:`: the
/// records are strings of `Record::encode`; version 1 kept hashes under `idemgate:`.)
pub const KEY_PREFIX: &str = "idemgate2:";

/// The key holding the scope-secret check value.
pub const SECRET_CHECK_KEY: &str = "idemgate:secret-check";

/// Lua helper: the deadline (Unix ms) and kind (1 in flight, 2 completed) of an encoded record
/// (`Record::encode`: format 1, kind, 32-byte fingerprint, then for an in-flight record the
/// token and the lease end, for a completed one the expiry, as little-endian u64s). `nil` for
/// bytes that are not such a record. The deadline is read as a Lua number: exact below 2^53 ms.
const DEADLINE_LUA: &str = r#"
local function deadline(v)
  if type(v) ~= 'string' or string.len(v) < 42 or string.byte(v, 1) ~= 1 then return nil end
  local kind = string.byte(v, 2)
  local at
  if kind == 1 then at = 43 elseif kind == 2 then at = 35 else return nil end
  if string.len(v) < at + 7 then return nil end
  local d = 0
  for i = at + 7, at, -1 do d = d * 256 + string.byte(v, i) end
  return d, kind
end
"#;

/// Claims a key, deciding as [`idemgate_core::record::decide_claim`] does. `KEYS[1]` the record;
/// `ARGV`: now (ms), the new in-flight record, its Redis TTL (ms). Returns `{'acquired',
/// takeover}` after writing the new record, `{'existing', record}` for a live record, or
/// `{'corrupt'}`. Used when `SET … NX GET` found a record that the caller's clock says has
/// expired, and for every claim on a Redis older than 7.0 (which cannot combine `NX` and `GET`).
pub const CLAIM_LUA: &str = r#"
local now = tonumber(ARGV[1])
local v = redis.call('GET', KEYS[1])
local takeover = 0
if v then
  local d, kind = deadline(v)
  if not d then return {'corrupt'} end
  if d > now then return {'existing', v} end
  if kind == 1 then takeover = 1 end
end
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[2])
return {'acquired', takeover}
"#;

/// Completes the caller's own in-flight record. `KEYS[1]` the record; `ARGV`: the token (8 bytes,
/// little endian), the expiry (8 bytes, little endian), the encoded response, the Redis TTL (ms).
/// Writes the completed record (the in-flight record's fingerprint kept) and returns 1, or 0 when
/// fenced off. Tokens are compared as bytes, so every `u64` compares exactly.
pub const COMPLETE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if type(v) ~= 'string' or string.len(v) < 50 or string.sub(v, 1, 2) ~= '\1\1' or string.sub(v, 35, 42) ~= ARGV[1] then
  return 0
end
redis.call('PSETEX', KEYS[1], ARGV[4], '\1\2' .. string.sub(v, 3, 34) .. ARGV[2] .. ARGV[3])
return 1
"#;

/// Deletes the caller's own in-flight record. `KEYS[1]` the record; `ARGV[1]` the token (8 bytes,
/// little endian). Returns 1, or 0 when the caller no longer owned it.
pub const RELEASE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if type(v) ~= 'string' or string.len(v) < 50 or string.sub(v, 1, 2) ~= '\1\1' or string.sub(v, 35, 42) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
"#;

/// Deletes those of `KEYS` whose deadline is at or before `ARGV[1]` (ms); returns how many.
/// Reads only each record's first 50 bytes. On a single Redis one call takes every key a `SCAN`
/// step found; on a cluster (where the keys of one call must share a slot) it is called with one
/// key at a time.
pub const PURGE_LUA: &str = r#"
local now = tonumber(ARGV[1])
local n = 0
for _, k in ipairs(KEYS) do
  local ok, head = pcall(redis.call, 'GETRANGE', k, 0, 49)
  local d = ok and deadline(head)
  if d and d <= now then
    redis.call('DEL', k)
    n = n + 1
  end
end
return n
"#;

/// Records the secret check value unless one is stored; returns the stored one, or nil when it
/// just stored `ARGV[1]`.
pub const SECRET_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return false
"#;

/// Connecting to Redis failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL is not a Redis URL this build understands.
    #[error("invalid Redis URL {url}: {reason}")]
    Url {
        /// The URL, password removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS set-up failed: the `ca=` file cannot be read or holds no usable certificate.
    #[error("cannot set up TLS for Redis at {url}: {reason}")]
    Tls {
        /// The URL, password removed.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Redis did not accept the connection or a start-up command.
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// The cause.
        source: RedisError,
    },
    /// Redis did not answer within the command timeout.
    #[error("Redis at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The URL, password removed.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// Tuning for [`RedisStore::connect_with`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Bound on every command, including waiting for a reconnect (default 2 s).
    pub timeout: Duration,
    /// How long past its lease an in-flight record stays in Redis, so a later claim can still
    /// report a takeover (default 60 s). Garbage collection only: decisions use the deadline.
    pub in_flight_slack: Duration,
    /// Keys examined per purge call at most (default 1000).
    pub purge_scan: usize,
    /// Claim with `SET … NX GET` when the server is Redis 7.0 or later (default true); false
    /// makes every claim run the claim script, as on an older Redis.
    pub set_nx_get: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            in_flight_slack: Duration::from_secs(60),
            purge_scan: 1000,
            set_nx_get: true,
        }
    }
}

struct Scripts {
    claim: Script,
    complete: Script,
    release: Script,
    purge: Script,
    secret: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            claim: Script::new(&format!("{DEADLINE_LUA}{CLAIM_LUA}")),
            complete: Script::new(COMPLETE_LUA),
            release: Script::new(RELEASE_LUA),
            purge: Script::new(&format!("{DEADLINE_LUA}{PURGE_LUA}")),
            secret: Script::new(SECRET_LUA),
        }
    }

    fn all(&self) -> [&Script; 5] {
        [&self.claim, &self.complete, &self.release, &self.purge, &self.secret]
    }
}

/// The Redis store (see the module docs).
pub struct RedisStore {
    conn: Conn,
    /// How to open another connection to a single Redis (see [`RedisStore::thread_conn`]).
    per_thread: Option<(redis::Client, ConnectionManagerConfig)>,
    /// Tells this store's connections apart in a thread's cache.
    id: u64,
    /// Redis 7.0 or later: a claim is `SET … NX GET` (no script) unless the record it finds has
    /// expired.
    set_nx_get: std::sync::atomic::AtomicBool,
    scripts: Scripts,
    opts: RedisOptions,
    round_trips: AtomicU64,
    scan_cursor: Mutex<u64>,
    cluster_scan: Mutex<ClusterScan>,
    url: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("cluster", &self.is_cluster())
            .field("timeout", &self.opts.timeout)
            .finish_non_exhaustive()
    }
}

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(0);

/// Per store and serving-thread runtime (its `ReplyQueue`'s address): that thread's connection.
type ThreadConns = Vec<((u64, usize), ConnectionManager)>;

thread_local! {
    static THREAD_CONNS: std::cell::RefCell<ThreadConns> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The shared multiplexed connection: one Redis, or every node of a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the cluster purge is: the primaries of this pass, the one being scanned, its cursor.
#[derive(Clone, Debug, Default)]
struct ClusterScan {
    nodes: Vec<(String, u16)>,
    node: usize,
    cursor: u64,
}

/// The connection, counting every command (or pipeline) sent as one round trip.
struct Counted<'c> {
    conn: Conn,
    n: &'c AtomicU64,
}

impl Counted<'_> {
    /// Sends `cmd` to the cluster node(s) `routing` names (one round trip per node, counted as
    /// one: the nodes are asked in parallel). On a single Redis the routing is ignored.
    async fn route(&mut self, cmd: Cmd, routing: RoutingInfo) -> RedisResult<Value> {
        self.n.fetch_add(1, Ordering::Relaxed);
        match &mut self.conn {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => c.route_command(cmd, routing).await,
        }
    }
}

impl ConnectionLike for Counted<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.n.fetch_add(1, Ordering::Relaxed);
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.n.fetch_add(1, Ordering::Relaxed);
        self.conn.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// A store URL taken apart (see the module docs for the forms).
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `rediss`/`valkeys`: connect over TLS.
    tls: bool,
    /// `+cluster`: speak the cluster protocol.
    cluster: bool,
    /// URLs the redis crate understands: the one server, or every seed node of a cluster.
    nodes: Vec<String>,
    /// `?ca=`: trust these CA certificates instead of the system's.
    ca: Option<PathBuf>,
}

/// Every URL scheme the Redis store accepts.
pub const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis+cluster",
    "rediss+cluster",
    "valkey",
    "valkeys",
    "valkey+cluster",
    "valkeys+cluster",
];

/// Whether `url` names the Redis store (by its scheme; the rest is checked at connect).
pub fn is_redis_url(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

fn parse_target(url: &str) -> Result<Target, String> {
    const FORMS: &str = "expected redis://host:port[/db], rediss://host:port[/db][?ca=PATH], \
                         redis+cluster://host:port[,host:port…] or rediss+cluster://…[?ca=PATH]";
    let (scheme, rest) = url.split_once("://").ok_or(FORMS)?;
    let scheme = scheme.to_ascii_lowercase();
    let (base, cluster) = match scheme.strip_suffix("+cluster") {
        Some(base) => (base, true),
        None => (scheme.as_str(), false),
    };
    let tls = match base {
        "redis" | "valkey" => false,
        "rediss" | "valkeys" => true,
        _ => return Err(FORMS.into()),
    };
    if rest.contains('#') {
        return Err("URL fragments are not supported".into());
    }
    let (location, query) = match rest.split_once('?') {
        Some((l, q)) => (l, Some(q)),
        None => (rest, None),
    };
    let mut ca = None;
    let mut passed = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("ca", path)) => {
                if !tls {
                    return Err("ca= applies only to rediss:// (TLS) URLs".into());
                }
                let path = percent_encoding::percent_decode_str(path)
                    .decode_utf8()
                    .map_err(|_| "ca= is not UTF-8 once percent-decoded")?;
                if path.is_empty() {
                    return Err("ca= needs the path of a PEM file".into());
                }
                ca = Some(PathBuf::from(path.into_owned()));
            }
            _ => passed.push(pair),
        }
    }
    let query = if passed.is_empty() {
        String::new()
    } else {
        format!("?{}", passed.join("&"))
    };
    if !cluster {
        return Ok(Target {
            tls,
            cluster,
            nodes: vec![format!("{base}://{location}{query}")],
            ca,
        });
    }
    let (authority, db) = match location.split_once('/') {
        Some((a, db)) => (a, db),
        None => (location, ""),
    };
    if !matches!(db, "" | "0") {
        return Err("a Redis Cluster has only database 0".into());
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .map(|h| {
            if h.is_empty() {
                Err("empty host in the cluster node list".to_owned())
            } else {
                Ok(format!("{base}://{userinfo}{h}{query}"))
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Target {
        tls,
        cluster,
        nodes,
        ca,
    })
}

/// Installs rustls's `ring` provider as the process default, unless one is installed already.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The `ca=` file as the redis crate wants it, checked to hold at least one certificate.
fn read_ca(path: &std::path::Path) -> Result<TlsCertificates, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read ca={}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("ca={} holds no PEM certificate", path.display()));
    }
    Ok(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    })
}

/// `host:port` (as the cluster client names a node) → its parts.
fn node_addr(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// `SCAN` reply → next cursor and up to `limit` keys.
fn parse_scan(v: &Value, limit: usize) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
    match v {
        Value::Array(items) if items.len() == 2 => {
            let next = bulk(&items[0])
                .and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
                .ok_or_else(|| unexpected(v))?;
            let Value::Array(keys) = &items[1] else {
                return Err(unexpected(v));
            };
            let keys = keys.iter().filter_map(bulk).take(limit).map(<[u8]>::to_vec).collect();
            Ok((next, keys))
        }
        _ => Err(unexpected(v)),
    }
}

/// `redis://user:secret@host` → `redis://***@host`, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// The Redis key of a record.
pub fn record_key(id: &RecordId) -> String {
    String::from_utf8_lossy(&key_bytes(id)).into_owned()
}

/// [`record_key`]'s bytes, on the stack: what the commands send (`format!` or `String` pushes
/// were ~800 instructions of every command; callgrind).
fn key_bytes(id: &RecordId) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    let p = KEY_PREFIX.len();
    key[..p].copy_from_slice(KEY_PREFIX.as_bytes());
    key[p] = b'{';
    key[p + 1..KEY_LEN - 1].copy_from_slice(&id.hex());
    key[KEY_LEN - 1] = b'}';
    key
}

/// Length of a record key: the prefix, `{`, 64 hex digits, `}`.
const KEY_LEN: usize = KEY_PREFIX.len() + 66;

fn map_err(e: RedisError, timeout: Duration) -> StoreError {
    if e.is_timeout() {
        return StoreError::Timeout(timeout);
    }
    // `maxmemory` reached under `noeviction` (what `connect` asks for): every write is refused,
    // replays' `SET … NX GET` included, until memory is freed. Full, not down: nothing may run
    // unprotected.
    if e.code() == Some("OOM") {
        return StoreError::OutOfSpace(e.to_string());
    }
    let unavailable = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Io
                | ErrorKind::ClusterConnectionNotFound
                // A redirect that reaches us is one the cluster client could not follow (the
                // slot's owner is unreachable or the slot is moving): the record is unavailable.
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(Box::new(e))
    }
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt(CorruptRecord(what))
}

fn unexpected(v: &Value) -> StoreError {
    let msg = format!("unexpected reply from Redis: {v:?}");
    StoreError::Backend(msg.into())
}

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

/// A record as stored: the bytes of `Record::encode`.
fn parse_record_bytes(b: &[u8]) -> Result<Record, StoreError> {
    Ok(Record::decode(Bytes::copy_from_slice(b))?)
}

/// The claim script's answer (see [`CLAIM_LUA`]).
fn parse_claim(v: Value, token: FencingToken, req: &ClaimRequest) -> Result<Claim, StoreError> {
    let Value::Array(items) = &v else {
        return Err(unexpected(&v));
    };
    match items.first().and_then(bulk) {
        Some(b"acquired") => {
            let takeover = items.get(1).and_then(int).ok_or_else(|| unexpected(&v))? != 0;
            Ok(Claim::Acquired { token, takeover })
        }
        Some(b"existing") => {
            let record = parse_record_bytes(items.get(1).and_then(bulk).ok_or_else(|| unexpected(&v))?)?;
            live_claim(&record, req).ok_or_else(|| unexpected(&v))
        }
        Some(b"corrupt") => Err(corrupt("the stored record does not decode")),
        _ => Err(unexpected(&v)),
    }
}

/// What a claim answers for `record` when it is live at the caller's clock (`None`: it expired).
fn live_claim(record: &Record, req: &ClaimRequest) -> Option<Claim> {
    if record.is_expired(req.now_ms) {
        return None;
    }
    Some(idemgate_core::record::decide_claim(Some(record), req).0)
}

/// The major version in an `INFO server` reply (the lowest, if several nodes answered).
fn redis_major(v: &Value) -> Option<u32> {
    let texts: Vec<&[u8]> = match v {
        Value::Map(by_node) => by_node.iter().filter_map(|(_, v)| bulk(v)).collect(),
        Value::VerbatimString { text, .. } => vec![text.as_bytes()],
        Value::Array(items) => items.iter().filter_map(bulk).collect(),
        other => bulk(other).into_iter().collect(),
    };
    texts
        .into_iter()
        .filter_map(|t| {
            let t = std::str::from_utf8(t).ok()?;
            let line = t.lines().find_map(|l| l.strip_prefix("redis_version:"))?;
            line.split('.').next()?.trim().parse().ok()
        })
        .min()
}

/// The value of `CONFIG GET maxmemory-policy` (RESP2 array or RESP3 map).
fn config_value(v: &Value) -> Option<String> {
    let s = match v {
        Value::Array(items) => items.get(1).and_then(bulk),
        Value::Map(pairs) => pairs.first().and_then(|(_, v)| bulk(v)),
        _ => None,
    }?;
    Some(String::from_utf8_lossy(s).into_owned())
}

/// One start-up step, bounded by the command timeout.
async fn open_step<T>(url: &str, timeout: Duration, f: impl Future<Output = RedisResult<T>>) -> Result<T, OpenError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(OpenError::Connect {
            url: url.to_owned(),
            source,
        }),
        Err(_) => Err(OpenError::Timeout {
            url: url.to_owned(),
            timeout,
        }),
    }
}

impl RedisStore {
    /// Connects to the Redis (or Redis Cluster) `url` names (see the module docs for the URL
    /// forms) with [`RedisOptions::default`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use idemgate_core::Store;
    /// use idemgate_store_redis::RedisStore;
    ///
    /// let store: Arc<dyn Store> = Arc::new(RedisStore::connect("redis://127.0.0.1:6379/0").await?);
    /// // A cluster: RedisStore::connect("redis+cluster://10.0.0.1:7000,10.0.0.2:7000").await?
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects to `url` (`redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`; user
    /// and password may be given in the URL), loads the scripts and checks the eviction policy
    /// (a warning, never a failure).
    pub async fn connect_with(url: &str, opts: RedisOptions) -> Result<Self, OpenError> {
        let shown = redact(url);
        let target = parse_target(url).map_err(|reason| OpenError::Url {
            url: shown.clone(),
            reason,
        })?;
        let tls_error = |reason: String| OpenError::Tls {
            url: shown.clone(),
            reason,
        };
        let url_error = |e: RedisError| OpenError::Url {
            url: shown.clone(),
            reason: e.to_string(),
        };
        if target.tls {
            ensure_crypto_provider();
        }
        let certs = target.ca.as_deref().map(read_ca).transpose().map_err(tls_error)?;
        let timeout = opts.timeout;
        let connect_timeout = timeout.min(Duration::from_secs(1));
        let mut per_thread = None;
        let conn = if target.cluster {
            let mut builder = ClusterClientBuilder::new(target.nodes.iter().map(String::as_str))
                .connection_timeout(connect_timeout)
                .response_timeout(timeout)
                .retries(2)
                .min_retry_wait(20)
                .max_retry_wait(500);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(url_error)?;
            Conn::Cluster(open_step(&shown, timeout, client.get_async_connection()).await?)
        } else {
            let node = target.nodes.first().map(String::as_str).unwrap_or_default();
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(node, certs),
                None => redis::Client::open(node),
            }
            .map_err(url_error)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                // Every command is already bounded by `bounded` (or `open_step`): a second timer
                // per command inside the client cost ~5 % of the gateway's CPU per new key.
                .set_response_timeout(None)
                .set_number_of_retries(2)
                .set_min_delay(Duration::from_millis(20))
                .set_max_delay(Duration::from_millis(500));
            per_thread = Some((client.clone(), config.clone()));
            Conn::Single(open_step(&shown, timeout, ConnectionManager::new_with_config(client, config)).await?)
        };
        let store = Self {
            conn,
            per_thread,
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            set_nx_get: std::sync::atomic::AtomicBool::new(false),
            scripts: Scripts::new(),
            opts,
            round_trips: AtomicU64::new(0),
            scan_cursor: Mutex::new(0),
            cluster_scan: Mutex::new(ClusterScan::default()),
            url: shown.clone(),
        };
        // On a cluster `SCRIPT LOAD` goes to every node.
        for script in store.scripts.all() {
            let mut c = store.counted().await;
            open_step(&shown, timeout, script.prepare_invoke().load_async(&mut c)).await?;
        }
        store.check_eviction_policy().await;
        store.check_version().await;
        tracing::info!(url = %store.url, cluster = target.cluster, tls = target.tls, "connected to Redis");
        Ok(store)
    }

    /// Whether the store speaks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Reads the server's version: from 7.0 on a claim is `SET … NX GET`; before it, the claim
    /// script does all of it (one round trip either way). Unknown: the script.
    async fn check_version(&self) {
        let mut c = self.counted().await;
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        // Every primary of a cluster answers; the oldest decides.
        let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let major = match self.bounded(c.route(cmd, all)).await {
            Ok(v) => redis_major(&v),
            Err(e) => {
                tracing::debug!(error = %e, "INFO server failed; claims use the script");
                None
            }
        };
        self.set_nx_get
            .store(self.opts.set_nx_get && major.is_some_and(|m| m >= 7), Ordering::Relaxed);
        if major.is_some_and(|m| m < 7) {
            tracing::info!(url = %self.url, "Redis before 7.0: claims run the claim script (SET NX GET needs 7.0)");
        }
    }

    async fn check_eviction_policy(&self) {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let mut c = self.counted().await;
        // Every primary of a cluster answers, in a map by node address.
        let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let replies = match self.bounded(c.route(cmd, all)).await {
            Ok(Value::Map(by_node)) if self.is_cluster() => Ok(by_node.into_iter().map(|(_, v)| v).collect()),
            Ok(v) => Ok(vec![v]),
            Err(e) => Err(e),
        };
        let policy = replies.map(|vs| {
            // The first node that is not `noeviction` (or cannot tell) decides the warning.
            vs.iter()
                .map(config_value)
                .find(|p| p.as_deref() != Some("noeviction"))
                .unwrap_or_else(|| Some("noeviction".to_owned()))
        });
        match policy {
            Ok(policy) => match policy {
                Some(policy) if policy == "noeviction" => {
                    tracing::debug!(policy, "Redis eviction policy is noeviction");
                }
                Some(policy) => tracing::warn!(
                    policy,
                    url = %self.url,
                    "Redis may evict idempotency records under memory pressure (maxmemory-policy is not \
                     noeviction): an evicted record lets a retried request execute twice; set \
                     maxmemory-policy noeviction"
                ),
                None => tracing::warn!(
                    url = %self.url,
                    "could not verify Redis's maxmemory-policy (empty CONFIG GET reply); unless it is \
                     noeviction, Redis may evict idempotency records under memory pressure"
                ),
            },
            Err(e) => tracing::warn!(
                error = %e,
                url = %self.url,
                "could not verify Redis's maxmemory-policy (CONFIG refused); unless it is noeviction, \
                 Redis may evict idempotency records under memory pressure"
            ),
        }
    }

    /// Commands sent to Redis so far (each is one network round trip), including start-up ones
    /// and script reloads after a Redis restart.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The options in force.
    pub fn options(&self) -> &RedisOptions {
        &self.opts
    }

    async fn counted(&self) -> Counted<'_> {
        Counted {
            conn: self.thread_conn().await.unwrap_or_else(|| self.conn.clone()),
            n: &self.round_trips,
        }
    }

    /// On a gateway serving thread (one that has a `ReplyQueue`: a current-thread runtime of its
    /// own), a connection of that thread's own, opened on first use: its driver task runs on the
    /// same thread as the requests, so a command wakes nothing on another thread (measured:
    /// PERFORMANCE.md). Elsewhere, or for a cluster, or when opening one fails: `None`, and the
    /// shared connection serves.
    async fn thread_conn(&self) -> Option<Conn> {
        let (client, config) = self.per_thread.as_ref()?;
        let queue = idemgate_core::reply::ReplyQueue::current()?;
        let runtime = std::sync::Arc::as_ptr(&queue) as usize;
        let key = (self.id, runtime);
        let known = THREAD_CONNS.with(|c| c.borrow().iter().find(|(k, _)| *k == key).map(|(_, c)| c.clone()));
        if known.is_some() {
            return known.map(Conn::Single);
        }
        let opened = tokio::time::timeout(
            self.opts.timeout,
            ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await;
        match opened {
            Ok(Ok(conn)) => {
                THREAD_CONNS.with(|c| {
                    let mut c = c.borrow_mut();
                    // Forget connections of runtimes this thread no longer runs.
                    c.retain(|((id, rt), _)| *id != self.id || *rt == runtime);
                    if !c.iter().any(|(k, _)| *k == key) {
                        c.push((key, conn.clone()));
                    }
                });
                Some(Conn::Single(conn))
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not open a serving thread's own Redis connection; using the shared one");
                None
            }
            Err(_) => None,
        }
    }

    /// Runs one Redis call within the command timeout.
    async fn bounded<T>(&self, f: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.opts.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_err(e, self.opts.timeout)),
            Err(_) => Err(StoreError::Timeout(self.opts.timeout)),
        }
    }

    /// `EVALSHA script 1 key args…` as one command built once (not `ScriptInvocation`, which
    /// copies every argument twice, the response body included), loading the script and sending
    /// it again if Redis has lost it (`NOSCRIPT`: a restart or `SCRIPT FLUSH`).
    async fn eval(&self, script: &Script, key: &[u8], args: impl FnOnce(&mut Cmd)) -> Result<Value, StoreError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(1).arg(key);
        args(&mut cmd);
        let mut c = self.counted().await;
        let once = async {
            match cmd.query_async::<Value>(&mut c).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    script.prepare_invoke().load_async(&mut c).await?;
                    cmd.query_async(&mut c).await
                }
                other => other,
            }
        };
        self.bounded(once).await
    }

    fn slack_ms(&self) -> u64 {
        u64::try_from(self.opts.in_flight_slack.as_millis()).unwrap_or(u64::MAX)
    }

    async fn claim_inner(&self, req: ClaimRequest) -> Result<Claim, StoreError> {
        let token = FencingToken::random();
        let fresh = Record::InFlight {
            fingerprint: req.fingerprint,
            token,
            lease_until_ms: req.now_ms.saturating_add(req.lease_ms),
        }
        .encode();
        let ttl = req.lease_ms.saturating_add(self.slack_ms()).clamp(1, i64::MAX as u64);
        let key = key_bytes(&req.id);
        if self.set_nx_get.load(Ordering::Relaxed) {
            let mut c = self.counted().await;
            // One command, no script: writes the new record only if there is none, and returns
            // the one there is. Only a record the caller's clock says has expired needs the
            // script (a takeover, decided again atomically).
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key[..])
                .arg(&fresh[..])
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(ttl);
            let v: Value = self.bounded(cmd.query_async(&mut c)).await?;
            match &v {
                Value::Nil => return Ok(Claim::Acquired { token, takeover: false }),
                other => {
                    let existing = parse_record_bytes(bulk(other).ok_or_else(|| unexpected(other))?)?;
                    if let Some(claim) = live_claim(&existing, &req) {
                        return Ok(claim);
                    }
                }
            }
        }
        let v = self
            .eval(&self.scripts.claim, &key, |c| {
                c.arg(req.now_ms).arg(&fresh[..]).arg(ttl);
            })
            .await?;
        parse_claim(v, token, &req)
    }

    async fn complete_inner(
        &self,
        id: RecordId,
        token: FencingToken,
        response: StoredResponse,
        expires_at_ms: u64,
    ) -> Result<(), CompleteError> {
        let ttl = expires_at_ms
            .saturating_sub(idemgate_core::time::now_ms())
            .clamp(1, i64::MAX as u64);
        let args = |c: &mut Cmd| {
            c.arg(&token.0.to_le_bytes()[..])
                .arg(&expires_at_ms.to_le_bytes()[..])
                .arg(&response.as_bytes()[..])
                .arg(ttl);
        };
        let v = self.eval(&self.scripts.complete, &key_bytes(&id), args).await?;
        match int(&v) {
            Some(1) => Ok(()),
            Some(0) => Err(CompleteError::Fenced),
            _ => Err(unexpected(&v).into()),
        }
    }

    async fn release_inner(&self, id: RecordId, token: FencingToken) -> Result<bool, StoreError> {
        let v = self
            .eval(&self.scripts.release, &key_bytes(&id), |c| {
                c.arg(&token.0.to_le_bytes()[..]);
            })
            .await?;
        int(&v).map(|n| n == 1).ok_or_else(|| unexpected(&v))
    }

    async fn get_inner(&self, id: RecordId) -> Result<Option<Record>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(&key_bytes(&id)[..]);
        let mut c = self.counted().await;
        let v: Value = self.bounded(cmd.query_async(&mut c)).await?;
        match &v {
            Value::Nil => Ok(None),
            other => parse_record_bytes(bulk(other).ok_or_else(|| unexpected(other))?).map(Some),
        }
    }

    async fn delete_inner(&self, id: RecordId) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&key_bytes(&id)[..]);
        let mut c = self.counted().await;
        let v: Value = self.bounded(cmd.query_async(&mut c)).await?;
        int(&v).map(|n| n > 0).ok_or_else(|| unexpected(&v))
    }

    async fn purge_inner(&self, now_ms: u64, limit: usize) -> Result<Purged, StoreError> {
        let limit = limit.min(self.opts.purge_scan);
        if limit == 0 {
            return Ok(Purged::default());
        }
        let removed = if self.is_cluster() {
            self.purge_cluster(now_ms, limit).await?
        } else {
            self.purge_single(now_ms, limit).await?
        };
        // One step per call: Redis's TTLs do the real collection, so a housekeeping tick never
        // walks the whole keyspace; the cursor goes on from here next time.
        Ok(Purged { removed, more: false })
    }

    fn scan_cmd(cursor: u64, limit: usize) -> Cmd {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(format!("{KEY_PREFIX}{{*"))
            .arg("COUNT")
            .arg(limit);
        cmd
    }

    /// One `SCAN` step, then one script over every key found.
    async fn purge_single(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let cursor = *self.scan_cursor.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = self.counted().await;
        let v: Value = self.bounded(Self::scan_cmd(cursor, limit).query_async(&mut c)).await?;
        let (next, keys) = parse_scan(&v, limit)?;
        *self.scan_cursor.lock().unwrap_or_else(|p| p.into_inner()) = next;
        if keys.is_empty() {
            return Ok(0);
        }
        let mut inv = self.scripts.purge.prepare_invoke();
        for k in &keys {
            inv.key(&k[..]);
        }
        inv.arg(now_ms);
        let v: Value = self.bounded(inv.invoke_async(&mut c)).await?;
        let removed = int(&v).ok_or_else(|| unexpected(&v))?;
        Ok(usize::try_from(removed).unwrap_or(0))
    }

    /// One `SCAN` step on one primary (the primaries take turns, a pass at a time), then one
    /// one-key script per key found, a few at a time: keys of different slots cannot share a
    /// script on a cluster.
    async fn purge_cluster(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        // Copied out: the lock is never held across an await.
        let mut scan = self.cluster_scan.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut c = self.counted().await;
        if scan.node >= scan.nodes.len() {
            // A new pass: ask the cluster for its primaries (a map keyed by node address).
            let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
            let v = self.bounded(c.route(redis::cmd("PING"), all)).await?;
            let Value::Map(by_node) = &v else {
                return Err(unexpected(&v));
            };
            let mut nodes: Vec<(String, u16)> = by_node
                .iter()
                .filter_map(|(addr, _)| bulk(addr))
                .filter_map(|a| node_addr(std::str::from_utf8(a).ok()?))
                .collect();
            nodes.sort();
            if nodes.is_empty() {
                return Err(unexpected(&v));
            }
            scan = ClusterScan {
                nodes,
                node: 0,
                cursor: 0,
            };
        }
        let Some((host, port)) = scan.nodes.get(scan.node).cloned() else {
            return Ok(0);
        };
        let on_node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        let step = self.bounded(c.route(Self::scan_cmd(scan.cursor, limit), on_node)).await;
        let (next, keys) = match step.and_then(|v| parse_scan(&v, limit)) {
            Ok(found) => found,
            Err(e) => {
                // The node may have gone: start a fresh pass next time.
                *self.cluster_scan.lock().unwrap_or_else(|p| p.into_inner()) = ClusterScan::default();
                return Err(e);
            }
        };
        if next == 0 {
            scan.node += 1;
        }
        scan.cursor = next;
        *self.cluster_scan.lock().unwrap_or_else(|p| p.into_inner()) = scan;
        if keys.is_empty() {
            return Ok(0);
        }
        let script = &self.scripts.purge;
        let n = &self.round_trips;
        let conn = &self.conn;
        let each = stream::iter(keys)
            .map(|k| async move {
                let mut inv = script.prepare_invoke();
                inv.key(k).arg(now_ms);
                let mut c = Counted { conn: conn.clone(), n };
                inv.invoke_async::<Value>(&mut c).await
            })
            .buffer_unordered(16)
            .try_fold(
                0usize,
                |sum, v| async move { Ok(sum + usize::from(int(&v) == Some(1))) },
            );
        self.bounded(each).await
    }

    async fn check_secret_inner(&self, check: [u8; 32]) -> Result<(), StoreError> {
        let mut inv = self.scripts.secret.prepare_invoke();
        inv.key(SECRET_CHECK_KEY).arg(&check[..]);
        let mut c = self.counted().await;
        let v: Value = self.bounded(inv.invoke_async(&mut c)).await?;
        match &v {
            Value::Nil => Ok(()),
            other => match bulk(other) {
                Some(stored) if stored == check => Ok(()),
                Some(_) => Err(StoreError::SecretMismatch),
                None => Err(unexpected(other)),
            },
        }
    }
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn claim(&self, req: ClaimRequest) -> BoxFuture<'_, Result<Claim, StoreError>> {
        Box::pin(self.claim_inner(req))
    }

    fn complete(
        &self,
        id: RecordId,
        token: FencingToken,
        response: StoredResponse,
        expires_at_ms: u64,
    ) -> BoxFuture<'_, Result<(), CompleteError>> {
        Box::pin(self.complete_inner(id, token, response, expires_at_ms))
    }

    fn release(&self, id: RecordId, token: FencingToken) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.release_inner(id, token))
    }

    fn get(&self, id: RecordId) -> BoxFuture<'_, Result<Option<Record>, StoreError>> {
        Box::pin(self.get_inner(id))
    }

    fn delete(&self, id: RecordId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.delete_inner(id))
    }

    fn purge_expired(&self, now_ms: u64, limit: usize) -> BoxFuture<'_, Result<Purged, StoreError>> {
        Box::pin(self.purge_inner(now_ms, limit))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut c = self.counted().await;
            let v: Value = self.bounded(redis::cmd("PING").query_async(&mut c)).await?;
            match v {
                Value::SimpleString(_) | Value::Okay | Value::BulkString(_) => Ok(()),
                other => Err(unexpected(&other)),
            }
        })
    }

    fn check_secret(&self, check: [u8; 32]) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.check_secret_inner(check))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_an_explicit_hash_tag() {
        let k = record_key(&RecordId([0xab; 32]));
        assert_eq!(k, format!("idemgate2:{{{}}}", "ab".repeat(32)));
    }

    #[test]
    fn the_server_version_is_read_from_info() {
        let info = |v: &str| {
            Value::BulkString(format!("# Server\r\nredis_version:{v}\r\nredis_mode:standalone\r\n").into_bytes())
        };
        assert_eq!(redis_major(&info("7.0.15")), Some(7));
        assert_eq!(redis_major(&info("6.2.14")), Some(6));
        let nodes = Value::Map(vec![
            (Value::BulkString(b"a:1".to_vec()), info("7.2.4")),
            (Value::BulkString(b"b:2".to_vec()), info("6.0.0")),
        ]);
        assert_eq!(redis_major(&nodes), Some(6), "the oldest node decides");
        assert_eq!(redis_major(&Value::Nil), None);
        assert_eq!(redis_major(&Value::BulkString(b"garbage".to_vec())), None);
    }

    #[test]
    fn the_eviction_policy_is_read_from_either_protocol() {
        let name = Value::BulkString(b"maxmemory-policy".to_vec());
        let lru = Value::BulkString(b"allkeys-lru".to_vec());
        let resp2 = Value::Array(vec![name.clone(), lru.clone()]);
        assert_eq!(config_value(&resp2).as_deref(), Some("allkeys-lru"));
        assert_eq!(
            config_value(&Value::Map(vec![(name, lru)])).as_deref(),
            Some("allkeys-lru")
        );
        assert_eq!(config_value(&Value::Array(vec![])), None);
    }

    #[test]
    fn urls_are_taken_apart() {
        let t = parse_target("redis://u:pw@h:1/2?protocol=resp3").unwrap();
        assert_eq!(
            t,
            Target {
                tls: false,
                cluster: false,
                nodes: vec!["redis://u:pw@h:1/2?protocol=resp3".into()],
                ca: None
            }
        );
        let t = parse_target("REDISS://h:1?ca=/etc/my%20ca.pem").unwrap();
        assert!(t.tls && !t.cluster);
        assert_eq!(t.nodes, ["rediss://h:1"]);
        assert_eq!(t.ca, Some(PathBuf::from("/etc/my ca.pem")));
        let t = parse_target("rediss+cluster://u:p@a:1, b:2,[::1]:3/0?ca=/ca.pem&protocol=resp3").unwrap();
        assert!(t.tls && t.cluster);
        assert_eq!(
            t.nodes,
            [
                "rediss://u:p@a:1?protocol=resp3",
                "rediss://u:p@b:2?protocol=resp3",
                "rediss://u:p@[::1]:3?protocol=resp3"
            ]
        );
        assert_eq!(parse_target("valkey+cluster://a:1").unwrap().nodes, ["valkey://a:1"]);
        for bad in [
            "",
            "redis",
            "http://h:1",
            "redis+sentinel://h:1",
            "redis+cluster://",
            "redis+cluster://a:1,",
            "redis+cluster://a:1/1",
            "redis://h:1?ca=/x.pem",
            "rediss://h:1?ca=",
            "rediss://h:1?ca=%ff",
            "rediss://h:1#insecure",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert!(is_redis_url("rediss+cluster://a:1"));
        assert!(is_redis_url("Redis://a:1"));
        assert!(!is_redis_url("postgres://a:1"));
        assert_eq!(node_addr("127.0.0.1:7000"), Some(("127.0.0.1".into(), 7000)));
        assert_eq!(node_addr("::1:7000"), Some(("::1".into(), 7000)));
        assert_eq!(node_addr("nope"), None);
    }

    #[test]
    fn scan_replies_are_parsed_without_panics() {
        let v = Value::Array(vec![
            Value::BulkString(b"17".to_vec()),
            Value::Array(vec![Value::BulkString(b"a".to_vec()), Value::BulkString(b"b".to_vec())]),
        ]);
        assert_eq!(parse_scan(&v, 1).unwrap(), (17, vec![b"a".to_vec()]));
        for bad in [Value::Nil, Value::Array(vec![Value::Int(1), Value::Nil])] {
            assert!(parse_scan(&bad, 10).is_err());
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("redis://u:pw@h:1/2"), "redis://***@h:1/2");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn replies_are_parsed_without_panics() {
        let t = FencingToken(u64::MAX);
        let req = ClaimRequest {
            id: RecordId([1; 32]),
            fingerprint: idemgate_core::Fingerprint([2; 32]),
            now_ms: 1_000,
            lease_ms: 10,
        };
        let acquired = Value::Array(vec![Value::BulkString(b"acquired".to_vec()), Value::Int(1)]);
        assert_eq!(
            parse_claim(acquired, t, &req).ok(),
            Some(Claim::Acquired {
                token: t,
                takeover: true
            })
        );
        let live = Record::InFlight {
            fingerprint: idemgate_core::Fingerprint([5; 32]),
            token: FencingToken(7),
            lease_until_ms: 2_000,
        };
        let existing = Value::Array(vec![
            Value::BulkString(b"existing".to_vec()),
            Value::BulkString(live.encode().to_vec()),
        ]);
        assert_eq!(
            parse_claim(existing, t, &req).ok(),
            Some(Claim::InFlight {
                fingerprint: idemgate_core::Fingerprint([5; 32]),
                lease_until_ms: 2_000
            })
        );
        let cut = Value::Array(vec![
            Value::BulkString(b"existing".to_vec()),
            Value::BulkString(live.encode()[..20].to_vec()),
        ]);
        assert!(matches!(parse_claim(cut, t, &req), Err(StoreError::Corrupt(_))));
        for v in [
            Value::Nil,
            Value::Int(3),
            Value::Array(vec![]),
            Value::Array(vec![Value::Nil]),
            Value::Array(vec![Value::BulkString(b"existing".to_vec())]),
        ] {
            assert!(parse_claim(v.clone(), t, &req).is_err());
        }
        assert!(matches!(parse_record_bytes(&[0xff]), Err(StoreError::Corrupt(_))));
    }
}
