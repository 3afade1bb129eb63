//! `--store SPEC` → a store, and the scope secret that goes with it.
//!
//! - `memory` or `memory?capacity=N`: in-process, gone on restart; a random secret unless one is
//!   configured.
//! - anything without `://`: a directory for the embedded durable store, the append-only record
//!   log of `idemgate-store-log` (`DIR/records.log`). A directory made by an earlier version
//!   (`DIR/records.redb` exists) keeps being opened with the redb store. Unless a secret is
//!   configured, one is generated on first start and kept in `DIR/scope-secret` (mode 0600), so a
//!   restart keeps replaying. The secret's check value is kept in `DIR/scope-check`: a start with
//!   another secret (a changed `--scope-secret-file`, or one dropped from the command line) is
//!   refused, as the shared stores refuse it, instead of silently missing every replay.
//! - `redis://…`, `rediss://…`, `redis+cluster://h1:p1,h2:p2` (Redis, TLS, Cluster) and `postgres://…` / `postgresql://…` (PostgreSQL): shared stores for a
//!   fleet. They need a configured secret (every gateway of the fleet must derive the same record
//!   ids), and the store keeps a check value so a gateway with another secret is refused at start.
//! - any other scheme: a start-up error.

use std::path::Path;
use std::sync::Arc;

use idemgate_core::{MemoryStore, ScopeHasher, Store, StoreError};
use idemgate_store_log::LogStore;
use idemgate_store_postgres::PostgresStore;
use idemgate_store_redb::RedbStore;
use idemgate_store_redis::RedisStore;

/// The store spec could not be turned into a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreSpecError {
    #[error("unknown store {0:?}: use `memory`, a directory path, redis://… or postgres://…")]
    UnknownScheme(String),
    #[error(transparent)]
    Redis(#[from] idemgate_store_redis::OpenError),
    #[error(transparent)]
    Postgres(#[from] idemgate_store_postgres::OpenError),
    #[error("a shared store needs the fleet's scope secret: set --scope-secret-file or IDEMGATE_SCOPE_SECRET on every gateway")]
    SharedNeedsSecret,
    #[error(transparent)]
    Check(#[from] StoreError),
    #[error("invalid memory store option {0:?} (use memory?capacity=N)")]
    MemoryOption(String),
    #[error(transparent)]
    Embedded(#[from] idemgate_store_redb::OpenError),
    #[error(transparent)]
    Log(#[from] idemgate_store_log::OpenError),
    #[error("scope secret file {path}: {source}")]
    Secret { path: String, source: std::io::Error },
}

/// Whether the store named by `spec` can serve each serving thread on that thread: the in-process
/// stores, and a single Redis or Valkey (each serving thread opens a connection of its own). A Redis
/// Cluster and PostgreSQL keep their connections on the shared runtime (see main.rs).
pub fn serves_on_threads(spec: &str) -> bool {
    match spec.split_once("://") {
        None => true,
        Some((scheme, _)) => matches!(scheme, "redis" | "rediss" | "valkey" | "valkeys"),
    }
}

/// Opens the store named by `spec` and its scope hasher.
pub async fn open(spec: &str, secret: Option<&[u8]>) -> Result<(Arc<dyn Store>, ScopeHasher), StoreSpecError> {
    if spec == "memory" || spec.starts_with("memory?") {
        let capacity = match spec.strip_prefix("memory?") {
            None => usize::MAX,
            Some(opt) => opt
                .strip_prefix("capacity=")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| StoreSpecError::MemoryOption(opt.to_string()))?,
        };
        let hasher = secret.map_or_else(ScopeHasher::random, ScopeHasher::new);
        return Ok((Arc::new(MemoryStore::with_capacity(capacity)), hasher));
    }
    if let Some((scheme, _)) = spec.split_once("://") {
        let store: Arc<dyn Store> = match scheme {
            "postgres" | "postgresql" => Arc::new(PostgresStore::connect(spec).await?),
            _ if idemgate_store_redis::is_redis_url(spec) => Arc::new(RedisStore::connect(spec).await?),
            _ => return Err(StoreSpecError::UnknownScheme(redact(spec))),
        };
        let hasher = ScopeHasher::new(secret.ok_or(StoreSpecError::SharedNeedsSecret)?);
        store.check_secret(hasher.check_value()).await?;
        return Ok((store, hasher));
    }
    let dir = Path::new(spec);
    let store: Arc<dyn Store> = if dir.join("records.redb").exists() {
        tracing::info!(dir = %dir.display(), "found records.redb from an earlier version: keeping the redb store");
        Arc::new(RedbStore::open(dir)?)
    } else {
        Arc::new(LogStore::open(dir)?)
    };
    let hasher = match secret {
        Some(s) => ScopeHasher::new(s),
        None => ScopeHasher::new(&local_secret(dir)?),
    };
    // A directory from a version that kept no check value: its records were written under the
    // generated secret, so a configured secret other than that one is refused too.
    let generated = dir.join("scope-secret");
    if !dir.join(idemgate_core::SECRET_CHECK_FILE).exists() && generated.exists() && secret.is_some() {
        let earlier = ScopeHasher::new(&local_secret(dir)?);
        if earlier.check_value() != hasher.check_value() {
            return Err(StoreError::SecretMismatch.into());
        }
    }
    store.check_secret(hasher.check_value()).await?;
    Ok((store, hasher))
}

/// Reads `DIR/scope-secret`, creating it with 32 random bytes (hex) on first use.
fn local_secret(dir: &Path) -> Result<Vec<u8>, StoreSpecError> {
    let path = dir.join("scope-secret");
    let err = |source| StoreSpecError::Secret {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => return Ok(s.trim().as_bytes().to_vec()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        Err(_) => {}
    }
    let bytes = idemgate_core::scope::random_secret();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join("scope-secret.tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(hex.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, &path).map_err(err)?;
    // Make the rename itself durable: losing the secret would silently stop every replay.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(hex.into_bytes())
}

/// The store spec with any password (in the userinfo or a `password` query parameter) replaced, for logs.
pub fn redact(spec: &str) -> String {
    let Some((scheme, rest)) = spec.split_once("://") else {
        return spec.to_string();
    };
    let (authority, tail) = rest.split_once('/').map_or((rest, None), |(a, t)| (a, Some(t)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let (path, query) = match tail {
        Some(t) => t.split_once('?').map_or((Some(t), None), |(p, q)| (Some(p), Some(q))),
        None => (None, None),
    };
    let (authority, query) = match (path, query) {
        // `host?password=…` without a path.
        (None, None) => match authority.split_once('?') {
            Some((a, q)) => (a.to_string(), Some(q)),
            None => (authority, None),
        },
        _ => (authority, query),
    };
    let mut out = format!("{scheme}://{authority}");
    if let Some(p) = path {
        out.push('/');
        out.push_str(p);
    }
    if let Some(q) = query {
        // libpq-style `?password=…` and `?sslpassword=…`.
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://app:hunter2@db:5432/idem"),
            "postgres://app:***@db:5432/idem"
        );
        assert_eq!(redact("redis://:pw@cache:6379/0"), "redis://:***@cache:6379/0");
        assert_eq!(redact("redis://cache:6379"), "redis://cache:6379");
        assert_eq!(redact("./idemgate-data"), "./idemgate-data");
        assert_eq!(
            redact("postgres://app@db:5432/idem?sslmode=require&password=hunter2"),
            "postgres://app@db:5432/idem?sslmode=require&password=***"
        );
        assert_eq!(
            redact("postgresql://db?password=hunter2"),
            "postgresql://db?password=***"
        );
        assert_eq!(
            redact("postgres://app:a@b@db/idem?sslpassword=x&sslmode=verify-full"),
            "postgres://app:***@db/idem?sslpassword=***&sslmode=verify-full"
        );
        assert_eq!(
            redact("rediss://cache:6380/0?ca=/etc/ca.pem"),
            "rediss://cache:6380/0?ca=/etc/ca.pem"
        );
    }

    #[test]
    fn which_stores_serve_each_thread_on_that_thread() {
        for spec in [
            "memory",
            "memory?capacity=5",
            "./data",
            "redis://h:1",
            "rediss://h:1",
            "valkey://h:1",
        ] {
            assert!(serves_on_threads(spec), "{spec}");
        }
        for spec in ["redis+cluster://h:1,h:2", "valkey+cluster://h:1", "postgres://u@h/db"] {
            assert!(!serves_on_threads(spec), "{spec}");
        }
    }

    #[tokio::test]
    async fn a_directory_refuses_a_start_with_another_secret() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().to_str().unwrap();
        // First start without a secret: one is generated, and its check value kept.
        let (store, first) = open(spec, None).await.unwrap();
        store.flush().await.unwrap();
        drop(store);
        assert!(dir.path().join("scope-check").exists());
        // A restart without a secret keeps the generated one.
        let (store, again) = open(spec, None).await.unwrap();
        assert_eq!(again.check_value(), first.check_value());
        store.flush().await.unwrap();
        drop(store);
        // A configured secret other than the one the records were written under is refused.
        let err = open(spec, Some(b"fleet-secret")).await.unwrap_err();
        assert!(
            matches!(err, StoreSpecError::Check(StoreError::SecretMismatch)),
            "{err}"
        );
        // So is a secret configured on first start and then dropped from the command line.
        let configured = tempfile::tempdir().unwrap();
        let spec = configured.path().to_str().unwrap();
        let (store, _) = open(spec, Some(b"fleet-secret")).await.unwrap();
        store.flush().await.unwrap();
        drop(store);
        let (store, _) = open(spec, Some(b"fleet-secret")).await.unwrap();
        store.flush().await.unwrap();
        drop(store);
        let err = open(spec, None).await.unwrap_err();
        assert!(
            matches!(err, StoreSpecError::Check(StoreError::SecretMismatch)),
            "{err}"
        );
        // A directory from a version without the check file: the generated secret still counts.
        let legacy = tempfile::tempdir().unwrap();
        let spec = legacy.path().to_str().unwrap();
        let (store, _) = open(spec, None).await.unwrap();
        store.flush().await.unwrap();
        drop(store);
        std::fs::remove_file(legacy.path().join("scope-check")).unwrap();
        let err = open(spec, Some(b"fleet-secret")).await.unwrap_err();
        assert!(
            matches!(err, StoreSpecError::Check(StoreError::SecretMismatch)),
            "{err}"
        );
        assert!(open(spec, None).await.is_ok());
    }

    #[tokio::test]
    async fn directories_get_the_log_store_unless_an_earlier_version_made_them() {
        let fresh = tempfile::tempdir().unwrap();
        let (store, _) = open(fresh.path().to_str().unwrap(), None).await.unwrap();
        assert_eq!(store.kind(), "embedded");
        assert!(fresh.path().join("records.log").exists());
        assert!(!fresh.path().join("records.redb").exists());
        drop(store);
        let old = tempfile::tempdir().unwrap();
        drop(RedbStore::open(old.path()).unwrap());
        let (store, _) = open(old.path().to_str().unwrap(), None).await.unwrap();
        assert_eq!(store.kind(), "embedded");
        assert!(!old.path().join("records.log").exists());
    }
}
