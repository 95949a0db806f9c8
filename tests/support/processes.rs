//! `taskweave` processes for the tests: the command run in a test's folder,
//! `taskweave worker`, output into a log file, and a guard that kills a
//! process when the test ends (panics included).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The `taskweave` binary run in `dir` (whose `taskweave.toml` it reads),
/// without `TASKWEAVE_CONFIG` or `DATABASE_URL` from the tests' environment.
pub fn taskweave(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_taskweave"));
    c.current_dir(dir).env_remove("TASKWEAVE_CONFIG").env_remove("DATABASE_URL");
    c
}

/// `taskweave worker ARGS...` in `dir` (see [`taskweave`]).
pub fn worker(dir: &Path, args: &[&str]) -> Command {
    let mut c = taskweave(dir);
    c.arg("worker").args(args);
    c
}

/// Start `cmd` with no input and its output (stdout and stderr) in the file `log`.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log");
    cmd.stdin(Stdio::null()).stdout(out.try_clone().expect("log")).stderr(out).spawn().expect("start a taskweave process")
}

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub Child);

impl Killed {
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.kill();
    }
}
