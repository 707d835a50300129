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

/// Commits `top` into `base` on disk `disk`: an active commit pivots the disk onto `base`.
// The schema's deprecated `base`/`top` fields must still be written out (as None).
#[allow(deprecated)]
pub fn commit(q: &mut QmpClient, disk: usize, top: &Path, base: &Path) -> Result<()> {
    let top_node = graph::node_of_path(q, top)?;
    let base_node = graph::node_of_path(q, base)?;
    let active = graph::active_node(q, disk)?;
    let job = format!("commit-{top_node}");

    q.execute(&qmp::block_commit {
        job_id: Some(job.clone()),
        device: active.clone(),
        top_node: Some(top_node.clone()),
        base_node: Some(base_node),
        auto_dismiss: Some(false),
        auto_finalize: None,
        backing_file: None,
        backing_mask_protocol: None,
        base: None,
        filter_node_name: None,
        on_error: None,
        speed: None,
        top: None,
    })?;

    if active == top_node {
        wait_job(q, &job, qmp::JobStatus::ready)?;
        q.execute(&qmp::job_complete { id: job.clone() })?;
    }
    wait_job(q, &job, qmp::JobStatus::concluded)?;
    finish_job(q, &job)?;

    delete_node(q, &top_node)
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

/// Reads the concluded job's error (if any), then dismisses it.
fn finish_job(q: &mut QmpClient, job: &str) -> Result<()> {
    let error = q
        .execute(&qmp::query_jobs {})?
        .into_iter()
        .find(|j| j.id == job)
        .and_then(|j| j.error);
    q.execute(&qmp::job_dismiss {
        id: job.to_string(),
    })?;
    match error {
        Some(desc) => Err(VmmError::Job {
            vm: q.vm().to_string(),
            job: job.to_string(),
            desc,
        }),
        None => Ok(()),
    }
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
