"""sblim-wbemcli 1.6.3 (Debian), a second, independent CIM-XML client written in C++:
percent-escaped CIMObject headers, parameters without PARAMTYPE (typed by the server from
its own class), references as INSTANCEPATH with a HOST, credentials in the URL."""

import re
import shutil
import subprocess
import time

import pytest

from conftest import CosnapServer, NS, serving

WUSER, WPASS = "wbem", "wbem-pw-1"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if shutil.which("wbemcli") is None:
        pytest.fail("wbemcli is not installed (apt-get install sblim-wbemcli; ./scripts/test does it)")
    s = CosnapServer(tmp_path_factory.mktemp("cosnap"))
    s.cli("user", "add", WUSER, "--password-stdin", input=WPASS)
    yield from serving(s)


@pytest.fixture(scope="module")
def world(server):
    img = server.base / "w.qcow2"
    server.cli("disk", "create", img, "--format", "qcow2", "--size", "8M")
    vm = server.cli("vm", "define", "--name", "wbem-vm", "--disk", img).stdout.strip()
    coll = server.cli("collection", "define", "wbem-group").stdout.strip()
    server.cli("collection", "add-member", coll, vm)
    return {"vm": vm, "collection": coll}


def base(server, user=WUSER, pw=WPASS, ns=NS):
    return f"http://{user}:{pw}@127.0.0.1:{server.port}/{ns}"


def wbemcli(*args, check=True):
    r = subprocess.run(["wbemcli", *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"wbemcli {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def service_path(server):
    out = wbemcli("ein", f"{base(server)}:Msvm_CollectionSnapshotService").stdout.strip().splitlines()
    assert len(out) == 1, out
    # "host:port/ns:Class.keys" -> "Class.keys"
    return out[0].split(f"{NS}:", 1)[1]


def job_state(server, job_id):
    out = wbemcli("gi", f'{base(server)}:Msvm_ConcreteJob.InstanceID="{job_id}"').stdout
    return int(re.search(r"JobState=(\d+)", out).group(1))


def wait_job(server, job_id):
    deadline = time.monotonic() + 120
    while (state := job_state(server, job_id)) not in (7, 8, 9, 10, 32768):
        assert time.monotonic() < deadline, f"job {job_id} stuck in {state}"
        time.sleep(0.2)
    return state


def test_gc_ein_gi(server, world):
    out = wbemcli("gc", f"{base(server)}:Msvm_CollectionSnapshotService").stdout
    assert "Msvm_CollectionSnapshotService" in out and "CreationClassName=" in out
    out = wbemcli("ein", f"{base(server)}:Msvm_ComputerSystem").stdout
    assert f'Name="{world["vm"]}"' in out
    out = wbemcli("gi", f'{base(server)}:Msvm_ComputerSystem.CreationClassName="Msvm_ComputerSystem",Name="{world["vm"]}"').stdout
    assert 'ElementName="wbem-vm"' in out


def test_cm_untyped_params_and_host_qualified_refs(server, world):
    svc = service_path(server)
    coll = f'Msvm_VirtualSystemCollection.CollectionID="{world["collection"]}"'
    out = wbemcli("cm", f"{base(server)}:{svc}", f"CreateSnapshot.Collection={coll},SnapshotType=2").stdout
    m = re.search(r'CreateSnapshot: 4096, Job \(reference\): .*Msvm_ConcreteJob\.InstanceID="([^"]+)"', out)
    assert m, out
    assert wait_job(server, m.group(1)) == 7
    snaps = [l for l in wbemcli("ein", f"{base(server)}:Msvm_SnapshotCollection").stdout.splitlines() if l.strip()]
    assert len(snaps) == 1
    snap = snaps[0].split(f"{NS}:", 1)[1]
    out = wbemcli("cm", f"{base(server)}:{svc}", f"DestroySnapshot.AffectedSnapshotCollection={snap}").stdout
    m = re.search(r'DestroySnapshot: 4096, Job \(reference\): .*InstanceID="([^"]+)"', out)
    assert m, out
    assert wait_job(server, m.group(1)) == 7
    assert wbemcli("ein", f"{base(server)}:Msvm_SnapshotCollection").stdout.strip() == ""


def test_errors_reach_wbemcli(server, world):
    svc = service_path(server)
    coll = f'Msvm_VirtualSystemCollection.CollectionID="{world["collection"]}"'
    r = wbemcli("cm", f"{base(server)}:{svc}", f"CreateSnapshot.Collection={coll},SnapshotType=abc", check=False)
    assert r.returncode != 0 and "CIM_ERR_INVALID_PARAMETER" in r.stderr + r.stdout
    r = wbemcli("cm", f"{base(server)}:{svc}", "NoSuchMethod.X=1", check=False)
    assert r.returncode != 0 and "(17)" in r.stderr + r.stdout
    r = wbemcli("ein", f"{base(server, ns='root/cimv2')}:Msvm_ComputerSystem", check=False)
    assert r.returncode != 0 and "(3)" in r.stderr + r.stdout
    r = wbemcli("ein", f"{base(server, pw='wrong')}:Msvm_ComputerSystem", check=False)
    assert r.returncode != 0 and "username/password" in r.stderr + r.stdout
