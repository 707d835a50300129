"""pywbemcli 1.4.1 (pywbemtools) from a shell against `cosnap serve`: class get, instance
enumerate (default --use-pull either: Open* answered with 7, then the fallback), instance
get, associators, and invokemethod (pywbemcli fetches the class first and types the
parameters through it)."""

import re
import subprocess
import sys
import pathlib

import pytest

from conftest import NS, PASSWORD, USER, wait_job

import pywbem

PYWBEMCLI = str(pathlib.Path(sys.executable).with_name("pywbemcli"))


@pytest.fixture(scope="module")
def world(server):
    disks = server.base / "disks"
    disks.mkdir()
    ids = []
    for n in ("p1", "p2"):
        img = disks / f"{n}.qcow2"
        server.cli("disk", "create", img, "--format", "qcow2", "--size", "8M")
        ids.append(server.cli("vm", "define", "--name", n, "--disk", img).stdout.strip())
    coll = server.cli("collection", "define", "cli-group").stdout.strip()
    for i in ids:
        server.cli("collection", "add-member", coll, i)
    return {"vms": ids, "collection": coll}


def cli(server, *args, check=True):
    cmd = [PYWBEMCLI, "-s", server.url, "-u", USER, "-p", PASSWORD, "-d", NS, "-o", "mof", "--use-pull", "either", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=server.base,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(server.base), "LC_ALL": "C.UTF-8"})
    if check and r.returncode != 0:
        raise AssertionError(f"pywbemcli {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def test_class_get_shows_methods_and_qualifiers(server):
    out = cli(server, "class", "get", "Msvm_CollectionSnapshotService")
    assert "class Msvm_CollectionSnapshotService : CIM_Service" in out
    for m in ["CreateSnapshot", "ApplySnapshot", "DestroySnapshot", "ConvertToReferencePoint", "ExportSnapshot"]:
        assert re.search(rf"uint32 {m}\(", out), m
    assert 'EmbeddedInstance ( "Msvm_CollectionSnapshotExportSettingData" )' in out
    assert "CIM_ConcreteJob REF Job" in out


def test_instance_enumerate_falls_back_from_pull(server, world):
    out = cli(server, "instance", "enumerate", "Msvm_ComputerSystem")
    for vm in world["vms"]:
        assert f'Name = "{vm}";' in out
    names = cli(server, "instance", "enumerate", "Msvm_CollectionSnapshotService", "--no")
    assert "Msvm_CollectionSnapshotService" in names


def test_instance_get_and_associators(server, world):
    vm = world["vms"][0]
    out = cli(server, "instance", "get", f'Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="{vm}"')
    assert "instance of Msvm_ComputerSystem" in out and 'ElementName = "p1";' in out
    coll_path = f'Msvm_VirtualSystemCollection.CollectionID="{world["collection"]}"'
    out = cli(server, "instance", "associators", coll_path, "--ac", "Msvm_CollectedVirtualSystems", "--no")
    for v in world["vms"]:
        assert v in out
    out = cli(server, "instance", "references", coll_path, "--rc", "Msvm_CollectedVirtualSystems", "--no")
    assert out.count("Msvm_CollectedVirtualSystems") == 2


def test_invokemethod_create_snapshot(server, world):
    svc = server.conn().EnumerateInstanceNames("Msvm_CollectionSnapshotService")[0]
    keys = []
    for k, v in svc.keybindings.items():
        keys += ["--key", f"{k}={v}"]
    coll_path = f'Msvm_VirtualSystemCollection.CollectionID="{world["collection"]}"'
    out = cli(server, "instance", "invokemethod", "Msvm_CollectionSnapshotService", *keys, "CreateSnapshot",
              "-p", f"Collection={coll_path}", "-p", "SnapshotType=2")
    assert "ReturnValue=4096" in out, out
    m = re.search(r'Job="?(//[^\s]*Msvm_ConcreteJob\.InstanceID=\\?"([^"\\]+)\\?")', out)
    assert m, out
    job_id = m.group(2)
    job = wait_job(server.conn(), pywbem.CIMInstanceName("Msvm_ConcreteJob", {"InstanceID": job_id}, namespace=NS))
    assert job["JobState"] == 7
    out = cli(server, "instance", "get", f'Msvm_ConcreteJob.InstanceID="{job_id}"')
    assert "JobState = 7;" in out and "PercentComplete = 100;" in out
    # An unknown parameter is refused by pywbemcli itself, from the class it fetched.
    r = subprocess.run([PYWBEMCLI, "-s", server.url, "-u", USER, "-p", PASSWORD, "-d", NS, "instance", "invokemethod",
                        "Msvm_CollectionSnapshotService", *keys, "CreateSnapshot", "-p", "Bogus=1"],
                       capture_output=True, text=True, timeout=120, cwd=server.base,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(server.base), "LC_ALL": "C.UTF-8"})
    assert r.returncode != 0
