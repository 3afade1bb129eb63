//! Gateway settings: command-line flags beat `IDEMGATE_*` environment variables, which beat the
//! `--config` TOML file, which beats the built-in defaults.
//!
//! Every flag is an `Option` so that "not given" can fall through to the file. The file has the
//! same settings (snake_case) plus `[[route]]` tables for per-route policies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use http::{HeaderName, Method, StatusCode};
use idemgate_core::FingerprintOptions;
use idemgate_tower::{IdempotencyConfig, OnStoreError, PolicyOverrides, RoutePolicy, ScopeSource};
use serde::Deserialize;

/// Flags of `idemgate serve` (and, where they apply, `idemgate demo`).
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// Base URL of the upstream API (http://host:port[/base-path]).
    #[arg(long, env = "IDEMGATE_UPSTREAM")]
    pub upstream: Option<String>,
    /// Address the gateway listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "IDEMGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where records live: `memory`, `memory?capacity=N`, a directory for the embedded durable
    /// store, `redis://host:port[/db]` (also rediss://, redis+cluster://h1:p1,h2:p2, valkey://) or
    /// `postgres://user:pw@host:port/db` [default: ./idemgate-data].
    #[arg(long, env = "IDEMGATE_STORE")]
    pub store: Option<String>,
    /// How long a completed key is remembered [default: 24h].
    #[arg(long, env = "IDEMGATE_TTL", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// How long an in-flight key stays locked before another request may take it over [default: 60s].
    #[arg(long, env = "IDEMGATE_LOCK_TIMEOUT", value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,
    /// The request header that carries the key [default: Idempotency-Key].
    #[arg(long, env = "IDEMGATE_KEY_HEADER")]
    pub key_header: Option<HeaderName>,
    /// The request header that identifies the caller; keys are scoped to its value [default: Authorization].
    #[arg(long, env = "IDEMGATE_SCOPE_HEADER")]
    pub scope_header: Option<HeaderName>,
    /// Refuse protected requests without a key (400) instead of forwarding them.
    #[arg(long, env = "IDEMGATE_REQUIRE_KEY", num_args = 0..=1, default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new())]
    pub require_key: Option<bool>,
    /// Largest request body accepted on protected requests; larger → 413 [default: 10MiB].
    #[arg(long, env = "IDEMGATE_MAX_BODY", value_parser = parse_size)]
    pub max_body: Option<usize>,
    /// Largest response body stored; larger ones pass through and release the key [default: 10MiB].
    #[arg(long, env = "IDEMGATE_MAX_RESPONSE_BODY", value_parser = parse_size)]
    pub max_response_body: Option<usize>,
    /// Time allowed for the upstream's response headers [default: 30s].
    #[arg(long, env = "IDEMGATE_UPSTREAM_TIMEOUT", value_parser = parse_duration)]
    pub upstream_timeout: Option<Duration>,
    /// Address of the admin listener (/healthz, /readyz, /metrics, /keys) [default: off].
    #[arg(long, env = "IDEMGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// File holding the bearer token for the admin key API.
    #[arg(long, env = "IDEMGATE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// TOML file with these settings and per-route policies.
    #[arg(long, env = "IDEMGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "IDEMGATE_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Hold a repeat of an in-flight request up to this long and replay its outcome, instead of 409.
    #[arg(long, env = "IDEMGATE_WAIT_IN_FLIGHT", value_parser = parse_duration)]
    pub wait_in_flight: Option<Duration>,
    /// Protected methods, comma-separated [default: POST,PATCH].
    #[arg(long, env = "IDEMGATE_METHODS", value_delimiter = ',', value_parser = parse_method)]
    pub methods: Option<Vec<Method>>,
    /// Request headers included in the fingerprint, comma-separated [default: content-type].
    #[arg(long, env = "IDEMGATE_FINGERPRINT_HEADERS", value_delimiter = ',')]
    pub fingerprint_headers: Option<Vec<HeaderName>>,
    /// Fingerprint JSON bodies canonically (key order and whitespace do not matter).
    #[arg(long, env = "IDEMGATE_CANONICAL_JSON", num_args = 0..=1, default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new())]
    pub canonical_json: Option<bool>,
    /// Upstream statuses that are not stored and release the key, comma-separated [default: 429,503].
    #[arg(long, env = "IDEMGATE_RELEASE_STATUSES", value_delimiter = ',', value_parser = parse_status)]
    pub release_statuses: Option<Vec<StatusCode>>,
    /// Response media types streamed to the client as they come, not stored (the key is
    /// released), comma-separated [default: text/event-stream].
    #[arg(long, env = "IDEMGATE_STREAM_CONTENT_TYPES", value_delimiter = ',')]
    pub stream_content_types: Option<Vec<String>>,
    /// When the store is unreachable: `closed` answers 503, `open` forwards unprotected [default: closed].
    #[arg(long, env = "IDEMGATE_ON_STORE_ERROR", value_parser = ["closed", "open"])]
    pub on_store_error: Option<String>,
    /// File holding the secret that keys scope hashes (shared by every gateway of a fleet).
    /// Also IDEMGATE_SCOPE_SECRET (the value itself). Default: kept in the embedded store's
    /// directory, or random for the memory store.
    #[arg(long, env = "IDEMGATE_SCOPE_SECRET_FILE")]
    pub scope_secret_file: Option<PathBuf>,
    /// How long in-flight requests may run after SIGTERM/SIGINT [default: 30s].
    #[arg(long, env = "IDEMGATE_SHUTDOWN_TIMEOUT", value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// How long a client connection may go without sending a complete request head, counted from
    /// its opening or the end of its previous response, before it is closed (slow and idle
    /// clients) [default: 30s].
    #[arg(long, env = "IDEMGATE_HEADER_TIMEOUT", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// How often expired records are purged [default: 30s].
    #[arg(long, env = "IDEMGATE_PURGE_INTERVAL", value_parser = parse_duration)]
    pub purge_interval: Option<Duration>,
    /// Serving threads, each with its own listener on the port (SO_REUSEPORT), event loop and
    /// upstream pool (with a Redis Cluster or PostgreSQL store, 1 serves from one shared
    /// multi-threaded runtime instead) [default: the number of CPUs, 1 with a Redis Cluster or
    /// PostgreSQL]. Another process already listening on the port is a start-up error.
    #[arg(long, env = "IDEMGATE_THREADS")]
    pub threads: Option<usize>,
    /// Linux scheduling policy of the gateway's threads: `batch` (SCHED_BATCH: a thread woken by
    /// a request or a reply does not preempt the upstream or the client running on that CPU) or
    /// `normal` (SCHED_OTHER) [default: batch].
    #[arg(long, env = "IDEMGATE_SCHEDULER", value_parser = ["batch", "normal"])]
    pub scheduler: Option<String>,
}

/// Parses humantime durations: `500ms`, `2s`, `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 2s, 24h)"))
}

/// Parses sizes: `10MiB`, `512KiB`, `1048576`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64() as usize)
        .map_err(|e| format!("{e} (examples: 10MiB, 512KiB, 4096)"))
}

/// Parses a method name, upper-cased (`post` is POST, as in the config file).
fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.trim().to_ascii_uppercase().as_bytes()).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_status(s: &str) -> Result<StatusCode, String> {
    s.trim()
        .parse::<u16>()
        .ok()
        .and_then(|n| StatusCode::from_u16(n).ok())
        .ok_or_else(|| format!("{s:?} is not an HTTP status code"))
}

/// The `--config` file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    upstream: Option<String>,
    listen: Option<SocketAddr>,
    store: Option<String>,
    ttl: Option<String>,
    #[serde(alias = "lock-timeout")]
    lock_timeout: Option<String>,
    #[serde(alias = "key-header")]
    key_header: Option<String>,
    #[serde(alias = "scope-header")]
    scope_header: Option<String>,
    #[serde(alias = "require-key")]
    require_key: Option<bool>,
    #[serde(alias = "max-body")]
    max_body: Option<String>,
    #[serde(alias = "max-response-body")]
    max_response_body: Option<String>,
    #[serde(alias = "upstream-timeout")]
    upstream_timeout: Option<String>,
    #[serde(alias = "admin-listen")]
    admin_listen: Option<SocketAddr>,
    #[serde(alias = "admin-token-file")]
    admin_token_file: Option<PathBuf>,
    #[serde(alias = "log-format")]
    log_format: Option<String>,
    #[serde(alias = "wait-in-flight")]
    wait_in_flight: Option<String>,
    methods: Option<Vec<String>>,
    #[serde(alias = "release-statuses")]
    release_statuses: Option<Vec<u16>>,
    #[serde(alias = "stream-content-types")]
    stream_content_types: Option<Vec<String>>,
    #[serde(alias = "on-store-error")]
    on_store_error: Option<String>,
    #[serde(alias = "scope-secret-file")]
    scope_secret_file: Option<PathBuf>,
    #[serde(alias = "shutdown-timeout")]
    shutdown_timeout: Option<String>,
    #[serde(alias = "header-timeout")]
    header_timeout: Option<String>,
    #[serde(alias = "purge-interval")]
    purge_interval: Option<String>,
    threads: Option<usize>,
    scheduler: Option<String>,
    fingerprint: Option<FileFingerprint>,
    /// The flags' names for `fingerprint.headers` and `fingerprint.canonical_json`.
    #[serde(alias = "fingerprint-headers")]
    fingerprint_headers: Option<Vec<String>>,
    #[serde(alias = "canonical-json")]
    canonical_json: Option<bool>,
    #[serde(default, rename = "route")]
    routes: Vec<FileRoute>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
struct FileFingerprint {
    headers: Option<Vec<String>>,
    #[serde(alias = "canonical-json")]
    canonical_json: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    prefix: String,
    methods: Option<Vec<String>>,
    ttl: Option<String>,
    #[serde(alias = "lock-timeout")]
    lock_timeout: Option<String>,
    #[serde(alias = "require-key")]
    require_key: Option<bool>,
    #[serde(alias = "release-statuses")]
    release_statuses: Option<Vec<u16>>,
    #[serde(alias = "wait-in-flight")]
    wait_in_flight: Option<String>,
    enabled: Option<bool>,
    fingerprint: Option<FileFingerprint>,
}

/// Everything the gateway runs with, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub upstream: String,
    pub listen: SocketAddr,
    pub store: String,
    pub upstream_timeout: Duration,
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub log_json: bool,
    pub scope_secret: Option<Vec<u8>>,
    pub shutdown_timeout: Duration,
    pub header_timeout: Duration,
    pub purge_interval: Duration,
    /// `None`: chosen by store (see `main::serving_threads`).
    pub threads: Option<usize>,
    pub scheduler: Scheduler,
    pub layer: IdempotencyConfig,
}

/// `--scheduler`: the Linux scheduling policy of every gateway thread (`os.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// `SCHED_BATCH`, the default.
    Batch,
    /// `SCHED_OTHER`, the kernel's default for every process.
    Normal,
}

/// A setting could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Toml {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting `{name}`: {why}")]
    Invalid { name: &'static str, why: String },
    #[error("--upstream is required (or IDEMGATE_UPSTREAM, or `upstream` in the config file)")]
    NoUpstream,
}

fn invalid(name: &'static str) -> impl Fn(String) -> SettingsError {
    move |why| SettingsError::Invalid { name, why }
}

fn dur(name: &'static str, v: Option<String>) -> Result<Option<Duration>, SettingsError> {
    v.map(|s| parse_duration(&s)).transpose().map_err(invalid(name))
}

fn methods(name: &'static str, v: Option<Vec<String>>) -> Result<Option<Vec<Method>>, SettingsError> {
    v.map(|ms| ms.iter().map(|m| parse_method(m)).collect())
        .transpose()
        .map_err(invalid(name))
}

fn statuses(name: &'static str, v: Option<Vec<u16>>) -> Result<Option<Vec<StatusCode>>, SettingsError> {
    v.map(|ss| ss.iter().map(|s| parse_status(&s.to_string())).collect())
        .transpose()
        .map_err(invalid(name))
}

/// `type/subtype` media types, lower-cased; empty entries are skipped (an empty list streams
/// nothing through).
fn media_types(name: &'static str, v: Vec<String>) -> Result<Vec<String>, SettingsError> {
    v.iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('/') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !t.contains([';', ' ', ',']) => {
                Ok(t.to_ascii_lowercase())
            }
            _ => Err(invalid(name)(format!(
                "{t:?} is not a media type like text/event-stream"
            ))),
        })
        .collect()
}

fn headers(name: &'static str, v: Option<Vec<String>>) -> Result<Option<Vec<HeaderName>>, SettingsError> {
    v.map(|hs| {
        hs.iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|e| e.to_string()))
            .collect()
    })
    .transpose()
    .map_err(invalid(name))
}

fn read_file(path: &PathBuf) -> Result<String, SettingsError> {
    std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.clone(),
        source,
    })
}

impl Settings {
    /// Resolves flags/env (`args`) over the config file over the defaults.
    pub fn resolve(args: ServeArgs) -> Result<Self, SettingsError> {
        let file: FileConfig = match &args.config {
            Some(path) => toml::from_str(&read_file(path)?).map_err(|e| SettingsError::Toml {
                path: path.clone(),
                source: Box::new(e),
            })?,
            None => FileConfig::default(),
        };
        let d = IdempotencyConfig::default();
        let upstream = args.upstream.or(file.upstream).ok_or(SettingsError::NoUpstream)?;
        let mut file_fp = file.fingerprint.clone().unwrap_or_default();
        // The flags' names at the top level, or the `fingerprint` table; not both.
        for (top, nested, name) in [
            (
                file.fingerprint_headers.is_some(),
                file_fp.headers.is_some(),
                "fingerprint_headers",
            ),
            (
                file.canonical_json.is_some(),
                file_fp.canonical_json.is_some(),
                "canonical_json",
            ),
        ] {
            if top && nested {
                return Err(invalid(name)(format!(
                    "set in the config file twice, as `{name}` and in the `fingerprint` table"
                )));
            }
        }
        file_fp.headers = file_fp.headers.or(file.fingerprint_headers);
        file_fp.canonical_json = file_fp.canonical_json.or(file.canonical_json);
        let fingerprint = FingerprintOptions {
            headers: match args.fingerprint_headers {
                Some(h) => h,
                None => headers("fingerprint.headers", file_fp.headers)?.unwrap_or(d.fingerprint.headers.clone()),
            },
            canonical_json: args.canonical_json.or(file_fp.canonical_json).unwrap_or(false),
        };
        let on_store_error = match args.on_store_error.or(file.on_store_error).as_deref() {
            None | Some("closed") => OnStoreError::Closed,
            Some("open") => OnStoreError::Open,
            Some(other) => {
                return Err(invalid("on_store_error")(format!(
                    "{other:?} is not `closed` or `open`"
                )))
            }
        };
        let key_header = match args.key_header {
            Some(h) => h,
            None => file
                .key_header
                .map(|h| HeaderName::from_bytes(h.as_bytes()))
                .transpose()
                .map_err(|e| invalid("key_header")(e.to_string()))?
                .unwrap_or(d.key_header.clone()),
        };
        let scope_header = match args.scope_header {
            Some(h) => h,
            None => file
                .scope_header
                .map(|h| HeaderName::from_bytes(h.as_bytes()))
                .transpose()
                .map_err(|e| invalid("scope_header")(e.to_string()))?
                .unwrap_or(http::header::AUTHORIZATION),
        };
        let size = |name: &'static str,
                    flag: Option<usize>,
                    file: Option<String>,
                    default: usize|
         -> Result<usize, SettingsError> {
            match flag {
                Some(n) => Ok(n),
                None => Ok(file
                    .map(|s| parse_size(&s))
                    .transpose()
                    .map_err(invalid(name))?
                    .unwrap_or(default)),
            }
        };
        let routes = file
            .routes
            .into_iter()
            .map(|r| {
                let fp = match r.fingerprint {
                    None => None,
                    Some(f) => Some(FingerprintOptions {
                        headers: headers("route.fingerprint.headers", f.headers)?
                            .unwrap_or(fingerprint.headers.clone()),
                        canonical_json: f.canonical_json.unwrap_or(fingerprint.canonical_json),
                    }),
                };
                if !r.prefix.starts_with('/') {
                    return Err(invalid("route.prefix")(format!("{:?} must start with /", r.prefix)));
                }
                Ok(RoutePolicy {
                    prefix: r.prefix,
                    overrides: PolicyOverrides {
                        methods: methods("route.methods", r.methods)?,
                        ttl: dur("route.ttl", r.ttl)?,
                        lock_timeout: dur("route.lock_timeout", r.lock_timeout)?,
                        require_key: r.require_key,
                        fingerprint: fp,
                        release_statuses: statuses("route.release_statuses", r.release_statuses)?,
                        // "0s" turns a global --wait-in-flight off for the route.
                        wait_in_flight: dur("route.wait_in_flight", r.wait_in_flight)?
                            .map(|d| (!d.is_zero()).then_some(d)),
                        enabled: r.enabled,
                    },
                })
            })
            .collect::<Result<Vec<_>, SettingsError>>()?;
        let layer = IdempotencyConfig {
            key_header,
            scope: ScopeSource::Header(scope_header),
            max_body: size("max_body", args.max_body, file.max_body, d.max_body)?,
            max_response: size(
                "max_response_body",
                args.max_response_body,
                file.max_response_body,
                d.max_response,
            )?,
            on_store_error,
            methods: match args.methods {
                Some(m) => m,
                None => methods("methods", file.methods)?.unwrap_or(d.methods.clone()),
            },
            ttl: args.ttl.or(dur("ttl", file.ttl)?).unwrap_or(d.ttl),
            lock_timeout: args
                .lock_timeout
                .or(dur("lock_timeout", file.lock_timeout)?)
                .unwrap_or(d.lock_timeout),
            require_key: args.require_key.or(file.require_key).unwrap_or(false),
            fingerprint,
            release_statuses: match args.release_statuses {
                Some(s) => s,
                None => statuses("release_statuses", file.release_statuses)?.unwrap_or(d.release_statuses.clone()),
            },
            wait_in_flight: args
                .wait_in_flight
                .or(dur("wait_in_flight", file.wait_in_flight)?)
                .filter(|d| !d.is_zero()),
            stream_content_types: match args.stream_content_types.or(file.stream_content_types) {
                Some(types) => media_types("stream_content_types", types)?,
                None => d.stream_content_types.clone(),
            },
            routes,
            // The gateway purges in its housekeeping task (with its gauges), every
            // `--purge-interval`.
            purge_interval: None,
            ..d
        };
        let upstream_timeout = args
            .upstream_timeout
            .or(dur("upstream_timeout", file.upstream_timeout)?)
            .unwrap_or(Duration::from_secs(30));
        // A zero TTL would forget every response at once and a zero lease would let any repeat
        // take over a running request: both would silently turn idempotency off, and a zero
        // upstream timeout would fail every request, a zero header timeout close every
        // connection before its first request. The layer counts in milliseconds, so less than
        // 1 ms is zero.
        let header_timeout = args
            .header_timeout
            .or(dur("header_timeout", file.header_timeout)?)
            .unwrap_or(Duration::from_secs(30));
        let spans = [
            ("ttl", Some(layer.ttl)),
            ("lock_timeout", Some(layer.lock_timeout)),
            ("upstream_timeout", Some(upstream_timeout)),
            ("header_timeout", Some(header_timeout)),
        ]
        .into_iter()
        .chain(layer.routes.iter().flat_map(|r| {
            [
                ("route.ttl", r.overrides.ttl),
                ("route.lock_timeout", r.overrides.lock_timeout),
            ]
        }));
        for (name, span) in spans {
            if span.is_some_and(|d| d < Duration::from_millis(1)) {
                return Err(invalid(name)("must be at least 1ms".into()));
            }
        }
        let admin_token = match args.admin_token_file.or(file.admin_token_file) {
            Some(p) => {
                let t = read_file(&p)?.trim().to_string();
                if t.len() < 16 {
                    return Err(invalid("admin_token_file")(
                        "the admin token must be at least 16 characters".into(),
                    ));
                }
                Some(t)
            }
            None => None,
        };
        let scope_secret = match (
            args.scope_secret_file.or(file.scope_secret_file),
            std::env::var("IDEMGATE_SCOPE_SECRET").ok(),
        ) {
            (Some(p), _) => Some(read_file(&p)?.trim().as_bytes().to_vec()),
            (None, Some(v)) => Some(v.trim().as_bytes().to_vec()),
            (None, None) => None,
        };
        if scope_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(invalid("scope_secret")(
                "the scope secret must be at least 16 characters".into(),
            ));
        }
        let log_format = args.log_format.or(file.log_format).unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            return Err(invalid("log_format")(format!("{log_format:?} is not `text` or `json`")));
        }
        let scheduler = match args.scheduler.or(file.scheduler).as_deref() {
            None | Some("batch") => Scheduler::Batch,
            Some("normal") => Scheduler::Normal,
            Some(other) => return Err(invalid("scheduler")(format!("{other:?} is not `batch` or `normal`"))),
        };
        Ok(Settings {
            upstream,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            store: args.store.or(file.store).unwrap_or_else(|| "./idemgate-data".into()),
            upstream_timeout,
            admin_listen: args.admin_listen.or(file.admin_listen),
            admin_token,
            log_json: log_format == "json",
            scope_secret,
            shutdown_timeout: args
                .shutdown_timeout
                .or(dur("shutdown_timeout", file.shutdown_timeout)?)
                .unwrap_or(Duration::from_secs(30)),
            header_timeout,
            purge_interval: args
                .purge_interval
                .or(dur("purge_interval", file.purge_interval)?)
                .unwrap_or(Duration::from_secs(30)),
            threads: match args.threads.or(file.threads) {
                Some(0) => return Err(invalid("threads")("must be at least 1".into())),
                n => n,
            },
            scheduler,
            layer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idemgate.toml");
        std::fs::write(
            &path,
            r#"
upstream = "http://127.0.0.1:1"
ttl = "1h"
lock_timeout = "5s"
max_body = "1KiB"
[[route]]
prefix = "/payments"
require_key = true
release_statuses = [500, 503]
fingerprint = { canonical_json = true }
"#,
        )
        .unwrap();
        let s = Settings::resolve(ServeArgs {
            config: Some(path.clone()),
            ttl: Some(Duration::from_secs(7)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.upstream, "http://127.0.0.1:1");
        assert_eq!(s.layer.ttl, Duration::from_secs(7), "flag beats file");
        assert_eq!(s.layer.lock_timeout, Duration::from_secs(5), "file beats default");
        assert_eq!(s.layer.max_body, 1024);
        assert_eq!(s.layer.wait_in_flight, None);
        assert_eq!(s.layer.routes.len(), 1);
        assert_eq!(s.layer.routes[0].overrides.require_key, Some(true));
        assert!(s.layer.routes[0].overrides.fingerprint.as_ref().unwrap().canonical_json);
        assert_eq!(s.store, "./idemgate-data");

        std::fs::write(&path, "upstream = \"http://x\"\nttl = \"soon\"\n").unwrap();
        let err = Settings::resolve(ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("ttl"), "{err}");
        std::fs::write(&path, "upstream = \"http://x\"\ntll = \"1h\"\n").unwrap();
        let err = Settings::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("tll"), "{err}");
        assert!(matches!(
            Settings::resolve(ServeArgs::default()),
            Err(SettingsError::NoUpstream)
        ));
    }

    #[test]
    fn zero_spans_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idemgate.toml");
        let resolve = |file: &str, args: ServeArgs| {
            std::fs::write(&path, format!("upstream = \"http://x\"\n{file}")).unwrap();
            Settings::resolve(ServeArgs {
                config: Some(path.clone()),
                ..args
            })
        };
        let zero = Some(Duration::ZERO);
        for (args, name) in [
            (
                ServeArgs {
                    ttl: zero,
                    ..Default::default()
                },
                "`ttl`",
            ),
            (
                ServeArgs {
                    lock_timeout: zero,
                    ..Default::default()
                },
                "`lock_timeout`",
            ),
            (
                ServeArgs {
                    upstream_timeout: zero,
                    ..Default::default()
                },
                "`upstream_timeout`",
            ),
            (
                ServeArgs {
                    header_timeout: zero,
                    ..Default::default()
                },
                "`header_timeout`",
            ),
        ] {
            let err = resolve("", args).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("at least 1ms"), "{err}");
        }
        let route = "[[route]]\nprefix = \"/p\"\nlock_timeout = \"0s\"\n";
        let err = resolve(route, ServeArgs::default()).unwrap_err().to_string();
        assert!(err.contains("`route.lock_timeout`"), "{err}");
        let route = "[[route]]\nprefix = \"/p\"\nttl = \"500us\"\n";
        let err = resolve(route, ServeArgs::default()).unwrap_err().to_string();
        assert!(err.contains("`route.ttl`"), "{err}");
        // Short but not zero is allowed, and wait_in_flight = 0s still means "off".
        let s = resolve(
            "wait_in_flight = \"0s\"\n",
            ServeArgs {
                lock_timeout: Some(Duration::from_millis(1)),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.layer.lock_timeout, Duration::from_millis(1));
        assert_eq!(s.layer.wait_in_flight, None);
    }

    #[test]
    fn stream_content_types_are_media_types() {
        let resolve = |types: &[&str]| {
            Settings::resolve(ServeArgs {
                upstream: Some("http://x".into()),
                stream_content_types: Some(types.iter().map(|t| t.to_string()).collect()),
                ..Default::default()
            })
        };
        let d = Settings::resolve(ServeArgs {
            upstream: Some("http://x".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(d.layer.stream_content_types, ["text/event-stream"]);
        let s = resolve(&[" Application/X-NDJSON", "", "text/event-stream"]).unwrap();
        assert_eq!(
            s.layer.stream_content_types,
            ["application/x-ndjson", "text/event-stream"]
        );
        assert!(
            resolve(&[""]).unwrap().layer.stream_content_types.is_empty(),
            "none streamed"
        );
        // As the command line gives them: `--stream-content-types ""` streams nothing.
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ServeArgs,
        }
        for (flag, expected) in [
            ("", &[][..]),
            (
                "text/event-stream,application/x-ndjson",
                &["text/event-stream", "application/x-ndjson"],
            ),
        ] {
            let cli = <Cli as clap::Parser>::try_parse_from([
                "idemgate",
                "--upstream",
                "http://x",
                "--stream-content-types",
                flag,
            ])
            .unwrap();
            assert_eq!(
                Settings::resolve(cli.args).unwrap().layer.stream_content_types,
                expected,
                "{flag:?}"
            );
        }
        for bad in ["ndjson", "text/", "/json", "text/plain; charset=utf-8"] {
            let err = resolve(&[bad]).unwrap_err().to_string();
            assert!(err.contains("`stream_content_types`"), "{bad}: {err}");
        }
    }

    #[test]
    fn flags_and_the_file_take_names_as_users_write_them() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ServeArgs,
        }
        let parse = |extra: &[&str]| {
            let argv = ["idemgate", "--upstream", "http://x"].iter().chain(extra).copied();
            <Cli as clap::Parser>::try_parse_from(argv).map(|c| Settings::resolve(c.args).unwrap())
        };
        let s = parse(&["--methods", "post,Put", "--require-key", "1", "--canonical-json=yes"]).unwrap();
        assert_eq!(s.layer.methods, [Method::POST, Method::PUT]);
        assert!(s.layer.require_key);
        assert!(s.layer.fingerprint.canonical_json);
        let s = parse(&["--require-key=off", "--canonical-json", "0"]).unwrap();
        assert!(!s.layer.require_key && !s.layer.fingerprint.canonical_json);
        assert!(parse(&["--require-key=maybe"]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idemgate.toml");
        let from_file = |body: &str| {
            std::fs::write(&path, body).unwrap();
            Settings::resolve(ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            })
        };
        let s = from_file(
            r#"
upstream = "http://x"
lock-timeout = "5s"
require-key = true
canonical_json = true
fingerprint_headers = ["content-type", "x-tenant"]
[[route]]
prefix = "/p"
wait-in-flight = "2s"
"#,
        )
        .unwrap();
        assert_eq!(s.layer.lock_timeout, Duration::from_secs(5));
        assert!(s.layer.require_key);
        assert!(s.layer.fingerprint.canonical_json);
        assert_eq!(s.layer.fingerprint.headers.len(), 2);
        assert_eq!(
            s.layer.routes[0].overrides.wait_in_flight,
            Some(Some(Duration::from_secs(2)))
        );
        let err =
            from_file("upstream = \"http://x\"\ncanonical_json = true\nfingerprint = { canonical_json = false }\n")
                .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn scheduler_defaults_to_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idemgate.toml");
        let resolve = |file: &str, flag: Option<&str>| {
            std::fs::write(&path, format!("upstream = \"http://x\"\n{file}")).unwrap();
            Settings::resolve(ServeArgs {
                config: Some(path.clone()),
                scheduler: flag.map(str::to_string),
                ..Default::default()
            })
        };
        assert_eq!(resolve("", None).unwrap().scheduler, Scheduler::Batch);
        assert_eq!(
            resolve("scheduler = \"normal\"\n", None).unwrap().scheduler,
            Scheduler::Normal
        );
        assert_eq!(
            resolve("scheduler = \"normal\"\n", Some("batch")).unwrap().scheduler,
            Scheduler::Batch,
            "flag beats file"
        );
        let err = resolve("scheduler = \"fifo\"\n", None).unwrap_err();
        assert!(err.to_string().contains("scheduler"), "{err}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10MiB").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
    }
}
