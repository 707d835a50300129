//! The QEMU process of one VM: spawned in its own session with a reaper thread (so that an exit
//! is seen at once), recognised again from its pid file, and killed by pid.

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Result, VmmError};
use crate::qemu::args::RunPaths;

pub const QEMU_PROGRAM: &str = "qemu-system-x86_64";

/// How long QEMU may take to open its QMP socket (it opens every image first).
const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts QEMU with `args` and waits until its QMP socket accepts connections; returns its pid.
pub fn spawn(vm: &str, args: &[String], run: &RunPaths) -> Result<i32> {
    prepare_run_dir(run)?;
    let log = File::create(run.stderr_log()).map_err(|e| VmmError::io(run.stderr_log(), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| VmmError::io(run.stderr_log(), e))?;

    let mut command = Command::new(QEMU_PROGRAM);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: setsid is async-signal-safe; the child leaves cosnap's session so that a signal
    // to cosnap's process group (Ctrl-C, a test harness) does not take the VM with it.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| VmmError::Spawn {
        program: QEMU_PROGRAM.into(),
        source,
    })?;
    let pid = child.id() as i32;

    // The reaper: without a wait() the exited QEMU stays a zombie and still looks alive.
    let exited = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&exited);
    std::thread::spawn(move || {
        let _ = child.wait();
        flag.store(true, Ordering::SeqCst);
    });

    if let Err(error) = wait_for_socket(vm, run, &exited) {
        // A QEMU that never answered is not left running with the disks open.
        // SAFETY: kill(2) of the child spawned above.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        return Err(error);
    }
    Ok(pid)
}

fn prepare_run_dir(run: &RunPaths) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&run.dir)
        .map_err(|e| VmmError::io(&run.dir, e))?;

    for stale in [run.qmp_socket(), run.console_socket(), run.pidfile()] {
        match fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(VmmError::io(stale, e));
            }
            _ => {}
        }
    }
    Ok(())
}

fn wait_for_socket(vm: &str, run: &RunPaths, exited: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        if exited.load(Ordering::SeqCst) {
            return Err(VmmError::EarlyExit {
                vm: vm.into(),
                log: run.stderr_log(),
            });
        }
        if UnixStream::connect(run.qmp_socket()).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(VmmError::SocketTimeout {
                vm: vm.into(),
                socket: run.qmp_socket(),
                seconds: SOCKET_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is a live (not zombie) QEMU serving this run directory's QMP socket: the
/// socket path on its command line guards against a recycled pid.
pub fn is_our_qemu(pid: i32, run: &RunPaths) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }

    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let socket = run.qmp_socket();
    let needle = socket.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|window| window == needle)
}

/// The pid QEMU wrote into its pid file.
pub fn read_pidfile(run: &RunPaths) -> Result<i32> {
    let path = run.pidfile();
    let text = fs::read_to_string(&path).map_err(|e| VmmError::io(&path, e))?;
    text.trim().parse().map_err(|_| VmmError::NotAttached {
        run_dir: run.dir.clone(),
        reason: format!("{} holds no pid", path.display()),
    })
}

/// SIGKILL, then wait (bounded) until the process is gone.
pub fn kill_and_wait(pid: i32, run: &RunPaths, timeout: Duration) -> bool {
    if !is_our_qemu(pid, run) {
        return true;
    }
    // SAFETY: kill(2) on a pid checked above to be this VM's QEMU.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    wait_gone(pid, run, timeout)
}

/// Waits until the process no longer runs; false if it still does after `timeout`.
pub fn wait_gone(pid: i32, run: &RunPaths, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_our_qemu(pid, run) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Whether a path names an existing QEMU program on PATH.
pub fn qemu_available() -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(QEMU_PROGRAM).is_file()))
        .unwrap_or(false)
}

/// The run directory as an absolute path (QEMU is given absolute paths only).
pub fn absolute(dir: &Path) -> Result<std::path::PathBuf> {
    std::path::absolute(dir).map_err(|e| VmmError::io(dir, e))
}
