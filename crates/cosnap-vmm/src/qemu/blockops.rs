//! Block operations on one running VM: live commit (with the active-layer pivot), dirty bitmaps,
//! and removing nodes a merge left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qapi::qmp;

use crate::error::{Result, VmmError};
use crate::qemu::graph;
use crate::qmp::QmpClient;

/// A commit copies at most the top layer's data; minutes are a stuck job, not a slow one.
const JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// Commits `top` into `base` on disk `disk`: an active commit pivots the disk onto `base`
/// with the VM paused (see [`pivot_paused`]); `merged` runs once `base` holds all of `top`.
pub fn commit(
    q: &mut QmpClient,
    disk: usize,
    top: &Path,
    base: &Path,
    merged: &mut dyn FnMut() -> std::io::Result<()>,
) -> Result<()> {
    let top_node = graph::node_of_path(q, top)?;
    let base_node = graph::node_of_path(q, base)?;
    let active = graph::active_node(q, disk)?;
    let job = format!("commit-{top_node}");

    // A job of this name left by a caller that died goes on from where it stands. With no
    // job and `top`'s file gone, the merge finished before and the caller's `merged` removed
    // the file (it runs only after a job concluded without error): only the node is left.
    match job_status(q, &job)? {
        Some(_) => {}
        None if !top.exists() => return delete_node(q, &top_node),
        None => start_commit(q, &active, &top_node, &base_node, &job)?,
    }

    if active == top_node {
        wait_job(q, &job, qmp::JobStatus::ready)?;
        pivot_paused(q, &job, top, merged)?;
    } else {
        // Nothing but the job writes `base` below the active layer, so a caller that dies
        // before `merged` and merges `top` again offline copies the same data again. (After
        // a pivot whose caller died, `top` is no longer active: its job has concluded.)
        wait_job(q, &job, qmp::JobStatus::concluded)?;
        finish_job(q, &job, top, merged)?;
    }

    delete_node(q, &top_node)
}

/// The status of job `job`, if QEMU has one of that name.
fn job_status(q: &mut QmpClient, job: &str) -> Result<Option<qmp::JobStatus>> {
    Ok(q.execute(&qmp::query_jobs {})?
        .into_iter()
        .find(|j| j.id == job)
        .map(|j| j.status))
}

// The schema's deprecated `base`/`top` fields must still be written out (as None).
#[allow(deprecated)]
fn start_commit(
    q: &mut QmpClient,
    active: &str,
    top_node: &str,
    base_node: &str,
    job: &str,
) -> Result<()> {
    q.execute(&qmp::block_commit {
        job_id: Some(job.to_string()),
        device: active.to_string(),
        top_node: Some(top_node.to_string()),
        base_node: Some(base_node.to_string()),
        auto_dismiss: Some(false),
        auto_finalize: None,
        backing_file: None,
        backing_mask_protocol: None,
        base: None,
        filter_node_name: None,
        on_error: None,
        speed: None,
        top: None,
    })
    .map(drop)
}

/// The pivot of an active commit, with the guest paused from before `job-complete` until
/// `merged` has run. Whoever sees `top` still there after a crash of both cosnap and QEMU may
/// merge it again offline: with no guest write to `base` between the pivot and `merged`
/// (which removes `top`), `base` then holds exactly what `top` adds, and merging it again
/// changes nothing. Without the pause, writes after the pivot would be overwritten.
fn pivot_paused(
    q: &mut QmpClient,
    job: &str,
    top: &Path,
    merged: &mut dyn FnMut() -> std::io::Result<()>,
) -> Result<()> {
    let was_running = q.execute(&qmp::query_status {})?.status == qmp::RunState::running;
    if was_running {
        q.execute(&qmp::stop {})?;
    }

    let pivoted = q
        .execute(&qmp::job_complete {
            id: job.to_string(),
        })
        .map(drop)
        .and_then(|()| wait_job(q, job, qmp::JobStatus::concluded))
        .and_then(|()| finish_job(q, job, top, merged));

    let resumed = match was_running {
        true => q.execute(&qmp::cont {}).map(drop),
        false => Ok(()),
    };
    pivoted.and(resumed)
}

fn io_error(path: &Path, source: std::io::Error) -> VmmError {
    VmmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Polls `query-jobs` until the job reaches `wanted` (or concludes, with or without error).
fn wait_job(q: &mut QmpClient, job: &str, wanted: qmp::JobStatus) -> Result<()> {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let jobs = q.execute(&qmp::query_jobs {})?;
        let Some(info) = jobs.into_iter().find(|j| j.id == job) else {
            return Err(VmmError::Job {
                vm: q.vm().to_string(),
                job: job.to_string(),
                desc: "the job vanished".into(),
            });
        };
        if info.status == wanted || info.status == qmp::JobStatus::concluded {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(VmmError::Timeout {
                vm: q.vm().to_string(),
                what: format!("block job {job}"),
                seconds: JOB_TIMEOUT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads the concluded job's error; without one runs `merged`; then dismisses the job. A
/// caller dying in `merged` leaves the job concluded, so the next `commit` finishes it.
fn finish_job(
    q: &mut QmpClient,
    job: &str,
    top: &Path,
    merged: &mut dyn FnMut() -> std::io::Result<()>,
) -> Result<()> {
    let error = q
        .execute(&qmp::query_jobs {})?
        .into_iter()
        .find(|j| j.id == job)
        .and_then(|j| j.error);
    let outcome = match error {
        Some(desc) => Err(VmmError::Job {
            vm: q.vm().to_string(),
            job: job.to_string(),
            desc,
        }),
        None => merged().map_err(|source| io_error(top, source)),
    };
    q.execute(&qmp::job_dismiss {
        id: job.to_string(),
    })?;
    outcome
}

/// Removes a format node a merge left behind, then its file node if that survived it (nodes
/// from the command line are separate; nodes cosnap added carry theirs inline). A node left
/// holding its backing would make the next transaction fail with "node is busy".
pub fn delete_node(q: &mut QmpClient, node: &str) -> Result<()> {
    let file_node = format!("{node}f");
    for name in [node, file_node.as_str()] {
        let exists = graph::block_nodes(q)?.iter().any(|n| n.node_name == name);
        if exists {
            q.execute(&qmp::blockdev_del {
                node_name: name.to_string(),
            })?;
        }
    }
    Ok(())
}

pub fn add_bitmap(q: &mut QmpClient, layer: &Path, name: &str, persistent: bool) -> Result<()> {
    let node = graph::node_of_path(q, layer)?;
    q.execute(&qmp::block_dirty_bitmap_add(qmp::BlockDirtyBitmapAdd {
        node,
        name: name.to_string(),
        persistent: Some(persistent),
        disabled: None,
        granularity: None,
    }))
    .map(drop)
}

pub fn remove_bitmap(q: &mut QmpClient, layer: &Path, name: &str) -> Result<()> {
    let node = graph::node_of_path(q, layer)?;
    q.execute(&qmp::block_dirty_bitmap_remove(qmp::BlockDirtyBitmap {
        node,
        name: name.to_string(),
    }))
    .map(drop)
}

pub fn merge_bitmaps(
    q: &mut QmpClient,
    layer: &Path,
    target: &str,
    sources: &[(PathBuf, String)],
) -> Result<()> {
    let node = graph::node_of_path(q, layer)?;
    let mut bitmaps = Vec::with_capacity(sources.len());
    for (source_layer, name) in sources {
        bitmaps.push(qmp::BlockDirtyBitmapOrStr::external(
            qmp::BlockDirtyBitmap {
                node: graph::node_of_path(q, source_layer)?,
                name: name.clone(),
            },
        ));
    }
    q.execute(&qmp::block_dirty_bitmap_merge(qmp::BlockDirtyBitmapMerge {
        node,
        target: target.to_string(),
        bitmaps,
    }))
    .map(drop)
}
