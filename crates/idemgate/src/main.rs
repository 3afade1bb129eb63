//! `idemgate`: an idempotency-key gateway in front of any HTTP API.
//!
//! `idemgate serve` runs the reverse proxy; `idemgate demo` runs it in front of a built-in demo
//! payments API. The idempotency rules live in `idemgate-tower`; this binary wires a proxy
//! service, a store, the admin listener and signals around them.

// A binary: `pub` marks what modules share with each other, not a public API.
#![allow(unreachable_pub)]

mod admin;
mod demo;
mod head_timeout;
mod os;
mod parse_errors;
mod proxy;
mod recorder;
mod server;
mod settings;
mod stores;
mod telemetry;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use idemgate_tower::IdempotencyLayer;
use tokio::net::TcpListener;
use tower::Layer;

use crate::settings::{ServeArgs, Settings};

/// mimalloc: per-thread free lists suit a proxy's many short-lived buffers (glibc's malloc spent
/// about 13 % of a new-key profile consolidating chunks; docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AFTER_HELP: &str = "\
Every flag can also be set with an IDEMGATE_* environment variable (--lock-timeout is
IDEMGATE_LOCK_TIMEOUT) or in the --config TOML file (lock_timeout = \"60s\"), which can also hold
per-route policies:

    [[route]]
    prefix = \"/payments\"          # longest matching prefix wins
    methods = [\"POST\"]
    ttl = \"1h\"
    require_key = true
    release_statuses = [429, 500, 502, 503]
    wait_in_flight = \"5s\"
    fingerprint = { headers = [\"content-type\"], canonical_json = true }

Precedence: flags, then environment, then the file, then defaults.
Durations: 500ms, 2s, 24h. Sizes: 4096, 512KiB, 10MiB.
Stores (--store):
    memory | memory?capacity=N              in-process, gone on restart
    DIR                                     embedded durable store (default ./idemgate-data)
    redis://[USER:PASSWORD@]HOST:PORT[/DB]  a Redis or Valkey server (also valkey://)
    rediss://HOST:PORT[/DB][?ca=PATH]       the same over TLS (also valkeys://)
    redis+cluster://HOST:PORT[,HOST:PORT]   a Redis Cluster (also rediss+cluster://, valkey+cluster://)
    postgres://USER[:PASSWORD]@HOST:PORT/DB a PostgreSQL database (also postgresql://)
  Shared stores (Redis, PostgreSQL) need --scope-secret-file or IDEMGATE_SCOPE_SECRET, the same on
  every gateway; every store but memory refuses to start with a secret other than its first.
Logs: IDEMGATE_LOG sets the filter (default info; one line per request at info).
See README.md and docs/DESIGN.md for the semantics.";

#[derive(Parser, Debug)]
#[command(name = "idemgate", version, about = "An idempotency-key gateway: executes each keyed request once and replays its response", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway in front of --upstream.
    #[command(after_help = AFTER_HELP)]
    Serve(ServeArgs),
    /// Run the gateway on the embedded store in front of a built-in demo payments API.
    Demo(ServeArgs),
}

fn main() -> anyhow::Result<()> {
    os::no_huge_pages();
    let cli = Cli::parse();
    let (mut settings, demo) = match cli.command {
        Command::Serve(args) => (Settings::resolve(args)?, false),
        Command::Demo(mut args) => {
            // The demo API starts on the runtime below; its address replaces this placeholder.
            args.upstream = Some("http://127.0.0.1:0".into());
            (Settings::resolve(args)?, true)
        }
    };
    // Before any thread starts, so that every thread inherits the policy.
    let scheduled = os::set_scheduler(settings.scheduler);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        if demo {
            settings.upstream = format!("http://{}", demo::start().await?);
            run(settings, scheduled, Some(demo::banner)).await
        } else {
            run(settings, scheduled, None).await
        }
    })
}

async fn run(
    settings: Settings,
    scheduled: Result<(), os::SchedulerError>,
    banner: Option<fn(std::net::SocketAddr)>,
) -> anyhow::Result<()> {
    let _log_guard = telemetry::init_logs(settings.log_json);
    if let Err(e) = scheduled {
        tracing::warn!(error = %e, scheduler = ?settings.scheduler, "cannot set the scheduling policy; the kernel's default applies");
    }
    let prometheus = telemetry::init_metrics().ok();
    let shortest_lock = settings
        .layer
        .routes
        .iter()
        .filter_map(|r| r.overrides.lock_timeout)
        .fold(settings.layer.lock_timeout, Duration::min);
    if shortest_lock < settings.upstream_timeout {
        tracing::warn!(
            lock_timeout = ?shortest_lock,
            upstream_timeout = ?settings.upstream_timeout,
            "--lock-timeout is shorter than --upstream-timeout: a slow request's key can be taken over while it still runs"
        );
    }
    let (store, hasher) = stores::open(&settings.store, settings.scope_secret.as_deref())
        .await
        .with_context(|| format!("cannot open store {}", stores::redact(&settings.store)))?;
    let proxy = proxy::Proxy::new(&settings.upstream, settings.upstream_timeout)?;
    let layer = IdempotencyLayer::new(store.clone(), hasher, settings.layer.clone());
    let svc = layer.layer(proxy);

    let serve_opts = server::ServeOptions {
        drain: settings.shutdown_timeout,
        header_timeout: settings.header_timeout,
    };
    let on_threads = stores::serves_on_threads(&settings.store);
    let threads = serving_threads(settings.threads, on_threads);
    // Stores that serve each thread on that thread do so even with one thread (a current-thread
    // runtime wakes nothing across threads); a Redis Cluster and PostgreSQL, with one thread,
    // serve on the shared runtime that their clients run on.
    let own_threads = threads > 1 || on_threads;
    let listener = if !own_threads {
        TcpListener::bind(settings.listen).await
    } else {
        server::bind_reuseport_first(settings.listen).and_then(TcpListener::from_std)
    }
    .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let admin_task = match settings.admin_listen {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (admin)"))?;
            println!("admin listening on http://{}", l.local_addr()?);
            let admin = Arc::new(admin::Admin {
                layer: layer.clone(),
                token: settings.admin_token.clone(),
                prometheus: prometheus.clone(),
            });
            Some(tokio::spawn(admin::serve(l, admin)))
        }
        None => None,
    };
    let housekeeping = tokio::spawn(housekeeping(store.clone(), settings.purge_interval));
    let shutdown = shutdown_signal();
    // The listening line is the gateway's readiness signal (tests and scripts wait for it): with
    // serving threads it comes once every one of them runs its event loop.
    let announce = || {
        println!(
            "idemgate listening on http://{addr} -> {} (store: {} {})",
            settings.upstream,
            store.kind(),
            stores::redact(&settings.store)
        );
        tracing::info!(%addr, upstream = %settings.upstream, store = store.kind(), "idemgate started");
        if let Some(banner) = banner {
            banner(addr);
        }
    };
    if !own_threads {
        announce();
        server::serve(listener, svc, shutdown, serve_opts).await;
    } else {
        let first = listener.into_std()?;
        let make_svc = || -> anyhow::Result<_> {
            Ok(layer.layer(proxy::Proxy::new(&settings.upstream, settings.upstream_timeout)?))
        };
        server::serve_threads(first, threads, make_svc, announce, shutdown, serve_opts).await?;
    }
    housekeeping.abort();
    if let Some(t) = admin_task {
        t.abort();
    }
    store.flush().await.context("flushing the store")?;
    tracing::info!("stopped");
    Ok(())
}

/// `--threads`, or by default one serving thread per CPU for the stores that serve each thread on
/// that thread (in-process stores, and a single Redis with a connection per serving thread). The
/// Redis Cluster and PostgreSQL clients run their connections on the shared runtime, so from a
/// serving thread every store call would cross threads twice: they default to one listener on
/// the shared runtime (measured, new keys on Redis with its shared connection: 8.5k req/s with 1,
/// 7.2k with 2 serving threads; PERFORMANCE.md).
fn serving_threads(configured: Option<usize>, on_threads: bool) -> usize {
    match configured {
        Some(n) => n,
        None if on_threads => std::thread::available_parallelism().map_or(1, usize::from),
        None => 1,
    }
}

/// Purges expired records (the layer's batch loop) and refreshes gauges.
async fn housekeeping(store: Arc<dyn idemgate_core::Store>, every: Duration) {
    let records = metrics::gauge!("idemgate_records");
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    loop {
        tick.tick().await;
        match idemgate_tower::purge_expired(&*store, idemgate_core::time::now_ms()).await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "expired records purged"),
            Err(e) => tracing::warn!(error = %e, "purging expired records failed"),
        }
        if let Some(n) = store.len_hint() {
            records.set(n as f64);
        }
    }
}

/// Registers SIGTERM and SIGINT handlers now (so a signal sent as soon as the gateway says it
/// listens is never the default, fatal one) and resolves when either arrives.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
