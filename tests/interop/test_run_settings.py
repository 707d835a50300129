"""A VM's run settings over CIM-XML with pywbem against a real `cosnap serve`: boot as the VSSD's
CosnapKernel / CosnapInitrd / CosnapKernelCommandLine, COM ports as Msvm_SerialPortSettingData
(COM 2's Connection[0] = the Unix socket QEMU serves). DefineSystem, ModifySystemSettings and
ModifyResourceSettings take them under the storage-root check (32769 and nothing changed when a path
lies outside), and a VM started over CIM serves COM 2 where CIM put it. Every QEMU the test starts
is killed by pid at the end, whatever happened."""

import pathlib
import shutil

import pytest
from pywbem import CIMInstance, CIMInstanceName, CIMProperty, Uint16

from conftest import NS, service, wait_job
from test_running_vms import guest, kill_qemu

ACCESS_DENIED = 32769
NOT_SUPPORTED = 32770
INVALID_STATE = 32775


def vssd_path(vm_id):
    return CIMInstanceName("Msvm_VirtualSystemSettingData", {"InstanceID": f"Microsoft:{vm_id}"}, namespace=NS)


def vm_path(vm_id):
    return CIMInstanceName("Msvm_ComputerSystem", {"CreationClassName": "Msvm_ComputerSystem", "Name": vm_id},
                           namespace=NS)


def com_port(name, socket, instance_id=None):
    props = [CIMProperty("ElementName", name), CIMProperty("Connection", [str(socket)])]
    if instance_id:
        props.append(CIMProperty("InstanceID", instance_id))
    return CIMInstance("Msvm_SerialPortSettingData", properties=props)


def ports(conn, vm_id):
    """COM n -> Connection, through Msvm_VirtualSystemSettingDataComponent as Hyper-V clients read them."""
    found = conn.Associators(vssd_path(vm_id), AssocClass="Msvm_VirtualSystemSettingDataComponent",
                             ResultClass="Msvm_SerialPortSettingData")
    assert all(p["ResourceType"] == 21 for p in found)
    return {p["ElementName"]: list(p["Connection"] or []) for p in found}


@pytest.fixture(scope="module")
def booted(server, conn):
    """A VM defined over CIM with the test guest copied into the storage root and COM 2 on a socket
    there; yields (vm id, socket); kills its QEMU by pid at the end."""
    kernel, initrd = guest()
    root = server.storage_root
    shutil.copy(kernel, root / "vmlinuz")
    shutil.copy(initrd, root / "initrd.gz")
    disk = root / "run-settings.raw"
    disk.write_bytes(b"\0" * (16 << 20))
    socket = root / "com2.sock"

    vssd = CIMInstance("Msvm_VirtualSystemSettingData", properties=[
        CIMProperty("ElementName", "serial-vm"),
        CIMProperty("CosnapKernel", str(root / "vmlinuz")),
        CIMProperty("CosnapInitrd", str(root / "initrd.gz")),
        CIMProperty("CosnapKernelCommandLine", "console=ttyS0 quiet panic=-1 cosnap.mode=idle"),
    ])
    rasd = [
        CIMInstance("Msvm_StorageAllocationSettingData", properties=[
            CIMProperty("HostResource", [str(disk)]), CIMProperty("ImageFormat", "raw")]),
        com_port("COM 2", socket),
    ]
    vsms = service(conn, "Msvm_VirtualSystemManagementService")
    rv, out = conn.InvokeMethod("DefineSystem", vsms, [("SystemSettings", vssd), ("ResourceSettings", rasd)])
    assert rv == 0, f"DefineSystem returned {rv}"
    vm_id = out["ResultingSystem"]["Name"]
    pidfile = server.data / "run" / vm_id / "qemu.pid"
    try:
        yield vm_id, socket
    finally:
        kill_qemu(pidfile)


def test_define_system_boot_and_com2_are_shown(conn, server, booted):
    vm_id, socket = booted
    vssd = conn.GetInstance(vssd_path(vm_id))
    assert vssd["CosnapKernel"] == str((server.storage_root / "vmlinuz").resolve())
    assert vssd["CosnapInitrd"] == str((server.storage_root / "initrd.gz").resolve())
    assert "cosnap.mode=idle" in vssd["CosnapKernelCommandLine"]
    assert ports(conn, vm_id) == {"COM 1": [], "COM 2": [str(socket.resolve())]}

    names = conn.EnumerateInstanceNames("Msvm_SerialPortSettingData")
    mine = [n for n in names if n["InstanceID"].startswith(f"Microsoft:{vm_id}\\")]
    assert len(mine) == 2
    assert conn.GetInstance(mine[0])["ResourceSubType"] == "Microsoft:Hyper-V:Serial Port"


def test_paths_outside_the_storage_roots_are_refused_and_change_nothing(conn, server, booted):
    vm_id, socket = booted
    vsms = service(conn, "Msvm_VirtualSystemManagementService")
    outside = server.base / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "vmlinuz").write_bytes(b"not for clients")
    before_ports = ports(conn, vm_id)
    before_vssd = conn.GetInstance(vssd_path(vm_id))

    port = com_port("COM 2", outside / "com2.sock", f"Microsoft:{vm_id}\\Com\\2")
    rv, _ = conn.InvokeMethod("ModifyResourceSettings", vsms, [("ResourceSettings", [port])])
    assert rv == ACCESS_DENIED
    console = com_port("COM 1", server.storage_root / "c.sock", f"Microsoft:{vm_id}\\Com\\1")
    rv, _ = conn.InvokeMethod("ModifyResourceSettings", vsms, [("ResourceSettings", [console])])
    assert rv == NOT_SUPPORTED

    changed = before_vssd.copy()
    changed["CosnapKernel"] = str(outside / "vmlinuz")
    rv, _ = conn.InvokeMethod("ModifySystemSettings", vsms, [("SystemSettings", changed)])
    assert rv == ACCESS_DENIED

    assert ports(conn, vm_id) == before_ports
    assert conn.GetInstance(vssd_path(vm_id))["CosnapKernel"] == before_vssd["CosnapKernel"]


def test_modify_system_settings_round_trips_what_get_instance_shows(conn, booted):
    vm_id, _ = booted
    vsms = service(conn, "Msvm_VirtualSystemManagementService")
    shown = conn.GetInstance(vssd_path(vm_id))
    rv, _ = conn.InvokeMethod("ModifySystemSettings", vsms, [("SystemSettings", shown)])
    assert rv == 0
    assert conn.GetInstance(vssd_path(vm_id))["CosnapKernel"] == shown["CosnapKernel"]


def test_a_vm_started_over_cim_serves_com2_where_cim_put_it(conn, server, booted):
    vm_id, _ = booted
    vsms = service(conn, "Msvm_VirtualSystemManagementService")
    moved = server.storage_root / "moved.sock"
    port = com_port("COM 2", moved, f"Microsoft:{vm_id}\\Com\\2")
    rv, out = conn.InvokeMethod("ModifyResourceSettings", vsms, [("ResourceSettings", [port])])
    assert rv == 0
    assert out["ResultingResourceSettings"][0]["InstanceID"] == f"Microsoft:{vm_id}\\Com\\2"

    rv, out = conn.InvokeMethod("RequestStateChange", vm_path(vm_id), [("RequestedState", Uint16(2))])
    assert rv == 4096
    assert wait_job(conn, out["Job"])["JobState"] == 7
    try:
        assert moved.is_socket(), "QEMU serves COM 2 at the socket ModifyResourceSettings named"
        shown = ports(conn, vm_id)
        assert len(shown["COM 1"]) == 1 and pathlib.Path(shown["COM 1"][0]).is_socket(), shown

        again = com_port("COM 2", server.storage_root / "again.sock", f"Microsoft:{vm_id}\\Com\\2")
        rv, _ = conn.InvokeMethod("ModifyResourceSettings", vsms, [("ResourceSettings", [again])])
        assert rv == INVALID_STATE, "QEMU opened its ports at start: they change while the VM is off"
        assert ports(conn, vm_id)["COM 2"] == [str(moved.resolve())]
    finally:
        rv, out = conn.InvokeMethod("RequestStateChange", vm_path(vm_id), [("RequestedState", Uint16(3))])
        assert rv == 4096
        wait_job(conn, out["Job"])
