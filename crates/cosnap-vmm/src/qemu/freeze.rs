//! The group freeze: every member paused, one atomic `transaction` per VM switching its disks
//! onto pre-created qcow2 overlays (and adding the new layers' persistent bitmaps), every member
//! resumed — by a guard, so that no error path (nor a panic) leaves a guest paused.

use std::time::Instant;

use qapi::qmp;

use crate::error::{Result, VmmError};
use crate::model::{FreezeReport, FreezeRequest};
use crate::qemu::{QemuHypervisor, blockops, connected, graph, lock};
use crate::qmp::{BlockdevAddOverlay, FileNode, QmpClient};

/// One disk's switch, with its nodes named.
struct PlannedDisk {
    active: String,
    overlay: String,
    bitmap: Option<String>,
}

pub fn group_freeze(hv: &QemuHypervisor, requests: &[FreezeRequest]) -> Result<FreezeReport> {
    check_distinct(requests)?;

    // Sessions are locked in run-directory order, so two freezes sharing VMs cannot deadlock.
    let sessions: Vec<_> = requests.iter().map(|r| hv.session(&r.vm)).collect();
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|a, b| requests[*a].vm.run_dir.cmp(&requests[*b].vm.run_dir));
    let mut slots: Vec<_> = (0..requests.len()).map(|_| None).collect();
    for index in order {
        slots[index] = Some(lock(&sessions[index]));
    }
    let mut guards: Vec<_> = slots.into_iter().flatten().collect();

    let mut clients = Vec::with_capacity(requests.len());
    for (guard, request) in guards.iter_mut().zip(requests) {
        clients.push(connected(&request.vm, guard)?);
    }

    // Overlay nodes are added before anyone pauses: the pause holds only the switch itself.
    let mut plans: Vec<Vec<PlannedDisk>> = Vec::with_capacity(requests.len());
    for (index, request) in requests.iter().enumerate() {
        match add_overlays(clients[index], request) {
            Ok(plan) => plans.push(plan),
            Err(error) => {
                remove_overlays(&mut clients[..index], &plans);
                return Err(error);
            }
        }
    }

    let mut pause = PauseGuard::new(clients);
    let switched = pause.switch(requests, &plans);
    let resumed = pause.resume_all();
    let outcome = finish(requests, &plans, pause, switched, resumed);

    // Connections live for one operation (see `Session`).
    guards.iter_mut().for_each(|guard| **guard = None);
    outcome
}

fn check_distinct(requests: &[FreezeRequest]) -> Result<()> {
    for (index, request) in requests.iter().enumerate() {
        if requests[..index]
            .iter()
            .any(|r| r.vm.run_dir == request.vm.run_dir)
        {
            return Err(VmmError::InvalidLaunch(format!(
                "VM {} is listed twice in one group freeze",
                request.vm.name
            )));
        }
    }
    Ok(())
}

fn add_overlays(q: &mut QmpClient, request: &FreezeRequest) -> Result<Vec<PlannedDisk>> {
    let mut nodes = graph::block_nodes(q)?;
    let mut plan: Vec<PlannedDisk> = Vec::with_capacity(request.disks.len());
    for disk in &request.disks {
        let added = graph::active_node(q, disk.disk).and_then(|active| {
            let overlay = graph::next_layer_node(&nodes, disk.disk);
            q.execute(&BlockdevAddOverlay {
                driver: "qcow2",
                node_name: overlay.clone(),
                file: FileNode {
                    driver: "file",
                    filename: disk.overlay.to_string_lossy().into_owned(),
                    node_name: format!("{overlay}f"),
                },
                backing: None,
            })?;
            Ok((active, overlay))
        });
        let (active, overlay) = match added {
            Ok(names) => names,
            Err(error) => {
                remove_overlays(&mut [q], &[plan]);
                return Err(error);
            }
        };

        nodes.push(crate::model::BlockNode {
            node_name: overlay.clone(),
            driver: "qcow2".into(),
            file: String::new(),
            backing_file: None,
            read_only: false,
            bitmaps: vec![],
        });
        plan.push(PlannedDisk {
            active,
            overlay,
            bitmap: disk.bitmap.clone(),
        });
    }
    Ok(plan)
}

/// Best effort: the overlays of VMs that were not switched go away again.
fn remove_overlays(clients: &mut [&mut QmpClient], plans: &[Vec<PlannedDisk>]) {
    for (client, plan) in clients.iter_mut().zip(plans) {
        for disk in plan {
            if let Err(error) = blockops::delete_node(client, &disk.overlay) {
                tracing::warn!(vm = client.vm(), node = %disk.overlay, "removing an unused overlay failed: {error}");
            }
        }
    }
}

/// The transaction of one VM: every disk switched, then the new layers' bitmaps.
fn transaction(plan: &[PlannedDisk]) -> qmp::transaction {
    let mut actions: Vec<qmp::TransactionAction> = plan
        .iter()
        .map(|disk| {
            qmp::TransactionAction::blockdev_snapshot(qmp::BlockdevSnapshotWrapper::from(
                qmp::BlockdevSnapshot {
                    node: disk.active.clone(),
                    overlay: disk.overlay.clone(),
                },
            ))
        })
        .collect();
    for disk in plan {
        if let Some(name) = &disk.bitmap {
            actions.push(qmp::TransactionAction::block_dirty_bitmap_add(
                qmp::BlockDirtyBitmapAddWrapper::from(qmp::BlockDirtyBitmapAdd {
                    node: disk.overlay.clone(),
                    name: name.clone(),
                    persistent: Some(true),
                    disabled: None,
                    granularity: None,
                }),
            ));
        }
    }
    qmp::transaction {
        actions,
        properties: None,
    }
}

/// What happened between the pause and the resume.
struct Switched {
    /// Per VM (request order): whether its transaction committed.
    done: Vec<bool>,
    /// The first failure, by request index.
    failure: Option<(usize, VmmError)>,
}

/// Runs `step` on every client at once, one thread each: a phase of the freeze costs the
/// slowest VM's answer, not the sum of all.
fn each_vm<T: Send>(
    clients: &mut [&mut QmpClient],
    step: impl Fn(usize, &mut QmpClient) -> T + Sync,
) -> Vec<T> {
    if let [client] = clients {
        return vec![step(0, client)];
    }
    std::thread::scope(|scope| {
        let step = &step;
        let threads: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(index, client)| scope.spawn(move || step(index, client)))
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Holds the paused VMs; whatever happens, dropping it resumes every VM still paused.
struct PauseGuard<'a> {
    clients: Vec<&'a mut QmpClient>,
    paused: Vec<bool>,
    started: Instant,
    paused_at: Vec<Option<Instant>>,
}

impl<'a> PauseGuard<'a> {
    fn new(clients: Vec<&'a mut QmpClient>) -> Self {
        let count = clients.len();
        PauseGuard {
            clients,
            paused: vec![false; count],
            started: Instant::now(),
            paused_at: vec![None; count],
        }
    }

    /// Pauses every VM; once all stand still, runs every VM's transaction.
    fn switch(&mut self, requests: &[FreezeRequest], plans: &[Vec<PlannedDisk>]) -> Switched {
        let count = self.clients.len();
        self.started = Instant::now();
        let stops = each_vm(&mut self.clients, |_, client| {
            client.execute(&qmp::stop {}).map(|_| Instant::now())
        });
        let mut failure = None;
        for (index, stop) in stops.into_iter().enumerate() {
            match stop {
                Ok(at) => {
                    self.paused[index] = true;
                    self.paused_at[index] = Some(at);
                }
                Err(error) => failure = failure.or(Some((index, error))),
            }
        }
        if failure.is_some() {
            return Switched {
                done: vec![false; count],
                failure,
            };
        }

        let results = each_vm(&mut self.clients, |index, client| {
            client.execute(&transaction(&plans[index]))
        });
        let mut done = vec![false; count];
        for (index, result) in results.into_iter().enumerate() {
            match result {
                Ok(_) => done[index] = true,
                Err(error) => {
                    tracing::warn!(vm = %requests[index].vm.name, "group freeze transaction failed: {error}");
                    failure = failure.or(Some((index, error)));
                }
            }
        }
        Switched { done, failure }
    }

    /// Resumes every paused VM; per VM the time its `cont` was answered, or the error.
    fn resume_all(&mut self) -> Vec<Result<Instant>> {
        let paused = self.paused.clone();
        let resumed = each_vm(&mut self.clients, |index, client| {
            if !paused[index] {
                return Ok(Instant::now());
            }
            client.execute(&qmp::cont {}).map(|_| Instant::now())
        });
        self.paused.iter_mut().for_each(|p| *p = false);
        resumed
    }
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        for (client, paused) in self.clients.iter_mut().zip(&self.paused) {
            if *paused && let Err(error) = client.execute(&qmp::cont {}) {
                tracing::error!(
                    vm = client.vm(),
                    "could not resume a VM after a group freeze: {error}"
                );
            }
        }
    }
}

fn finish(
    requests: &[FreezeRequest],
    plans: &[Vec<PlannedDisk>],
    mut pause: PauseGuard<'_>,
    switched: Switched,
    resumed: Vec<Result<Instant>>,
) -> Result<FreezeReport> {
    let switched_names: Vec<String> = requests
        .iter()
        .zip(&switched.done)
        .filter(|(_, done)| **done)
        .map(|(request, _)| request.vm.name.clone())
        .collect();

    if let Some((index, error)) = switched.failure {
        for (position, client) in pause.clients.iter_mut().enumerate() {
            if !switched.done[position] {
                remove_overlays(&mut [&mut **client], std::slice::from_ref(&plans[position]));
            }
        }
        return Err(VmmError::Freeze {
            vm: requests[index].vm.name.clone(),
            switched: switched_names,
            source: Box::new(error),
        });
    }

    let mut paused_us = Vec::with_capacity(requests.len());
    let mut last_resume = pause.started;
    for (index, result) in resumed.into_iter().enumerate() {
        let at = result.map_err(|error| VmmError::Freeze {
            vm: requests[index].vm.name.clone(),
            switched: switched_names.clone(),
            source: Box::new(error),
        })?;
        last_resume = last_resume.max(at);
        let since = pause.paused_at[index].unwrap_or(pause.started);
        paused_us.push((requests[index].vm.name.clone(), micros(at - since)));
    }

    Ok(FreezeReport {
        pause_window_us: micros(last_resume - pause.started),
        paused_us,
    })
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
