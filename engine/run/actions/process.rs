//! `run` and `shell` actions: child processes in their own process group.
//!
//! A task's program runs as the leader of a new process group, so that
//! stopping the task stops everything it started: on cancellation the whole
//! group gets SIGTERM, then SIGKILL after the grace period. When the leader
//! exits on its own, whatever it left behind in its group is killed too, so a
//! task never leaves orphans (and a background child holding the output pipe
//! cannot keep the task running). A guard kills the group if the future is
//! dropped before the child was reaped.
//!
//! stdout and stderr are read concurrently, each up to
//! [`Limits::max_output_bytes`](super::Limits); a stream that goes over the
//! cap fails the task instead of growing without bound.

use super::{ActionError, Attempt};
use crate::plan::Action;
use crate::spec::raw::OutputFormat;
use serde_json::Value;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// How long to keep reading pipes after the group was killed; only a process
/// that left the group (setsid) can hold them open that long.
const PIPE_DRAIN: Duration = Duration::from_secs(2);
/// How often to check whether a terminated group is gone yet.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How much of stderr a failure message quotes.
const STDERR_TAIL_LINES: usize = 20;
const STDERR_TAIL_BYTES: usize = 4 * 1024;

/// What to start, rendered from the task's templates.
struct Spawn {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    output: OutputFormat,
}

fn prepare(a: &Attempt<'_>) -> Result<Spawn, ActionError> {
    let t = a.workflow.templates.capped(a.limits.max_output_bytes);
    let render_env = |env: &[(String, crate::plan::TValue)]| -> Result<Vec<(String, String)>, ActionError> {
        env.iter().map(|(k, v)| Ok((k.clone(), t.render_string(v, a.ctx)?))).collect()
    };
    let render_cwd = |cwd: &Option<crate::plan::TValue>| -> Result<Option<String>, ActionError> {
        Ok(cwd.as_ref().map(|c| t.render_string(c, a.ctx)).transpose()?)
    };
    match &a.task.action {
        Action::Run { argv, env, cwd, output } => {
            let mut argv = argv.iter().map(|x| t.render_string(x, a.ctx)).collect::<Result<Vec<_>, _>>()?.into_iter();
            let program = argv.next().unwrap_or_default();
            if program.is_empty() {
                return Err(ActionError::Permanent(format!("task `{}`: `run` needs a program name as its first element", a.task.name)));
            }
            Ok(Spawn { program, args: argv.collect(), env: render_env(env)?, cwd: render_cwd(cwd)?, output: *output })
        }
        Action::Shell { script, env, cwd, output } => {
            // Templated values reach `sh` as variables (`TW_1`, …) the
            // script references, never as script text.
            let bound = t.render_shell(script, a.ctx)?;
            let mut env = render_env(env)?;
            env.extend(bound.vars);
            Ok(Spawn { program: "sh".into(), args: vec!["-c".into(), bound.script], env, cwd: render_cwd(cwd)?, output: *output })
        }
        other => Err(ActionError::Permanent(format!("task `{}`: a `{}` action is not a process", a.task.name, other.kind()))),
    }
}

/// What a `run`/`shell` process keeps of the engine's environment, unless
/// `[engine] inherit_env` gives it all.
pub const MINIMAL_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// `PATH` when the engine has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Run the task's program (`run`) or script (`sh -c`, `shell`) to completion.
pub async fn execute(a: &Attempt<'_>) -> Result<Value, ActionError> {
    let spec = prepare(a)?;
    if let Some(dir) = &spec.cwd
        && !Path::new(dir).is_dir()
    {
        return Err(ActionError::Failed(format!("working directory `{dir}` does not exist or is not a directory")));
    }
    let mut cmd = Command::new(&spec.program);
    if !a.limits.inherit_env {
        // A minimal base, never the engine's own environment (its tokens,
        // database URLs, cloud credentials): tasks get what they declare.
        cmd.env_clear();
        for key in MINIMAL_ENV {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", DEFAULT_PATH);
        }
    }
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .env("TASKWEAVE_RUN_ID", a.run_id)
        .env("TASKWEAVE_TASK", &a.task.name)
        .env("TASKWEAVE_ATTEMPT", a.attempt.to_string())
        .envs(a.workflow.env.iter().map(|(k, v)| (k, v)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    watched(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| spawn_error(&spec.program, e))?;
    let Some(pid) = child.id() else {
        return Err(ActionError::Failed(format!("`{}` exited before it could be watched", spec.program)));
    };
    // The child called setpgid(0, 0) before exec, so its pid is the group id.
    let mut group = Group::new(pid as libc::pid_t);
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        group.kill();
        return Err(ActionError::Failed("could not capture the output of the process".into()));
    };
    tracing::debug!(task = %a.task.name, program = %spec.program, pid, "process started");

    let cap = a.limits.max_output_bytes;
    let mut out = Capture::new("stdout", cap);
    let mut err = Capture::new("stderr", cap);
    let mut status: Option<ExitStatus> = None;
    // Armed once the leader has exited.
    let drain = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(drain);
    let mut out_buf = [0u8; 8192];
    let mut err_buf = [0u8; 8192];

    while status.is_none() || out.open || err.open {
        tokio::select! {
            biased;
            _ = a.cancel.cancelled() => {
                if status.is_none() {
                    terminate(&mut child, &mut group, a.limits.kill_grace).await;
                } else {
                    group.kill();
                }
                return Err(ActionError::Cancelled);
            }
            r = stdout.read(&mut out_buf), if out.open => {
                if let Err(e) = out.take(r, &out_buf) {
                    kill_and_reap(&mut child, &mut group, status.is_none()).await;
                    return Err(e);
                }
            }
            r = stderr.read(&mut err_buf), if err.open => {
                if let Err(e) = err.take(r, &err_buf) {
                    kill_and_reap(&mut child, &mut group, status.is_none()).await;
                    return Err(e);
                }
            }
            s = child.wait(), if status.is_none() => {
                let s = s.map_err(|e| ActionError::Failed(format!("waiting for `{}` failed: {e}", spec.program)))?;
                status = Some(s);
                // The leader is gone: stop what it left behind in its group,
                // then give the pipes a moment to report end of file.
                group.kill();
                drain.as_mut().reset(tokio::time::Instant::now() + PIPE_DRAIN);
            }
            _ = &mut drain, if status.is_some() => {
                tracing::warn!(task = %a.task.name, "output pipes still open after the process group exited; a process left the group");
                break;
            }
        }
    }
    group.armed = false;
    let status = status.unwrap_or_default();
    tracing::debug!(task = %a.task.name, %status, "process finished");
    if !status.success() {
        return Err(ActionError::Failed(exit_message(&spec.program, status, &err.buf, &out.buf)));
    }
    output(spec.output, out.buf)
}

/// Turn stdout into the task output.
fn output(format: OutputFormat, stdout: Vec<u8>) -> Result<Value, ActionError> {
    match format {
        OutputFormat::Text => {
            let mut s = match String::from_utf8(stdout) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            };
            if s.ends_with('\n') {
                s.pop();
                if s.ends_with('\r') {
                    s.pop();
                }
            }
            Ok(Value::String(s))
        }
        OutputFormat::Json => serde_json::from_slice(&stdout).map_err(|e| {
            let text = String::from_utf8_lossy(&stdout);
            let shown: String = text.chars().take(200).collect();
            let more = if shown.len() < text.len() { "…" } else { "" };
            ActionError::Failed(format!("stdout is not valid JSON ({e}): {:?}{more}", shown))
        }),
    }
}

fn spawn_error(program: &str, e: std::io::Error) -> ActionError {
    match e.kind() {
        // No retry can make a missing program appear.
        std::io::ErrorKind::NotFound => ActionError::Permanent(format!("program `{program}` not found")),
        std::io::ErrorKind::PermissionDenied => ActionError::Failed(format!("program `{program}` cannot be executed: permission denied")),
        // A NUL byte in an argument or an environment value: no process can receive it.
        std::io::ErrorKind::InvalidInput => ActionError::Permanent(format!("cannot start `{program}`: {e}")),
        _ => ActionError::Failed(format!("cannot start `{program}`: {e}")),
    }
}

/// One captured stream, bounded.
struct Capture {
    name: &'static str,
    cap: usize,
    buf: Vec<u8>,
    open: bool,
}

impl Capture {
    fn new(name: &'static str, cap: usize) -> Self {
        Capture { name, cap, buf: Vec::new(), open: true }
    }

    /// Account for one read; an error when the stream went over its cap.
    fn take(&mut self, r: std::io::Result<usize>, chunk: &[u8]) -> Result<(), ActionError> {
        match r {
            Ok(0) => self.open = false,
            Ok(n) => {
                if self.buf.len() + n > self.cap {
                    return Err(ActionError::Failed(format!("{} exceeded {}", self.name, human_bytes(self.cap))));
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(stream = self.name, error = %e, "reading process output failed");
                self.open = false;
            }
        }
        Ok(())
    }
}

pub(crate) use crate::diag::human_bytes;

/// The process group of a running task. Dropping it while armed kills the
/// group, so an abandoned attempt never leaves processes behind.
struct Group {
    pgid: libc::pid_t,
    armed: bool,
}

impl Group {
    /// The group of a process spawned with [`watched`]: it dies with this
    /// process too (see [`super::watchdog`]).
    fn new(pgid: libc::pid_t) -> Self {
        Group { pgid, armed: true }
    }

    fn signal(&self, sig: libc::c_int) -> bool {
        // SAFETY: killpg only sends a signal; an invalid or vanished group is
        // reported through errno, which we read as "nothing left to signal".
        unsafe { libc::killpg(self.pgid, sig) == 0 }
    }

    fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// Whether any process of the group is still running. A member that
    /// has exited but not been reaped (a zombie, reparented to an init that
    /// reaps slowly) has stopped: counting it would stretch every timeout.
    fn alive(&self) -> bool {
        self.signal(0) && group_has_running_member(self.pgid)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
        super::watchdog::forget(self.pgid);
    }
}

/// Have the process announce its group to the watchdog before it execs.
fn watched(cmd: &mut Command) {
    if let Some(fd) = super::watchdog::fd() {
        // SAFETY: `announce` makes only async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || {
                super::watchdog::announce(fd);
                Ok(())
            });
        }
    }
}

/// Whether a process of group `pgid` exists that is not a zombie, from
/// `/proc/PID/stat` (`pid (comm) state ppid pgrp ...`). Where `/proc` cannot
/// be read, every member counts.
fn group_has_running_member(pgid: libc::pid_t) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return true };
    for e in entries.flatten() {
        if !e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // `comm` may hold spaces and parentheses: read after the last `)`.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut fields = rest.split_ascii_whitespace();
        let (Some(state), Some(_ppid), Some(pgrp)) = (fields.next(), fields.next(), fields.next()) else { continue };
        if pgrp.parse::<libc::pid_t>() == Ok(pgid) && !matches!(state, "Z" | "X") {
            return true;
        }
    }
    false
}

/// SIGKILL the group and reap the leader.
async fn kill_and_reap(child: &mut Child, group: &mut Group, leader_running: bool) {
    group.kill();
    if leader_running {
        let _ = child.wait().await;
    }
    group.armed = false;
}

/// SIGTERM the group, wait up to `grace` for every member to exit, then
/// SIGKILL whatever is left and reap the leader.
async fn terminate(child: &mut Child, group: &mut Group, grace: Duration) {
    group.signal(libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    let leader_exited = tokio::time::timeout_at(deadline, child.wait()).await.is_ok();
    if leader_exited {
        // The leader is reaped; wait for the rest of its group too.
        while group.alive() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + GROUP_POLL)).await;
        }
    }
    group.kill();
    if !leader_exited {
        let _ = child.wait().await;
    }
    group.armed = false;
}

/// The failure message of a process that did not exit with status 0.
/// When stderr is empty, the tail of stdout says what went wrong (many
/// scripts print their errors there).
fn exit_message(program: &str, status: ExitStatus, stderr: &[u8], stdout: &[u8]) -> String {
    use std::os::unix::process::ExitStatusExt;
    let what = match (status.code(), status.signal()) {
        (Some(code), _) => format!("`{program}` exited with code {code}"),
        (None, Some(sig)) => format!("`{program}` was killed by signal {sig} ({})", signal_name(sig)),
        (None, None) => format!("`{program}` failed: {status}"),
    };
    let tail = stderr_tail(stderr);
    if !tail.is_empty() {
        return format!("{what}; stderr:\n{tail}");
    }
    match stderr_tail(stdout) {
        out if out.is_empty() => format!("{what} (no output)"),
        out => format!("{what}; stdout (stderr was empty):\n{out}"),
    }
}

/// The last lines of stderr, at most [`STDERR_TAIL_LINES`] lines and
/// [`STDERR_TAIL_BYTES`] bytes, with `…` when cut.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim_end();
    let mut start = 0;
    let mut cut = false;
    if let Some((i, _)) = text.match_indices('\n').rev().nth(STDERR_TAIL_LINES - 1) {
        start = i + 1;
        cut = true;
    }
    if text.len() - start > STDERR_TAIL_BYTES {
        start = text.len() - STDERR_TAIL_BYTES;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        cut = true;
    }
    let tail = &text[start..];
    if cut { format!("…{tail}") } else { tail.to_string() }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "unknown signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group whose only member has exited but is not yet reaped still
    /// answers `killpg(.., 0)`; it has no running member, so terminating it
    /// does not wait for its reaper (which stretched timeouts by seconds).
    #[test]
    fn a_zombie_is_not_a_running_member() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("true").process_group(0).spawn().expect("true");
        let pgid = child.id() as libc::pid_t;
        let group = Group { pgid, armed: false };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while group_has_running_member(pgid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(group.signal(0), "the zombie is still in its group until reaped");
        assert!(!group.alive(), "an exited member is not running");
        let _ = child.wait();
        assert!(!group.signal(0));
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(10 * 1024 * 1024), "10 MiB");
        assert_eq!(human_bytes(64 * 1024), "64 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let tail = stderr_tail(text.as_bytes());
        assert!(tail.starts_with("…line 11\n"), "{tail}");
        assert!(tail.ends_with("line 30"), "{tail}");
        assert_eq!(tail.lines().count(), 20);
        assert_eq!(stderr_tail(b"oops\n"), "oops");
        assert_eq!(stderr_tail(b""), "");
    }

    #[test]
    fn stderr_tail_is_bounded_in_bytes() {
        let long = "é".repeat(10_000);
        let tail = stderr_tail(long.as_bytes());
        assert!(tail.len() <= STDERR_TAIL_BYTES + "…".len());
        assert!(tail.starts_with('…'));
    }

    #[test]
    fn text_output_drops_one_trailing_newline() {
        assert_eq!(output(OutputFormat::Text, b"a\n\n".to_vec()).unwrap(), Value::String("a\n".into()));
        assert_eq!(output(OutputFormat::Text, b"a\r\n".to_vec()).unwrap(), Value::String("a".into()));
        assert_eq!(output(OutputFormat::Text, b"a".to_vec()).unwrap(), Value::String("a".into()));
    }

    #[test]
    fn exit_messages_name_the_code_or_signal() {
        use std::os::unix::process::ExitStatusExt;
        let m = exit_message("x", ExitStatus::from_raw(3 << 8), b"boom\n", b"progress\n");
        assert_eq!(m, "`x` exited with code 3; stderr:\nboom");
        let m = exit_message("x", ExitStatus::from_raw(libc::SIGKILL), b"", b"");
        assert_eq!(m, "`x` was killed by signal 9 (SIGKILL) (no output)");
        let m = exit_message("x", ExitStatus::from_raw(1 << 8), b"", b"step 1\nerror: disk full\n");
        assert_eq!(m, "`x` exited with code 1; stdout (stderr was empty):\nstep 1\nerror: disk full");
    }
}
