"""A VM running under QEMU driven with pywbem: Msvm_ComputerSystem.EnabledState tells the truth
(3 off, 2 running, 32768 paused) and RequestStateChange (2, 32768, 3) returns 4096 with a job,
over CIM-XML against a real `cosnap serve`. Every QEMU the test starts is killed by pid at the
end, whatever happened."""

import os
import pathlib
import signal
import subprocess

import pytest
import pywbem

from conftest import NS, ROOT, wait_job


def kill_qemu(pidfile):
    """SIGKILL the QEMU whose pid cosnap wrote to `pidfile`, if it is still there."""
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def guest():
    """The test guest (kernel, initrd): built by scripts/guest/build.sh, which ./scripts/test runs."""
    d = pathlib.Path(os.environ.get("COSNAP_GUEST_DIR") or ROOT / "target" / "guest")
    if not (d / "vmlinuz").is_file():
        subprocess.run(["bash", str(ROOT / "scripts" / "guest" / "build.sh"), str(d)], check=True)
    return d / "vmlinuz", d / "initrd.gz"


@pytest.fixture(scope="module")
def running_vm(server):
    kernel, initrd = guest()
    disk = server.base / "run.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    vm = server.cli("vm", "define", "--name", "runner", "--memory-mb", "256", "--disk", disk,
                    "--kernel", kernel, "--initrd", initrd,
                    "--cmdline", "console=ttyS0 quiet panic=-1 cosnap.mode=idle cosnap.disks=vda").stdout.strip()
    pidfile = server.data / "run" / vm / "qemu.pid"
    try:
        yield vm
    finally:
        kill_qemu(pidfile)


def vm_path(vm_id):
    return pywbem.CIMInstanceName("Msvm_ComputerSystem", {"CreationClassName": "Msvm_ComputerSystem", "Name": vm_id}, namespace=NS)


def enabled_state(conn, vm):
    return conn.GetInstance(vm_path(vm))["EnabledState"]


def request(conn, vm, state):
    rv, out = conn.InvokeMethod("RequestStateChange", vm_path(vm), [("RequestedState", pywbem.Uint16(state))])
    assert rv == 4096, f"RequestStateChange({state}) returned {rv}"
    job = wait_job(conn, out["Job"])
    assert job["JobState"] == 7, job.items()


def test_request_state_change_runs_pauses_and_turns_off_a_vm(conn, running_vm):
    vm = running_vm
    assert enabled_state(conn, vm) == 3

    request(conn, vm, 2)
    assert enabled_state(conn, vm) == 2
    request(conn, vm, 32768)
    assert enabled_state(conn, vm) == 32768
    rv, _ = conn.InvokeMethod("RequestStateChange", vm_path(vm), [("RequestedState", pywbem.Uint16(32768))])
    assert rv == 32775, "pausing a paused VM is an invalid state"
    request(conn, vm, 2)
    assert enabled_state(conn, vm) == 2

    request(conn, vm, 3)
    assert enabled_state(conn, vm) == 3
    rv, _ = conn.InvokeMethod("RequestStateChange", vm_path(vm), [("RequestedState", pywbem.Uint16(32769))])
    assert rv == 32770, "saving memory state is not supported"
