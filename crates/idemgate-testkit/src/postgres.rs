//! Private PostgreSQL instances (written with the PostgreSQL store).
//!
//! [`Postgres::start`] runs `initdb` into a fresh temporary directory and starts `postgres` on a
//! free loopback port (never the machine's own server on 5432), with trust authentication for the
//! `postgres` role. The binaries come from `$IDEMGATE_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin` (see `scripts/deps.sh`). PostgreSQL refuses to run as root: as
//! root, the directory is given to the `postgres` OS user and both programs run as that user.
//!
//! The server runs under a small `sh` guard that holds the read end of a pipe from this process:
//! when the handle is stopped or dropped, or this process dies (a server kept in a `static` is
//! never dropped), the pipe closes and the guard shuts the server down at once (`SIGQUIT`,
//! immediate shutdown, which also ends its backends) and removes the directory unless a restart
//! is coming. fsync and `synchronous_commit` keep their defaults.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long starting a server may take.
const START_WITHIN: Duration = Duration::from_secs(30);

/// How long a stop may take before the guard is killed.
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// The guard: starts the server in the background, waits for its standard input to close, then
/// stops the server (immediate shutdown) and removes the directory unless `$DIR/.keep` exists.
const GUARD: &str = r#"dir="$1"; shift
"$@" &
pid=$!
read -r _ignored
kill -QUIT "$pid" 2>/dev/null
wait "$pid"
[ -e "$dir/.keep" ] || rm -rf "$dir"
"#;

/// A private PostgreSQL server; killed and removed on drop.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    child: Option<(Child, ChildStdin)>,
}

/// The directory with `initdb` and `postgres`.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("IDEMGATE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .map(|p| p.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!("no PostgreSQL server binaries: set IDEMGATE_PG_BIN or install postgresql (scripts/deps.sh)"),
    }
}

/// The uid and gid of the `postgres` OS user, when this process is root.
fn run_as() -> Option<(u32, u32)> {
    let uid = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if uid(&["-u"])? != 0 {
        return None;
    }
    match (uid(&["-u", "postgres"]), uid(&["-g", "postgres"])) {
        (Some(u), Some(g)) => Some((u, g)),
        _ => panic!("running as root and there is no `postgres` OS user to run PostgreSQL as"),
    }
}

impl Postgres {
    /// Creates a cluster in a temporary directory and starts it on a free port.
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let run_as = run_as();
        let dir = tempfile::Builder::new()
            .prefix("idemgate-pg-")
            .tempdir_in("/tmp")
            .expect("a temporary directory");
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the PostgreSQL directory");
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdin(Stdio::null());
        if let Some((uid, gid)) = run_as {
            std::os::unix::process::CommandExt::uid(&mut initdb, uid);
            std::os::unix::process::CommandExt::gid(&mut initdb, gid);
        }
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            port: crate::free_port(),
            dir,
            bin,
            run_as,
            child: None,
        };
        pg.spawn();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.dir.path().join(".keep"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open the PostgreSQL log");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(GUARD)
            .arg("idemgate-pg-guard")
            .arg(self.dir.path())
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=32MB",
            ])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("the PostgreSQL log"))
            .stderr(log);
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
            std::os::unix::process::CommandExt::gid(&mut cmd, gid);
        }
        let mut child = cmd.spawn().expect("start postgres");
        let stdin = child.stdin.take().expect("the guard's standard input");
        self.child = Some((child, stdin));
        self.wait_ready();
    }

    /// Waits until the server accepts connections (`pg_isready`), or panics with its log.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_WITHIN;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut port_open = false;
        while Instant::now() < deadline {
            if let Some((child, _)) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("postgres exited ({status}) during start:\n{}", self.log_text());
                }
            }
            if !port_open {
                port_open = crate::wait_for_port(addr, Duration::from_millis(500));
                continue;
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-t", "2", "-q"])
                .arg("-p")
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "postgres did not accept connections on port {} within {START_WITHIN:?}:\n{}",
            self.port,
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data directory, socket and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of another database of this server.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL through `psql` as the `postgres` role (for test set-up: creating databases).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server at once (immediate shutdown, like a crash) and waits until it is gone.
    /// The data directory is kept for [`Postgres::restart`].
    pub fn stop(&mut self) {
        let _ = std::fs::File::create(self.dir.path().join(".keep"));
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some((mut child, mut stdin)) = self.child.take() else {
            return;
        };
        // Closing the pipe tells the guard to stop the server.
        let _ = stdin.write_all(b"stop\n");
        drop(stdin);
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the stopped server again on the same port with the same data.
    pub fn restart(&mut self) {
        self.shutdown();
        self.spawn();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.shutdown();
    }
}
