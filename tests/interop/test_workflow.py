"""The backup workflow of issue 5, driven by pywbem over CIM-XML against `cosnap serve`:

DefineSystem ×3 → DefineCollection → AddMember ×3 → CreateSnapshot(type 2) → poll the job →
ExportSnapshot full → ConvertToReferencePoint → guest writes (the CLI, while the server
runs) → CreateSnapshot → ExportSnapshot differential with DifferentialBackupBase = the
reference point's WMI object path → the exported images checked with qemu-img.

The three VMs sit on three formats: qcow2 (made by qemu-img, data written by qemu-io),
raw and VHDX (made and written by cosnap). qemu-img is the oracle for every image it can
open; qemu has no VHDX differencing support at all, so the VHDX differential (.avhdx) is
checked with `cosnap disk check` / `cosnap disk compare` and `cosnap export verify`.
"""

import json
import pathlib
import shutil
import subprocess

import pytest
import pywbem
from pywbem import CIMInstance, CIMProperty, Uint16, Uint64

from conftest import run_method, service, wait_job, wmi_path

MIB = 1024 * 1024
SIZE = 32 * MIB


def sh(*args, check=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {r.returncode}: {r.stdout}{r.stderr}")
    return r


def write_pattern(raw: pathlib.Path, offset, length, byte):
    with open(raw, "r+b") as f:
        f.seek(offset)
        f.write(bytes([byte]) * length)


def key(p):
    """A path without host and namespace, to compare paths that differ only in those."""
    return (p.classname.lower(), tuple(sorted((k.lower(), str(v)) for k, v in p.keybindings.items())))


def packages_under(d: pathlib.Path):
    found = list(d.rglob("cosnap-package.json"))
    assert len(found) == 1, found
    return found[0].parent, json.loads(found[0].read_text())


def disk_of(meta, vm_id):
    vms = [v for v in meta["vms"] if v["id"] == vm_id]
    assert len(vms) == 1, (vm_id, [v["id"] for v in meta["vms"]])
    assert len(vms[0]["disks"]) == 1
    return vms[0]["disks"][0]


@pytest.fixture(scope="module")
def disks(server):
    d = server.storage_root / "disks"
    d.mkdir()
    q = d / "vm1.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", q, str(SIZE))
    sh("qemu-io", "-f", "qcow2", "-c", f"write -P 0x11 0 {2 * MIB}", "-c", f"write -P 0x12 {20 * MIB} {MIB}", q)
    r = d / "vm2.raw"
    server.cli("disk", "create", r, "--format", "raw", "--size", str(SIZE))
    server.cli("disk", "write", r, "--offset", "1M", "--length", "3M", "--pattern", "0x21")
    v = d / "vm3.vhdx"
    server.cli("disk", "create", v, "--format", "vhdx", "--size", str(SIZE))
    server.cli("disk", "write", v, "--offset", "8M", "--length", "1M", "--pattern", "0x31")
    # Raw copies of what each disk holds now: the expected content of the full export.
    expected = {}
    for name, img, fmt in [("vm1", q, "qcow2"), ("vm2", r, "raw"), ("vm3", v, "vhdx")]:
        out = d / f"{name}.expected.raw"
        sh("qemu-img", "convert", "-f", fmt, "-O", "raw", img, out)
        expected[name] = out
    return {"vm1": (q, "qcow2"), "vm2": (r, "raw"), "vm3": (v, "vhdx")}, expected


def test_backup_workflow(server, conn, disks):
    images, expected = disks
    host = conn.EnumerateInstances("Msvm_CollectionSnapshotService")[0]["SystemName"]
    vsms = service(conn, "Msvm_VirtualSystemManagementService")
    cms = service(conn, "Msvm_CollectionManagementService")
    css = service(conn, "Msvm_CollectionSnapshotService")

    # -- DefineSystem ×3 -------------------------------------------------------------
    vms = {}
    for name, (img, fmt) in images.items():
        vssd = CIMInstance("Msvm_VirtualSystemSettingData", properties=[CIMProperty("ElementName", name)])
        rasd = [
            CIMInstance("Msvm_ProcessorSettingData", properties=[CIMProperty("VirtualQuantity", Uint64(2))]),
            CIMInstance("Msvm_MemorySettingData", properties=[CIMProperty("VirtualQuantity", Uint64(512))]),
            CIMInstance("Msvm_StorageAllocationSettingData", properties=[
                CIMProperty("HostResource", [str(img)]), CIMProperty("ImageFormat", fmt)]),
        ]
        _, _, system = run_method(conn, "DefineSystem", vsms,
                                  [("SystemSettings", vssd), ("ResourceSettings", rasd)],
                                  result="ResultingSystem", result_class="Msvm_ComputerSystem")
        assert system.classname == "Msvm_ComputerSystem"
        cs = conn.GetInstance(system)
        assert cs["ElementName"] == name
        vms[name] = system
    assert len({key(p) for p in vms.values()}) == 3

    # -- DefineCollection, AddMember ×3 ----------------------------------------------
    _, _, coll = run_method(conn, "DefineCollection", cms, [("Name", "backup-group"), ("Type", Uint16(0))],
                            result="DefinedCollection", result_class="Msvm_VirtualSystemCollection")
    assert coll.classname == "Msvm_VirtualSystemCollection"
    for system in vms.values():
        run_method(conn, "AddMember", cms, [("Member", system), ("Collection", coll)])
    members = conn.AssociatorNames(coll, AssocClass="Msvm_CollectedVirtualSystems")
    assert {m["Name"] for m in members} == {p["Name"] for p in vms.values()}

    # -- CreateSnapshot (Recovery) → job ---------------------------------------------
    rv, out, snap1 = run_method(conn, "CreateSnapshot", css,
                                [("Collection", coll), ("SnapshotSettings", ""), ("SnapshotType", Uint16(2))],
                                result="ResultingSnapshotCollection", result_class="Msvm_SnapshotCollection")
    assert snap1.classname == "Msvm_SnapshotCollection"
    of_coll = conn.AssociatorNames(coll, AssocClass="Msvm_SnapshotOfVirtualSystemCollection")
    assert [key(p) for p in of_coll] == [key(snap1)]

    # -- ExportSnapshot, full --------------------------------------------------------
    full_dir = server.export_root / "full"
    full_dir.mkdir()
    esd = CIMInstance("Msvm_CollectionSnapshotExportSettingData", properties=[
        CIMProperty("CopyVmStorage", True), CIMProperty("BackupIntent", Uint16(1))])
    rv, out, _ = run_method(conn, "ExportSnapshot", css, [
        ("SnapshotCollection", snap1), ("ExportDirectory", str(full_dir)), ("ExportSettingData", esd)])
    assert rv == 4096
    full_root, full_meta = packages_under(full_dir)
    assert full_meta["kind"] == "full"
    for name, system in vms.items():
        d = disk_of(full_meta, system["Name"])
        f = full_root / d["file"]
        fmt = images[name][1]
        if fmt != "raw":
            sh("qemu-img", "check", "-f", d["format"], f)
        sh("qemu-img", "compare", "-f", d["format"], "-F", "raw", f, expected[name])

    # -- ConvertToReferencePoint -----------------------------------------------------
    _, _, rp = run_method(conn, "ConvertToReferencePoint", css, [("AffectedSnapshotCollection", snap1)],
                          result="ResultingReferencePointCollection", result_class="Msvm_ReferencePointCollection")
    assert rp.classname == "Msvm_ReferencePointCollection"
    rp_inst = conn.GetInstance(rp)
    with pytest.raises(pywbem.CIMError) as e:
        conn.GetInstance(snap1)  # the snapshot collection is gone
    assert e.value.status_code == 6
    assert key(rp) in [key(p) for p in conn.AssociatorNames(coll, AssocClass="Msvm_ReferencePointOfVirtualSystemCollection")]

    # -- guest writes, through the CLI while the server runs --------------------------
    server.cli("vm", "write", vms["vm1"]["Name"], "--disk", "0", "--offset", str(4 * MIB), "--length", str(MIB), "--pattern", "0x44")
    server.cli("vm", "write", vms["vm3"]["Name"], "--disk", "0", "--offset", str(12 * MIB), "--length", str(2 * MIB), "--pattern", "0x66")
    write_pattern(expected["vm1"], 4 * MIB, MIB, 0x44)
    write_pattern(expected["vm3"], 12 * MIB, 2 * MIB, 0x66)

    # -- CreateSnapshot again, ExportSnapshot differential against the reference point --
    _, _, snap2 = run_method(conn, "CreateSnapshot", css,
                             [("Collection", coll), ("SnapshotSettings", ""), ("SnapshotType", Uint16(2))],
                             result="ResultingSnapshotCollection", result_class="Msvm_SnapshotCollection")
    diff_dir = server.export_root / "diff"
    diff_dir.mkdir()
    esd = CIMInstance("Msvm_CollectionSnapshotExportSettingData", properties=[
        CIMProperty("CopyVmStorage", True), CIMProperty("BackupIntent", Uint16(1)),
        CIMProperty("DifferentialBackupBase", wmi_path(host, rp_inst.path))])
    rv, out, _ = run_method(conn, "ExportSnapshot", css, [
        ("SnapshotCollection", snap2), ("ExportDirectory", str(diff_dir)), ("ExportSettingData", esd)])
    assert rv == 4096
    diff_root, diff_meta = packages_under(diff_dir)
    assert diff_meta["kind"] == "differential"
    assert diff_meta["differential"] is not None

    for name, system in vms.items():
        d = disk_of(diff_meta, system["Name"])
        f = diff_root / d["file"]
        written = {"vm1": MIB, "vm2": 0, "vm3": 2 * MIB}[name]
        assert d["changed_ranges"] is not None
        changed = sum(e - s for s, e in d["changed_ranges"])
        assert written <= changed < SIZE // 2, (name, d["changed_ranges"])
        assert d["data_bytes"] < SIZE // 2, (name, d["data_bytes"])
        # The differential's parent is the full export's disk: base + differential = the VM now.
        assert d["parent"], d
        assert (f.parent / d["parent"]).resolve() == (full_root / disk_of(full_meta, system["Name"])["file"]).resolve()
        if d["format"] == "qcow2":
            sh("qemu-img", "check", "-f", "qcow2", f)
            chain = json.loads(sh("qemu-img", "info", "--backing-chain", "--output=json", f).stdout)
            assert len(chain) == 2, chain
            sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", f, expected[name])
        else:
            assert d["format"] == "vhdx", d
            server.cli("disk", "check", f)
            server.cli("disk", "compare", f, expected[name])

    # Both packages verify (digests, images, chain links).
    server.cli("export", "verify", full_root)
    server.cli("export", "verify", diff_root)
