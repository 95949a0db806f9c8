//! Task processes die with the process that started them.
//!
//! A task's program runs in its own process group, which the attempt kills
//! when it ends. If the engine process itself dies (`kill -9` of a worker, an
//! out-of-memory kill), nothing would stop those groups: the task's retry
//! runs on another worker while the orphan goes on, and side effects happen
//! twice. So every process that runs tasks starts one watchdog: a small
//! `sh` loop in its own process group that reads, from a pipe, the groups
//! currently running (`+ PGID`, written by the task's own process between
//! fork and exec, so no instant exists in which it runs unwatched; `- PGID`
//! when it is gone).
//! When the engine process dies, for any reason, the kernel closes the
//! pipe's write end; the watchdog reads end of file and kills every group
//! still listed. The write end is close-on-exec, so task processes never
//! hold it open.
//!
//! `PR_SET_PDEATHSIG` on each task was the alternative: it reaches only the
//! group leader (a `shell` task's children would live on) and fires when the
//! *thread* that spawned the process exits, not the process.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The watchdog's program: keeps a list of groups, kills them at end of input.
const SCRIPT: &str = r#"trap '' INT HUP TERM QUIT
groups=' '
while read -r op g; do
  case $op in
    +) groups="$groups$g " ;;
    -) case $groups in *" $g "*) groups="${groups%%" $g "*} ${groups#*" $g "}" ;; esac ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
"#;

struct Watchdog {
    /// Kept open for the life of the process (a closed descriptor's number
    /// could be reused while a child is about to write to it); `dead` stops
    /// writes once the watchdog is gone.
    input: Mutex<ChildStdin>,
    fd: std::os::fd::RawFd,
    dead: std::sync::atomic::AtomicBool,
    _child: Child,
}

fn watchdog() -> Option<&'static Watchdog> {
    static DOG: OnceLock<Option<Watchdog>> = OnceLock::new();
    DOG.get_or_init(|| {
        let started = Command::new("sh")
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: a terminal's Ctrl-C to the engine's group does
            // not reach it, and it is never mistaken for a task.
            .process_group(0)
            .spawn();
        match started {
            Ok(mut child) => {
                let input = child.stdin.take()?;
                let fd = std::os::fd::AsRawFd::as_raw_fd(&input);
                Some(Watchdog { input: Mutex::new(input), fd, dead: Default::default(), _child: child })
            }
            Err(e) => {
                tracing::warn!("cannot start the task watchdog (task processes would outlive a crash of this process): {e}");
                None
            }
        }
    })
    .as_ref()
}

fn tell(line: &str) {
    let Some(dog) = watchdog() else { return };
    if dog.dead.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut input = dog.input.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = input.write_all(line.as_bytes()) {
        tracing::warn!("the task watchdog stopped (task processes would outlive a crash of this process): {e}");
        dog.dead.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The descriptor a task's process announces itself on, between fork and
/// exec ([`announce`]), so it is watched before it runs a single
/// instruction of its program; `None` without a working watchdog.
pub fn fd() -> Option<std::os::fd::RawFd> {
    watchdog().filter(|d| !d.dead.load(std::sync::atomic::Ordering::Relaxed)).map(|d| d.fd)
}

/// In a new task process, between fork and exec: tell the watchdog that this
/// process's group (its pid: the process leads its own group) must die with
/// the engine. Only async-signal-safe calls: no allocation, one `write` of a
/// line shorter than `PIPE_BUF`, so it never interleaves with other lines.
pub fn announce(fd: std::os::fd::RawFd) {
    // SAFETY: getpid and write are async-signal-safe; `buf` outlives the call.
    unsafe {
        let mut buf = [0u8; 24];
        let mut n = libc::getpid() as u64;
        let mut end = buf.len() - 1;
        buf[end] = b'\n';
        loop {
            end -= 1;
            buf[end] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        end -= 2;
        buf[end] = b'+';
        buf[end + 1] = b' ';
        libc::write(fd, buf[end..].as_ptr().cast(), buf.len() - end);
    }
}

/// A task's process group is gone.
pub fn forget(pgid: libc::pid_t) {
    tell(&format!("- {pgid}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The script kills what is listed when its input ends, and only that.
    #[test]
    fn the_script_kills_the_groups_still_listed_at_end_of_input() {
        let spawn_group = || Command::new("sleep").arg("30").process_group(0).spawn().expect("sleep");
        let (mut kept, mut gone, mut other) = (spawn_group(), spawn_group(), spawn_group());
        let mut dog = Command::new("sh").args(["-c", SCRIPT]).stdin(Stdio::piped()).process_group(0).spawn().expect("sh");
        {
            let mut input = dog.stdin.take().expect("stdin");
            writeln!(input, "+ {}\n+ {}\n- {}", kept.id(), gone.id(), gone.id()).unwrap();
        }
        dog.wait().expect("the watchdog ends at end of input");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut status = None;
        while status.is_none() && Instant::now() < deadline {
            status = kept.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL), "a listed group survived");
        assert!(gone.try_wait().unwrap().is_none(), "a forgotten group was killed");
        assert!(other.try_wait().unwrap().is_none(), "an unlisted group was killed");
        for c in [&mut gone, &mut other] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
