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
    /// How many VMs (in request order) were switched before a failure.
    count: usize,
    failure: Option<(usize, VmmError)>,
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

    /// Pauses every VM, then switches them one transaction each; stops at the first failure.
    fn switch(&mut self, requests: &[FreezeRequest], plans: &[Vec<PlannedDisk>]) -> Switched {
        self.started = Instant::now();
        for index in 0..self.clients.len() {
            if let Err(error) = self.clients[index].execute(&qmp::stop {}) {
                return Switched {
                    count: 0,
                    failure: Some((index, error)),
                };
            }
            self.paused[index] = true;
            self.paused_at[index] = Some(Instant::now());
        }

        for (index, plan) in plans.iter().enumerate() {
            if let Err(error) = self.clients[index].execute(&transaction(plan)) {
                tracing::warn!(vm = %requests[index].vm.name, "group freeze transaction failed: {error}");
                return Switched {
                    count: index,
                    failure: Some((index, error)),
                };
            }
        }
        Switched {
            count: plans.len(),
            failure: None,
        }
    }

    /// Resumes every paused VM; per VM the time its `cont` was answered, or the error.
    fn resume_all(&mut self) -> Vec<Result<Instant>> {
        let mut resumed = Vec::with_capacity(self.clients.len());
        for index in 0..self.clients.len() {
            if !self.paused[index] {
                resumed.push(Ok(Instant::now()));
                continue;
            }
            let result = self.clients[index].execute(&qmp::cont {});
            self.paused[index] = false;
            resumed.push(result.map(|_| Instant::now()));
        }
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
    let names = |upto: usize| {
        requests[..upto]
            .iter()
            .map(|r| r.vm.name.clone())
            .collect::<Vec<_>>()
    };

    if let Some((index, error)) = switched.failure {
        let count = switched.count;
        remove_overlays(&mut pause.clients[count..], &plans[count..]);
        return Err(VmmError::Freeze {
            vm: requests[index].vm.name.clone(),
            switched: names(count),
            source: Box::new(error),
        });
    }

    let mut paused_us = Vec::with_capacity(requests.len());
    let mut last_resume = pause.started;
    for (index, result) in resumed.into_iter().enumerate() {
        let at = result.map_err(|error| VmmError::Freeze {
            vm: requests[index].vm.name.clone(),
            switched: names(requests.len()),
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
