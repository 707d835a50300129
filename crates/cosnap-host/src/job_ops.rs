//! The snapshot and reference-point operations run as jobs: the `start_*` methods the CIM
//! methods call (the checks first, then the job through [`Host::start_work`]), and the
//! `*_now(…, Option<&JobCtx>)` forms kept for callers that run an operation inside a job
//! of their own (or with `None`, synchronously).

use crate::error::Result;
use crate::host::Host;
use crate::jobs::{JobCtx, JobDescription, created};
use crate::model::job_type;
use crate::work::{NoJob, Work};

impl Host {
    /// CreateSnapshot as a job (JobType 198). The job's created element is the new
    /// `Msvm_SnapshotCollection`.
    pub fn start_create_snapshot(&self, collection: &str, snapshot_type: u16) -> Result<String> {
        let cid = self.check_create_snapshot(collection, snapshot_type)?.id;
        let job = JobDescription::new(
            job_type::SNAPSHOT_COLLECTION,
            "Snapshot collection",
            format!("Creating a snapshot of collection {cid}"),
        );
        self.start_work(job, move |host, work| {
            let sid = host.create_snapshot(&cid, snapshot_type, work)?;
            Ok(vec![created("Msvm_SnapshotCollection", sid)])
        })
    }

    /// DestroySnapshot as a job (JobType 72).
    pub fn start_destroy_snapshot(&self, id: &str) -> Result<String> {
        let sid = self.check_destroy_snapshot(id)?.id;
        let job = JobDescription::new(
            job_type::DESTROY_SNAPSHOT,
            "Destroy snapshot collection",
            format!("Destroying snapshot collection {sid}"),
        );
        self.start_work(job, move |host, work| {
            host.destroy_snapshot(&sid, work)?;
            Ok(vec![])
        })
    }

    /// ApplySnapshot as a job (JobType 71).
    pub fn start_apply_snapshot(&self, id: &str) -> Result<String> {
        let sid = self.check_apply_snapshot(id)?.id;
        let job = JobDescription::new(
            job_type::APPLY_SNAPSHOT,
            "Apply snapshot collection",
            format!("Applying snapshot collection {sid}"),
        );
        self.start_work(job, move |host, work| {
            host.apply_snapshot(&sid, work)?;
            Ok(vec![])
        })
    }

    /// ConvertToReferencePoint as a job (JobType 200); created element: the new
    /// `Msvm_ReferencePointCollection`.
    pub fn start_convert_to_refpoint(&self, id: &str) -> Result<String> {
        let sid = self.check_convert(id)?.id;
        let job = JobDescription::new(
            job_type::CONVERT_TO_RP,
            "Convert snapshot to reference point",
            format!("Converting snapshot collection {sid}"),
        );
        self.start_work(job, move |host, work| {
            let rp = host.convert_to_refpoint(&sid, work)?;
            Ok(vec![created("Msvm_ReferencePointCollection", rp)])
        })
    }

    /// DestroyReferencePoint as a job (JobType 208).
    pub fn start_destroy_refpoint(&self, id: &str) -> Result<String> {
        let rid = self.check_destroy_refpoint(id)?.id;
        let job = JobDescription::new(
            job_type::DESTROY_RP_ON_COLLECTION,
            "Destroy reference point collection",
            format!("Destroying reference point collection {rid}"),
        );
        self.start_work(job, move |host, work| {
            host.destroy_refpoint(&rid, work)?;
            Ok(vec![])
        })
    }

    /// [`Host::create_snapshot`] inside `ctx`'s job, or synchronously with `None`.
    pub fn create_snapshot_now(
        &self,
        collection: &str,
        snapshot_type: u16,
        ctx: Option<&JobCtx>,
    ) -> Result<String> {
        self.create_snapshot(collection, snapshot_type, work_of(ctx))
    }

    /// [`Host::destroy_snapshot`] inside `ctx`'s job, or synchronously with `None`.
    pub fn destroy_snapshot_now(&self, id: &str, ctx: Option<&JobCtx>) -> Result<()> {
        self.destroy_snapshot(id, work_of(ctx))
    }

    /// [`Host::apply_snapshot`] inside `ctx`'s job, or synchronously with `None`.
    pub fn apply_snapshot_now(&self, id: &str, ctx: Option<&JobCtx>) -> Result<()> {
        self.apply_snapshot(id, work_of(ctx))
    }

    /// [`Host::convert_to_refpoint`] inside `ctx`'s job, or synchronously with `None`.
    pub fn convert_to_refpoint_now(&self, id: &str, ctx: Option<&JobCtx>) -> Result<String> {
        self.convert_to_refpoint(id, work_of(ctx))
    }

    /// [`Host::destroy_refpoint`] inside `ctx`'s job, or synchronously with `None`.
    pub fn destroy_refpoint_now(&self, id: &str, ctx: Option<&JobCtx>) -> Result<()> {
        self.destroy_refpoint(id, work_of(ctx))
    }
}

/// The job's context as [`Work`], or [`NoJob`] outside a job.
fn work_of(ctx: Option<&JobCtx>) -> &dyn Work {
    match ctx {
        Some(ctx) => ctx,
        None => &NoJob,
    }
}
