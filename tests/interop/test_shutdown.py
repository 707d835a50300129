"""Graceful shutdown: SIGTERM while an export job runs. The server stops accepting, lets
the job finish (or, past --shutdown-grace, cancels it), records the job's end and exits 0.
Never half done: a Completed job left a package that verifies; a Terminated one left no
package at all."""

import json
import subprocess

import pywbem
from pywbem import CIMInstance, CIMProperty, Uint16

from conftest import NS, CosnapServer, service

MIB = 1024 * 1024


def export_then_sigterm(tmp_path, grace, disk_mib):
    s = CosnapServer(tmp_path, extra_args=["--shutdown-grace", str(grace)])
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{disk_mib}M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x77 0 {disk_mib}M", str(disk)], check=True, capture_output=True)
    vm = s.cli("vm", "define", "--name", "sd", "--disk", disk).stdout.strip()
    coll = s.cli("collection", "define", "sd-group").stdout.strip()
    s.cli("collection", "add-member", coll, vm)
    snap = s.cli("snapshot", "create", coll, "--type", "recovery").stdout.strip()
    s.start()
    conn = s.conn()
    out_dir = s.export_root / "x"
    out_dir.mkdir()
    esd = CIMInstance("Msvm_CollectionSnapshotExportSettingData", properties=[CIMProperty("CopyVmStorage", True), CIMProperty("BackupIntent", Uint16(1))])
    sc = pywbem.CIMInstanceName("Msvm_SnapshotCollection", {"CollectionID": snap}, namespace=NS)
    rv, out = conn.InvokeMethod("ExportSnapshot", service(conn, "Msvm_CollectionSnapshotService"),
                                [("SnapshotCollection", sc), ("ExportDirectory", str(out_dir)), ("ExportSettingData", esd)])
    assert rv == 4096
    job_id = out["Job"]["InstanceID"]
    rc = s.stop()
    assert rc == 0, s.log.read_text()
    job = json.loads(s.cli("--json", "job", "show", job_id).stdout)
    packages = list(out_dir.rglob("cosnap-package.json"))
    assert job["state"] in (7, 8), job
    if job["state"] == 7:
        assert len(packages) == 1
        s.cli("export", "verify", packages[0].parent)
    else:
        assert packages == [], packages
    return job["state"], s.log.read_text()


def test_sigterm_lets_a_running_export_finish(tmp_path):
    state, log = export_then_sigterm(tmp_path, grace=60, disk_mib=64)
    assert state == 7, log


def test_sigterm_with_no_grace_cancels_or_finishes_cleanly(tmp_path):
    state, log = export_then_sigterm(tmp_path, grace=0, disk_mib=512)
    print(f"job state after SIGTERM with no grace: {state}")
    if state == 8:
        assert "cancelling job" in log, log
