//! Durability across `kill -9`, the admin listener, graceful shutdown and start-up errors.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Gateway, Http, Upstream};

#[tokio::test]
async fn kill_9_under_load_loses_no_record_whose_response_was_received() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let store = store.to_str().unwrap();
    let mut gw = Gateway::start(&["--upstream", &up.url(), "--store", store]);
    let http = Http::default();
    let received: Arc<Mutex<HashMap<String, bytes::Bytes>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let url = gw.url("/pay");
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (http, url, received, done, next) =
                (http.clone(), url.clone(), received.clone(), done.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= 2000 {
                        break;
                    }
                    let key = format!("key-{i}");
                    let headers = [("idempotency-key", key.as_str()), ("content-type", "application/json")];
                    match http.try_send("POST", &url, &headers, format!("{{\"i\":{i}}}")).await {
                        Ok(r) if r.status == 201 => {
                            received.lock().unwrap().insert(key, r.body);
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => break, // the gateway died under us
                    }
                }
            })
        })
        .collect();
    // Kill the gateway in the middle of the load, at a moment chosen by progress, not by time.
    assert!(eventually(Duration::from_secs(30), || async { done.load(Ordering::SeqCst) >= 300 }).await);
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    for w in workers {
        let _ = w.await;
    }
    let received = received.lock().unwrap().clone();
    assert!(received.len() >= 300);
    let executions = up.executions();

    let gw = Gateway::start(&["--upstream", &up.url(), "--store", store]);
    let url = gw.url("/pay");
    for (key, body) in &received {
        let i: usize = key.trim_start_matches("key-").parse().unwrap();
        let r = http.post(&url, key, &format!("{{\"i\":{i}}}")).await;
        assert!(
            r.replayed(),
            "{key} was acknowledged before the crash but not replayed: {r:?}"
        );
        assert_eq!(&r.body, body, "{key}");
    }
    assert_eq!(up.executions(), executions, "no acknowledged key executed twice");
}

#[tokio::test]
async fn restart_keeps_records_and_the_scope_secret() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let store = store.to_str().unwrap();
    let http = Http::default();
    let auth = [("idempotency-key", "r"), ("authorization", "Bearer carol")];
    let first = {
        let gw = Gateway::start(&["--upstream", &up.url(), "--store", store]);
        http.send("POST", &gw.url("/pay"), &auth, "{}").await
    };
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", store]);
    let again = http.send("POST", &gw.url("/pay"), &auth, "{}").await;
    assert!(
        again.replayed(),
        "a scoped key replays after a restart (the secret is kept)"
    );
    assert_eq!(again.body, first.body);
    assert_eq!(up.executions(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data/scope-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the secret is private to its owner");
    }
}

#[tokio::test]
async fn admin_health_readiness_metrics_and_key_api() {
    let up = Upstream::start().await;
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "s3cret-admin-token-0123\n").unwrap();
    let gw = Gateway::start(&[
        "--upstream",
        &up.url(),
        "--store",
        "memory",
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        token.path().to_str().unwrap(),
    ]);
    let http = Http::default();
    assert_eq!(http.send("GET", &gw.admin_url("/healthz"), &[], "").await.status, 200);
    assert_eq!(http.send("GET", &gw.admin_url("/readyz"), &[], "").await.status, 200);

    let key_headers = [("idempotency-key", "adm/1 x%"), ("authorization", "Bearer dave")];
    // "adm/1 x%" has a space: invalid. Use a key with reserved URL characters instead.
    assert_eq!(http.send("POST", &gw.url("/pay"), &key_headers, "{}").await.status, 400);
    let key_headers = [("idempotency-key", "adm/1?x%"), ("authorization", "Bearer dave")];
    assert_eq!(http.send("POST", &gw.url("/pay"), &key_headers, "{}").await.status, 201);
    http.send("POST", &gw.url("/pay"), &key_headers, "{}").await;
    let path = "/keys/adm%2F1%3Fx%25";

    let no_token = http.send("GET", &gw.admin_url(path), &[], "").await;
    no_token.assert_problem(401, "unauthorized");
    let wrong = http
        .send(
            "GET",
            &gw.admin_url(path),
            &[("authorization", "Bearer s3cret-admin-token-0124")],
            "",
        )
        .await;
    wrong.assert_problem(401, "unauthorized");
    let bearer = [
        ("authorization", "Bearer s3cret-admin-token-0123"),
        ("idemgate-scope", "Bearer dave"),
    ];
    let got = http.send("GET", &gw.admin_url(path), &bearer, "").await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(got.json()["state"], "completed");
    assert_eq!(got.json()["status"], 201);
    // The scheme is case-insensitive.
    let lower = [
        ("authorization", "bearer s3cret-admin-token-0123"),
        ("idemgate-scope", "Bearer dave"),
    ];
    assert_eq!(http.send("GET", &gw.admin_url(path), &lower, "").await.status, 200);
    // Under another scope the key does not exist.
    let other = [
        ("authorization", "Bearer s3cret-admin-token-0123"),
        ("idemgate-scope", "Bearer eve"),
    ];
    http.send("GET", &gw.admin_url(path), &other, "")
        .await
        .assert_problem(404, "key-not-found");
    // Delete: the key executes again.
    assert_eq!(http.send("DELETE", &gw.admin_url(path), &bearer, "").await.status, 204);
    http.send("DELETE", &gw.admin_url(path), &bearer, "")
        .await
        .assert_problem(404, "key-not-found");
    assert!(!http.send("POST", &gw.url("/pay"), &key_headers, "{}").await.replayed());
    assert_eq!(up.executions(), 2);

    let metrics = String::from_utf8(http.send("GET", &gw.admin_url("/metrics"), &[], "").await.body.to_vec()).unwrap();
    for line in [
        "idemgate_requests_total{outcome=\"executed\"} 2",
        "idemgate_requests_total{outcome=\"replayed\"} 1",
        "idemgate_requests_total{outcome=\"invalid\"} 1",
        "# TYPE idemgate_store_seconds histogram",
        "idemgate_store_seconds_bucket{op=\"claim\",le=\"+Inf\"} ",
        "idemgate_store_seconds_count{op=\"claim\"} ",
        "idemgate_store_seconds_count{op=\"complete\"} 2",
        "idemgate_upstream_seconds_bucket{le=\"30\"} 2",
        "idemgate_upstream_seconds_count 2",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    // A caller that sent its scope header twice is looked up with both values, in order.
    let twice = [
        ("idempotency-key", "adm-2"),
        ("authorization", "Bearer frank"),
        ("authorization", "tenant-7"),
    ];
    assert_eq!(http.send("POST", &gw.url("/pay"), &twice, "{}").await.status, 201);
    let token = ("authorization", "Bearer s3cret-admin-token-0123");
    let both = [
        token,
        ("idemgate-scope", "Bearer frank"),
        ("idemgate-scope", "tenant-7"),
    ];
    let got = http.send("GET", &gw.admin_url("/keys/adm-2"), &both, "").await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    for partial in [
        &[token, ("idemgate-scope", "Bearer frank")][..],
        &[
            token,
            ("idemgate-scope", "tenant-7"),
            ("idemgate-scope", "Bearer frank"),
        ],
    ] {
        http.send("GET", &gw.admin_url("/keys/adm-2"), partial, "")
            .await
            .assert_problem(404, "key-not-found");
    }
    // Without a token file the key API is off.
    let open = Gateway::start(&[
        "--upstream",
        &up.url(),
        "--store",
        "memory",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    http.send("GET", &open.admin_url("/keys/x"), &[("authorization", "Bearer ")], "")
        .await
        .assert_problem(403, "admin-disabled");
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory"]);
    let http = Http::default();
    let url = gw.url("/pay?delay_ms=500");
    let inflight = tokio::spawn({
        let http = http.clone();
        async move { http.post(&url, "drain", "{}").await }
    });
    assert!(up.wait_for_executions(1).await);
    let pid = gw.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 201, "the in-flight request completed during shutdown");
    let status = gw.exit_within(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exited cleanly within 10 s: {status:?}"
    );
}

#[test]
fn bad_configuration_is_a_clear_start_up_error() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_idemgate"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&["serve", "--upstream", "http://127.0.0.1:1", "--store", "mongodb://db"]);
    assert!(e.contains("unknown store"), "{e}");
    let e = run(&["serve", "--upstream", "http://127.0.0.1:1", "--ttl", "forever"]);
    assert!(e.contains("--ttl"), "{e}");
    let e = run(&["serve", "--store", "memory"]);
    assert!(e.contains("--upstream is required"), "{e}");
    let e = run(&["serve", "--upstream", "https://127.0.0.1:1", "--store", "memory"]);
    assert!(e.contains("http://"), "{e}");
    let help = Command::new(env!("CARGO_BIN_EXE_idemgate"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--upstream",
        "--listen",
        "--store",
        "--ttl",
        "--lock-timeout",
        "--key-header",
        "--scope-header",
        "--require-key",
        "--max-body",
        "--upstream-timeout",
        "--admin-listen",
        "--admin-token-file",
        "--config",
        "--log-format",
        "--wait-in-flight",
        "IDEMGATE_TTL",
        "[[route]]",
        "memory?capacity=N",
        "./idemgate-data",
        "redis://",
        "rediss://",
        "redis+cluster://",
        "valkey://",
        "postgres://",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[tokio::test]
async fn a_second_gateway_on_a_busy_port_is_a_start_up_error() {
    let up = Upstream::start().await;
    // Serving threads share their port with SO_REUSEPORT; another process must not join them
    // (it would split the traffic, and so the keys, between two stores).
    for threads in ["1", "2"] {
        let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory", "--threads", threads]);
        let mut second = Command::new(env!("CARGO_BIN_EXE_idemgate"))
            .args([
                "serve",
                "--upstream",
                &up.url(),
                "--store",
                "memory",
                "--threads",
                threads,
            ])
            .args(["--listen", &gw.addr.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = second.id().to_string();
        let stderr = second.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut { stderr }, &mut err);
            let _ = tx.send((second.wait(), err));
        });
        let Ok((status, err)) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("a second gateway started on {} (--threads {threads})", gw.addr);
        };
        assert!(!status.unwrap().success());
        assert!(err.contains("cannot listen on") && err.contains("in use"), "{err}");
        // The first one still serves.
        assert_eq!(Http::default().post(&gw.url("/p"), threads, "{}").await.status, 201);
    }
}

#[tokio::test]
async fn environment_variables_configure_the_gateway() {
    let up = Upstream::start().await;
    let gw = Gateway::start_env(
        &[],
        &[
            ("IDEMGATE_UPSTREAM", &up.url()),
            ("IDEMGATE_STORE", "memory"),
            ("IDEMGATE_REQUIRE_KEY", "1"),
        ],
    );
    let http = Http::default();
    http.send("POST", &gw.url("/pay"), &[], "{}")
        .await
        .assert_problem(400, "missing-key");
    // A flag beats the environment.
    let gw = Gateway::start_env(
        &["--require-key=false"],
        &[
            ("IDEMGATE_UPSTREAM", &up.url()),
            ("IDEMGATE_STORE", "memory"),
            ("IDEMGATE_REQUIRE_KEY", "true"),
        ],
    );
    assert_eq!(http.send("POST", &gw.url("/pay"), &[], "{}").await.status, 201);
}

#[tokio::test]
async fn json_logs_carry_one_line_per_request_with_its_outcome() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--upstream", &up.url(), "--store", "memory", "--log-format", "json"]);
    let http = Http::default();
    http.send(
        "POST",
        &gw.url("/pay"),
        &[("idempotency-key", "log-key-1"), ("authorization", "Bearer topsecret")],
        "{}",
    )
    .await;
    http.send(
        "POST",
        &gw.url("/pay"),
        &[("idempotency-key", "log-key-1"), ("authorization", "Bearer topsecret")],
        "{}",
    )
    .await;
    let found = eventually(Duration::from_secs(5), || async {
        let logs = gw.logs();
        logs.lines().filter(|l| l.contains("\"outcome\":\"replayed\"")).count() == 1
            && logs.lines().filter(|l| l.contains("\"outcome\":\"executed\"")).count() == 1
    })
    .await;
    assert!(found, "{}", gw.logs());
    for line in gw.logs().lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).expect("every log line is JSON");
    }
    assert!(!gw.logs().contains("topsecret"));
    assert!(!gw.logs().contains("log-key-1"));
}

#[tokio::test]
async fn demo_runs_in_one_command_and_charges_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idemgate"));
    cmd.args(["demo", "--listen", "127.0.0.1:0"]).current_dir(dir.path());
    let gw = Gateway::spawn(cmd);
    let http = Http::default();
    let body = r#"{"amount":1999,"currency":"usd"}"#;
    let first = http.post(&gw.url("/payments"), "order-1001", body).await;
    assert_eq!(first.status, 201);
    assert!(first.header("location").is_some());
    let retry = http.post(&gw.url("/payments"), "order-1001", body).await;
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    http.post(
        &gw.url("/payments"),
        "order-1001",
        r#"{"amount":5000,"currency":"usd"}"#,
    )
    .await
    .assert_problem(422, "key-reused");
    let count = http.send("GET", &gw.url("/payments"), &[], "").await;
    assert_eq!(count.json()["charges"], 1);
    // The demo runs on the embedded default store, in ./idemgate-data.
    assert!(dir.path().join("idemgate-data/records.log").exists());
    // Its banner's curl lines work as printed, on this run and on the next one in the same
    // directory (whose records are kept but whose demo API starts from 0 charges).
    let mut keys = Vec::new();
    drop(gw);
    for _ in 0..2 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idemgate"));
        cmd.args(["demo", "--listen", "127.0.0.1:0"]).current_dir(dir.path());
        let gw = Gateway::spawn(cmd);
        let printed = eventually(Duration::from_secs(10), || async { gw.printed().contains("Ctrl-C") }).await;
        assert!(printed, "no banner: {}", gw.printed());
        let banner = gw.printed();
        let key = banner
            .split("Idempotency-Key: ")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap()
            .to_string();
        assert!(
            banner.matches(&format!("Idempotency-Key: {key}'")).count() == 3,
            "{banner}"
        );
        let first = http.post(&gw.url("/payments"), &key, body).await;
        assert_eq!(first.status, 201, "{banner}");
        assert!(!first.replayed());
        assert!(http.post(&gw.url("/payments"), &key, body).await.replayed());
        let count = http.send("GET", &gw.url("/payments"), &[], "").await;
        assert_eq!(count.json()["charges"], 1);
        keys.push(key);
    }
    assert_ne!(keys[0], keys[1], "each run prints a key of its own");
}

/// The scheduling policy (field 41) of every thread of `pid`, from `/proc/<pid>/task/*/stat`.
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        // A thread may end between the listing and the read (this test binary's other tests).
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The name is in parentheses and may hold spaces; the fields after it start at field 3.
        let (name, rest) = stat.rsplit_once(')').unwrap();
        let name = name.split_once('(').unwrap().1.to_string();
        let policy = rest.split_whitespace().nth(41 - 3).unwrap().parse().unwrap();
        out.push((name, policy));
    }
    out
}

/// Every thread of the gateway (serving threads, runtime workers, the log writer) runs under
/// SCHED_BATCH by default and under SCHED_OTHER with `--scheduler normal` (docs/DESIGN.md,
/// "Serving threads").
#[cfg(target_os = "linux")]
#[test]
fn threads_run_under_the_scheduler_asked_for() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    for (extra, want) in [
        (None, SCHED_BATCH),
        (Some("normal"), SCHED_OTHER),
        (Some("batch"), SCHED_BATCH),
    ] {
        let mut args = vec![
            "--upstream",
            "http://127.0.0.1:9",
            "--store",
            "memory",
            "--threads",
            "2",
        ];
        if let Some(s) = extra {
            args.extend(["--scheduler", s]);
        }
        // The listening line comes once both serving threads run (server::serve_threads).
        let gw = Gateway::start(&args);
        let threads = thread_policies(gw.child.id());
        assert_eq!(
            threads.iter().filter(|(n, _)| n.starts_with("idemgate-http")).count(),
            2,
            "{threads:?}"
        );
        assert!(threads.iter().all(|(_, p)| *p == want), "{extra:?}: {threads:?}");
    }
    // The policy is the gateway's own: this test process keeps the default.
    assert!(thread_policies(std::process::id())
        .iter()
        .all(|(_, p)| *p == SCHED_OTHER));
}

/// The gateway turns transparent huge pages off for itself: zeroing a 2 MiB page on its first
/// touch stalls the serving thread that touched it (docs/DESIGN.md, "Serving threads").
#[cfg(target_os = "linux")]
#[test]
fn transparent_huge_pages_are_off_in_the_gateway() {
    let gw = Gateway::start(&["--upstream", "http://127.0.0.1:9", "--store", "memory"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.child.id())).unwrap();
    // Kernels before 5.0 do not report the flag; every kernel this runs on in CI does.
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{status}");
    }
    // The setting is the process's own: this test process keeps its default.
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(
        own.lines().all(|l| !l.starts_with("THP_enabled:") || l.ends_with('1')),
        "{own}"
    );
}
