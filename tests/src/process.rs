//! Spawning child processes that cannot outlive the test process, and bounded waits for them.
//!
//! Every child is spawned with `PR_SET_PDEATHSIG = SIGKILL`, so that the kernel kills it when
//! its parent dies, even when the test process is killed or aborts and no destructor runs.
//! The "parent" that the kernel watches is the *thread* that forked, not the process: children
//! are therefore spawned from one dedicated thread that lives as long as the test process. A
//! child spawned from a test thread, a tokio worker or a blocking-pool thread would be killed as
//! soon as that thread ends, which can happen in the middle of a test.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The channel to the spawner thread. A std mutex: it is held only to clone the sender.
static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

fn spawner() -> mpsc::Sender<SpawnRequest> {
    let sender = SPAWNER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("weir-tests-spawner".into())
            .spawn(move || {
                // Runs until the process exits: the children's parent thread must not end.
                for (mut command, reply) in receiver {
                    let _ = reply.send(spawn_here(&mut command));
                }
                // Every sender is gone only if the static was dropped, which never happens.
                loop {
                    thread::park();
                }
            })
            .expect("spawn the weir-tests spawner thread");
        Mutex::new(sender)
    });
    sender.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn spawn_here(command: &mut Command) -> io::Result<Child> {
    // SAFETY: getpid is async-signal-safe and called before the fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (prctl, getppid, _exit); it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Spawns `command` so that it dies with the test process (see the module doc).
pub fn spawn(command: Command) -> Result<Child> {
    let program = command.get_program().to_string_lossy().into_owned();
    let (reply, answer) = mpsc::channel();
    spawner()
        .send((command, reply))
        .map_err(|_| anyhow::anyhow!("the spawner thread is gone"))?;
    let child = answer
        .recv_timeout(Duration::from_secs(30))
        .context("the spawner thread did not answer within 30 s")?;
    child.with_context(|| format!("spawning {program}"))
}

/// Waits for the child to exit, up to `timeout`. `None` if it is still running then.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        // std has no wait with a timeout; a short poll keeps the wait bounded.
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to the child (a no-op if it has exited and been reaped).
pub fn signal(child: &mut Child, signal: libc::c_int) -> Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill has no memory effects; the child is not reaped (try_wait said it is running),
    // so the pid still names it.
    if unsafe { libc::kill(pid, signal) } != 0 {
        let error = io::Error::last_os_error();
        // ESRCH: it exited between try_wait and kill; the zombie is reaped by the next wait.
        if error.raw_os_error() != Some(libc::ESRCH) {
            return Err(error).context("sending a signal to a child process");
        }
    }
    Ok(())
}

/// SIGKILL and reap. SIGKILL cannot be caught, so the wait ends; it is bounded all the same.
pub fn kill_and_reap(child: &mut Child) -> Result<ExitStatus> {
    signal(child, libc::SIGKILL)?;
    match wait_timeout(child, Duration::from_secs(30))? {
        Some(status) => Ok(status),
        None => bail!("process {} survived SIGKILL for 30 s", child.id()),
    }
}
