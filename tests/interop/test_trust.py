"""Who may name which files (issue 9, finding 2), through the real server with pywbem.

An authenticated CIM client must not be able to define a VM over a file outside the
server's storage roots (`cosnap serve --storage-root DIR`): not directly, not through `..`,
not through a symlink inside a root that points out. Each attempt returns Access Denied
(32769) and records nothing; a disk inside a root is still accepted.
"""

import os

from pywbem import CIMInstance, CIMProperty, Uint64

from conftest import service

ACCESS_DENIED = 32769


def define(conn, name, path, fmt="raw"):
    vsms = service(conn, "Msvm_VirtualSystemManagementService")
    vssd = CIMInstance("Msvm_VirtualSystemSettingData", properties=[CIMProperty("ElementName", name)])
    rasd = [
        CIMInstance("Msvm_MemorySettingData", properties=[CIMProperty("VirtualQuantity", Uint64(256))]),
        CIMInstance("Msvm_StorageAllocationSettingData", properties=[
            CIMProperty("HostResource", [str(path)]), CIMProperty("ImageFormat", fmt)]),
    ]
    rv, _ = conn.InvokeMethod("DefineSystem", vsms, [("SystemSettings", vssd), ("ResourceSettings", rasd)])
    return rv


def vm_names(conn):
    return sorted(str(i.get("ElementName")) for i in conn.EnumerateInstances("Msvm_ComputerSystem"))


def test_define_system_outside_the_storage_roots_is_access_denied(server, conn):
    # A host file the client must not read, outside the storage root.
    secret = server.base / "secret.raw"
    secret.write_bytes(b"\x5a" * (1 << 20))
    root = server.storage_root
    inside = root / "ok.raw"
    inside.write_bytes(b"\0" * (1 << 20))
    link = root / "link.raw"
    os.symlink(secret, link)
    before = vm_names(conn)

    attempts = {
        "direct": secret,
        "dot-dot": root / ".." / "secret.raw",
        "symlink": link,
        "data directory": server.data / "cosnap.db",
        "relative": "secret.raw",
    }
    for what, path in attempts.items():
        assert define(conn, f"evil-{what}", path) == ACCESS_DENIED, what
    assert vm_names(conn) == before, "nothing was recorded"
    assert not [n for n in vm_names(conn) if n.startswith("evil-")]

    # A disk inside the root is accepted.
    assert define(conn, "fine", inside) == 0
    assert "fine" in vm_names(conn)
