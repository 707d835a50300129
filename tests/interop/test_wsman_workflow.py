"""The backup workflow of issue 5 over WS-Management, run between four real WS-Man clients
against `cosnap serve`'s `/wsman`:

  wsl (wslenum)        find the four services by EnumerateEPR + Pull
  pypsrp               DefineSystem ×3 (embedded instances, an array of them), Get the VMs
  python-dracclient    DefineCollection (text parameters); WQL enumerate with auto-pull
  wsl (wslinvoke)      AddMember ×3 (REF parameters from EPR files), membership read back
                       through an association filter (pypsrp)
  pywinrm              CreateSnapshot (Recovery) → Job EPR → poll the job by Get
  wsl (wslinvoke)      ExportSnapshot full with CreateVmExportSubdirectory; wslget of the job
  pywinrm              ConvertToReferencePoint
  pypsrp               CreateSnapshot, ExportSnapshot differential against the reference point
  dracclient           GetErrorEx of a job that failed (ApplySnapshot of a snapshot whose
                       frozen layer was moved away behind the server's back)

The exported images are checked as the CIM-XML workflow test checks them: qemu-img
check/compare for qcow2 and raw, `cosnap disk check/compare` and `cosnap export verify` for VHDX.
"""

import json
import pathlib
from types import SimpleNamespace
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import pytest
from dracclient import wsman as drac
from pypsrp.exceptions import AuthenticationError, WSManFaultError
from pywbem import Uint16, Uint64

from conftest import PASSWORD, USER, CosnapServer, serving, wmi_path
from test_workflow import MIB, SIZE, disk_of, packages_under, sh, write_pattern
from test_workflow import disks  # noqa: F401,F811 (the fixture, shared with the CIM-XML workflow)
from wsman_clients import Psrp, Winrm, Wsl, items_of
from wsman_wire import S, embedded, parse_epr, props, q, uri

WSL_USER, WSL_PASSWORD = "wsl", "wsl-pass-1"
QUOT = {'"': "&quot;"}
SERVICES = ["Msvm_CollectionManagementService", "Msvm_CollectionSnapshotService",
            "Msvm_CollectionReferencePointService", "Msvm_VirtualSystemManagementService"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = CosnapServer(tmp_path_factory.mktemp("cosnap"), https=True)
    s.cli("user", "add", WSL_USER, "--password-stdin", input=WSL_PASSWORD + "\n")
    yield from serving(s)


@pytest.fixture(scope="module")
def clients(server):
    return {
        "psrp": Psrp(server.port, USER, PASSWORD),
        "winrm": Winrm(server.port, USER, PASSWORD),
        "wsl": Wsl(server.port, WSL_USER, WSL_PASSWORD, server.base / "wsl"),
        "drac": drac.Client("127.0.0.1", USER, PASSWORD, port=server.port, protocol="http"),
    }


def job_result(psrp, rv, outs, result, result_class, wait):
    """The element a method produced: its out parameter, or (for a job) the job's affected
    element of `result_class`. The job must complete."""
    assert rv in (0, 4096), (rv, outs)
    produced = parse_epr(outs[result]) if result in outs else None
    if rv == 4096:
        job = parse_epr(outs["Job"])
        assert job.cls == "Msvm_ConcreteJob", job
        done = wait(job)
        assert int(done["JobState"]) in (7, 32768), done
        assert int(done["PercentComplete"]) == 100, done
        if produced is None and result_class:
            found = psrp.associators(job, "Msvm_AffectedJobElement", result_class)
            assert len(found) == 1, found
            produced = found[0]
    return produced


def drac_output(root, method):
    out = root.find(f"{q(S, 'Body')}/*")
    assert out is not None and out.tag.endswith(f"}}{method}_OUTPUT"), ET.tostring(root)[:800]
    return out


def wmi_path_of(host, epr):
    """The WMI object path text of an EPR (DifferentialBackupBase takes one)."""
    return wmi_path(host, SimpleNamespace(classname=epr.cls, keybindings=epr.selectors))


def test_backup_workflow(server, clients, disks):
    images, expected = disks
    psrp, winrm, wsl, dracc = clients["psrp"], clients["winrm"], clients["wsl"], clients["drac"]

    # -- find the services (wslenum: EnumerateEPR + Pull) -------------------------------
    svc = {}
    for name in SERVICES:
        eprs, _ = wsl.enumerate_eprs(uri(name))
        assert len(eprs) == 1 and eprs[0].cls == name, eprs
        svc[name] = eprs[0]
    host = psrp.get(svc["Msvm_CollectionSnapshotService"])["SystemName"]
    assert host

    # -- DefineSystem ×3 (pypsrp; embedded instances, ResourceSettings an array) ---------
    vms = {}
    for name, (img, fmt) in images.items():
        vssd = embedded("Msvm_VirtualSystemSettingData", [("ElementName", name)])
        rasd = [embedded("Msvm_ProcessorSettingData", [("VirtualQuantity", Uint64(2))]),
                embedded("Msvm_MemorySettingData", [("VirtualQuantity", Uint64(512))]),
                embedded("Msvm_StorageAllocationSettingData", [("HostResource", [str(img)]), ("ImageFormat", fmt)])]
        rv, outs = psrp.invoke(svc["Msvm_VirtualSystemManagementService"], "DefineSystem",
                               [("SystemSettings", vssd), ("ResourceSettings", rasd)])
        system = job_result(psrp, rv, outs, "ResultingSystem", "Msvm_ComputerSystem", psrp.wait_job)
        assert system.cls == "Msvm_ComputerSystem", system
        assert psrp.get(system)["ElementName"] == name
        vms[name] = system
    assert len({s.key("Name") for s in vms.values()}) == 3

    # -- DefineCollection (dracclient: text parameters) ----------------------------------
    cms = svc["Msvm_CollectionManagementService"]
    root = dracc.invoke(cms.resource_uri, "DefineCollection", cms.selectors, {"Name": "backup-group", "Type": "0"})
    out = drac_output(root, "DefineCollection")
    rv = int(out.findtext(f"{{{cms.resource_uri}}}ReturnValue"))
    outs = {c.tag.split("}", 1)[1]: c for c in out}
    coll = job_result(psrp, rv, outs, "DefinedCollection", "Msvm_VirtualSystemCollection", psrp.wait_job)
    assert coll.cls == "Msvm_VirtualSystemCollection", coll

    # -- WQL enumerate with auto-pull (dracclient; one item per batch forces the pulls) ---
    found = dracc.enumerate(uri("*"), max_elems=1, filter_dialect="wql",
                            filter_query="SELECT * FROM Msvm_ComputerSystem WHERE Caption = 'Virtual Machine'")
    names = {props(i).get("Name") for i in items_of(found.find(q(S, "Body")))}
    assert {s.key("Name") for s in vms.values()} <= names, names
    found = dracc.enumerate(uri("*"), max_elems=5, filter_dialect="wql",
                            filter_query="SELECT * FROM Msvm_VirtualSystemCollection WHERE ElementName = 'backup-group'")
    colls = [props(i) for i in items_of(found.find(q(S, "Body")))]
    assert [c["CollectionID"] for c in colls] == [coll.key("CollectionID")], colls

    # -- AddMember ×3 (wslinvoke: the service found by wsl itself, REF params from files) --
    coll_file = wsl.epr_file(coll, "collection")
    for name, system in vms.items():
        rv, outs = wsl.invoke(cms.resource_uri, "AddMember", f"Member=FILE:{wsl.epr_file(system, name)}",
                              f"Collection=FILE:{coll_file}")
        job_result(psrp, rv, outs, None, None, psrp.wait_job)
    members = psrp.associators(coll, "Msvm_CollectedVirtualSystems", "Msvm_ComputerSystem")
    assert {m.key("Name") for m in members} == {s.key("Name") for s in vms.values()}

    # -- CreateSnapshot (Recovery) → job polled by Get (pywinrm) --------------------------
    css = svc["Msvm_CollectionSnapshotService"]
    rv, outs = winrm.invoke(css, "CreateSnapshot", [("Collection", coll), ("SnapshotSettings", ""), ("SnapshotType", "2")])
    assert rv == 4096, rv
    snap1 = job_result(psrp, rv, outs, "ResultingSnapshotCollection", "Msvm_SnapshotCollection", winrm.wait_job)
    assert snap1.cls == "Msvm_SnapshotCollection", snap1

    # -- ExportSnapshot full with CreateVmExportSubdirectory (wslinvoke) ------------------
    full_dir = server.export_root / "full"
    full_dir.mkdir()
    esd = embedded("Msvm_CollectionSnapshotExportSettingData", [
        ("CopyVmStorage", True), ("CreateVmExportSubdirectory", True), ("BackupIntent", Uint16(1))])
    rv, outs = wsl.invoke(css.resource_uri, "ExportSnapshot", f"SnapshotCollection=FILE:{wsl.epr_file(snap1, 'snap1')}",
                          f"ExportDirectory={full_dir}", "ExportSettingData=" + escape(esd, QUOT))
    assert rv == 4096, rv
    job = parse_epr(outs["Job"])
    done = psrp.wait_job(job)
    assert int(done["JobState"]) == 7, done
    assert int(wsl.get(job)["JobState"]) == 7
    full_root, full_meta = packages_under(full_dir)
    assert full_root.parent == full_dir, "CreateVmExportSubdirectory: the package is a sub-directory"
    assert full_meta["kind"] == "full"
    for name, system in vms.items():
        d = disk_of(full_meta, system.key("Name"))
        f = full_root / d["file"]
        if images[name][1] != "raw":
            sh("qemu-img", "check", "-f", d["format"], f)
        sh("qemu-img", "compare", "-f", d["format"], "-F", "raw", f, expected[name])

    # -- ConvertToReferencePoint (pywinrm) -------------------------------------------------
    rv, outs = winrm.invoke(css, "ConvertToReferencePoint", [("AffectedSnapshotCollection", snap1)])
    assert rv == 4096, rv
    rp = job_result(psrp, rv, outs, "ResultingReferencePointCollection", "Msvm_ReferencePointCollection", winrm.wait_job)
    assert rp.cls == "Msvm_ReferencePointCollection", rp
    assert psrp.get(rp)
    with pytest.raises(WSManFaultError):
        psrp.get(snap1)  # the snapshot collection is gone

    # -- guest writes, through the CLI while the server runs -------------------------------
    server.cli("vm", "write", vms["vm1"].key("Name"), "--disk", "0", "--offset", str(4 * MIB), "--length", str(MIB), "--pattern", "0x44")
    server.cli("vm", "write", vms["vm3"].key("Name"), "--disk", "0", "--offset", str(12 * MIB), "--length", str(2 * MIB), "--pattern", "0x66")
    write_pattern(expected["vm1"], 4 * MIB, MIB, 0x44)
    write_pattern(expected["vm3"], 12 * MIB, 2 * MIB, 0x66)

    # -- CreateSnapshot, ExportSnapshot differential against the reference point (pypsrp) --
    rv, outs = psrp.invoke(css, "CreateSnapshot", [("Collection", coll), ("SnapshotSettings", ""), ("SnapshotType", "2")])
    snap2 = job_result(psrp, rv, outs, "ResultingSnapshotCollection", "Msvm_SnapshotCollection", psrp.wait_job)
    diff_dir = server.export_root / "diff"
    diff_dir.mkdir()
    esd = embedded("Msvm_CollectionSnapshotExportSettingData", [
        ("CopyVmStorage", True), ("BackupIntent", Uint16(1)), ("DifferentialBackupBase", wmi_path_of(host, rp))])
    rv, outs = psrp.invoke(css, "ExportSnapshot", [("SnapshotCollection", snap2), ("ExportDirectory", str(diff_dir)),
                                                   ("ExportSettingData", esd)])
    assert rv == 4096, rv
    done = psrp.wait_job(parse_epr(outs["Job"]))
    assert int(done["JobState"]) == 7, done
    diff_root, diff_meta = packages_under(diff_dir)
    assert diff_meta["kind"] == "differential" and diff_meta["differential"] is not None
    for name, system in vms.items():
        d = disk_of(diff_meta, system.key("Name"))
        f = diff_root / d["file"]
        written = {"vm1": MIB, "vm2": 0, "vm3": 2 * MIB}[name]
        changed = sum(e - s for s, e in d["changed_ranges"])
        assert written <= changed < SIZE // 2, (name, d["changed_ranges"])
        assert (f.parent / d["parent"]).resolve() == (full_root / disk_of(full_meta, system.key("Name"))["file"]).resolve()
        if d["format"] == "qcow2":
            sh("qemu-img", "check", "-f", "qcow2", f)
            sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", f, expected[name])
        else:
            assert d["format"] == "vhdx", d
            server.cli("disk", "check", f)
            server.cli("disk", "compare", f, expected[name])
    server.cli("export", "verify", full_root)
    server.cli("export", "verify", diff_root)

    # -- a job that fails, its errors read through GetErrorEx (dracclient) -----------------
    check_failed_job_errors(server, psrp, dracc, css, snap2)


def check_failed_job_errors(server, psrp, dracc, css, snap):
    """ApplySnapshot of `snap` after one of its frozen layers was moved away behind the
    server's back: the job ends in Exception (10) and GetErrorEx returns one Msvm_Error.
    The layer is put back afterwards (the failed apply rolls back and changes nothing)."""
    listed = json.loads(server.cli("--json", "snapshot", "list").stdout)
    shown = [s for s in listed if s["id"] in snap.key("CollectionID")]
    assert len(shown) == 1, (snap, [s["id"] for s in listed])
    frozen = pathlib.Path(shown[0]["vms"][0]["disks"][0]["path"])
    moved = frozen.with_name(frozen.name + ".moved")
    frozen.rename(moved)
    try:
        rv, outs = psrp.invoke(css, "ApplySnapshot", [("SnapshotCollection", snap)])
        assert rv == 4096, rv
        job = parse_epr(outs["Job"])
        done = psrp.wait_job(job)
        assert int(done["JobState"]) == 10, done
        assert done["ErrorDescription"], done
        root = dracc.invoke(job.resource_uri, "GetErrorEx", job.selectors, {})
        out = drac_output(root, "GetErrorEx")
        assert int(out.findtext(f"{{{job.resource_uri}}}ReturnValue")) == 0
        errors = out.findall(f"{{{job.resource_uri}}}Errors")
        assert len(errors) == 1, ET.tostring(out)
        # Escaped CIM-XML <INSTANCE> text, or the DSP0230 nested element: either names the class.
        text = ET.tostring(errors[0], encoding="unicode")
        assert "Msvm_Error" in text and "Message" in text, text[:500]
    finally:
        moved.rename(frozen)


def test_https_pypsrp_dracclient_wsl(server):
    """pypsrp over HTTPS, validating the server's generated certificate; dracclient and wsl over
    HTTPS (neither validates); bad credentials over HTTPS are refused."""
    cert = server.data / "tls" / "cert.pem"
    psrp = Psrp(server.https_port, USER, PASSWORD, https=True, ca=str(cert))
    found = psrp.enumerate(uri("Msvm_CollectionSnapshotService"), mode="EnumerateObjectAndEPR", max_elements=10)
    assert len(found) == 1
    inst, epr = found[0]
    assert epr.cls == "Msvm_CollectionSnapshotService"
    assert props(inst)["Name"] == psrp.get(epr)["Name"]
    dracc = drac.Client("127.0.0.1", USER, PASSWORD, port=server.https_port, protocol="https")
    root = dracc.enumerate(uri("*"), filter_dialect="wql", filter_query="SELECT * FROM Msvm_VirtualSystemManagementService")
    assert len(items_of(root.find(q(S, "Body")))) == 1
    wsl = Wsl(server.https_port, WSL_USER, WSL_PASSWORD, server.base / "wsl-https", https=True)
    eprs, _ = wsl.enumerate_eprs(uri("Msvm_CollectionSnapshotService"))
    assert [e.selectors for e in eprs] == [epr.selectors]
    with pytest.raises(AuthenticationError):
        Psrp(server.https_port, USER, "wrong", https=True, ca=str(cert)).get(epr)
