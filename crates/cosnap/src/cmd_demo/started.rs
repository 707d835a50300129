//! The VMs the live demo started, stopped on every exit path: normal end, error, panic
//! (the guard's `Drop`) and SIGINT/SIGTERM/SIGHUP (a watcher thread stops them, then exits).
//! QEMU runs in its own session, so a Ctrl-C would otherwise leave the guests running.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use cosnap_host::Host;

use crate::exit::Failure;
use crate::exit::fail;

/// Exit code after a signal stopped the demo (128 + SIGINT, as shells report it).
const INTERRUPTED: i32 = 130;

/// Started VMs (id, name). The lock is held while a VM starts and while they are stopped, so
/// a signal arriving meanwhile waits and then stops whatever did start.
type Started = Arc<Mutex<Vec<(String, String)>>>;

pub struct StartedVms {
    host: Host,
    started: Started,
}

impl StartedVms {
    /// An empty set, with the signal watcher installed before the first VM starts.
    pub fn new(host: &Host) -> Result<Self, Failure> {
        let started = Started::default();
        watch_signals(host.clone(), started.clone())?;
        Ok(Self {
            host: host.clone(),
            started,
        })
    }

    /// Starts a VM and remembers it for stopping.
    pub fn start(&self, id: &str, name: &str) -> Result<(), Failure> {
        let mut started = lock(&self.started);
        self.host.start_vm(id).map_err(fail)?;
        started.push((id.to_string(), name.to_string()));
        Ok(())
    }

    /// Stops every VM started so far (forced: QEMU quits, storing the persistent bitmaps).
    pub fn stop_all(&self) {
        stop_all(&self.host, &mut lock(&self.started));
    }
}

impl Drop for StartedVms {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn lock(started: &Started) -> MutexGuard<'_, Vec<(String, String)>> {
    started
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Stops the VMs, reporting without `println!`: this runs while unwinding too (a closed
/// stdout makes `println!` panic, and a panic inside a panic aborts before the next stop).
fn stop_all(host: &Host, started: &mut Vec<(String, String)>) {
    for (id, name) in started.drain(..) {
        if host.running_vm(&id).is_none() {
            let _ = writeln!(std::io::stderr(), "cosnap: VM {name} had stopped already");
            continue;
        }
        let _ = match host.stop_vm(&id, true) {
            Ok(_) => writeln!(std::io::stdout(), "  stopped VM {name}"),
            Err(error) => writeln!(
                std::io::stderr(),
                "cosnap: stopping VM {name} ({id}): {error}"
            ),
        };
    }
}

/// A thread that waits for SIGINT, SIGTERM or SIGHUP, stops the started VMs and exits.
fn watch_signals(host: Host, started: Started) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::from(anyhow::anyhow!("signal watcher: {e}")))?;

    // Registered here, before any VM starts, so that no signal slips through.
    let signals = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    });
    let (mut interrupt, mut terminate, mut hangup) =
        signals.map_err(|e| Failure::from(anyhow::anyhow!("signal watcher: {e}")))?;

    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
                _ = hangup.recv() => {}
            }
        });
        let _ = writeln!(
            std::io::stderr(),
            "cosnap: demo interrupted: stopping the VMs it started"
        );
        stop_all(&host, &mut lock(&started));
        std::process::exit(INTERRUPTED);
    });
    Ok(())
}
