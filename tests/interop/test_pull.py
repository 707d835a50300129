"""DSP0200 pull operations with the real pywbem: its Iter… operations, left to choose
(use_pull_operations=None), take the pull path against cosnap and give exactly what the
non-pull forms give; contexts are per user, closable, and refused when unknown."""

import pytest
import pywbem

from conftest import NS, CosnapServer, serving

VMS = 9
OTHER_USER, OTHER_PASSWORD = "other", "other pw 3"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = CosnapServer(tmp_path_factory.mktemp("cosnap"))
    s.cli("user", "add", OTHER_USER, "--password-stdin", input=OTHER_PASSWORD + "\n")
    yield from serving(s)


@pytest.fixture(scope="module")
def world(server):
    """Nine VMs with raw disks, one collection of all of them, two snapshots of it."""
    disks = server.base / "disks"
    disks.mkdir()
    vms = []
    for i in range(VMS):
        d = disks / f"d{i}.raw"
        server.cli("disk", "create", d, "--format", "raw", "--size", "1M")
        vms.append(server.cli("vm", "define", "--name", f"pull-{i}", "--disk", d).stdout.strip())
    coll = server.cli("collection", "define", "pull-group").stdout.strip()
    for vm in vms:
        server.cli("collection", "add-member", coll, vm)
    for _ in range(2):
        server.cli("snapshot", "create", coll, "--type", "recovery")
    return {"vms": vms, "collection": coll}


def auto_conn(server):
    """A connection that lets pywbem decide whether to use the pull operations."""
    return server.conn(use_pull_operations=None)


def key(path):
    """A path without host and namespace (pull responses carry them, EnumerateInstances not)."""
    return (path.classname.lower(), frozenset((k.lower(), str(v)) for k, v in path.keybindings.items()))


def keys(paths):
    return sorted(map(key, paths), key=str)


def by_path(instances):
    return {key(i.path): i for i in instances}


def same_instances(pulled, plain):
    a, b = by_path(pulled), by_path(plain)
    assert len(a) == len(pulled), "an instance came twice"
    assert a.keys() == b.keys()
    for k in a:
        assert dict(a[k].items()) == dict(b[k].items()), k


CLASSES = ["Msvm_ComputerSystem", "Msvm_VirtualSystemSettingData", "CIM_ManagedElement",
           "Msvm_SnapshotCollection", "Msvm_ConcreteJob", "Msvm_SettingsDefineState"]


@pytest.mark.parametrize("max_objects", [1, 3, 1000])
def test_iter_enumerate_instances_pulls_and_matches(server, conn, world, max_objects):
    pc = auto_conn(server)
    for cls in CLASSES:
        pulled = list(pc.IterEnumerateInstances(cls, MaxObjectCount=max_objects))
        assert pc._use_enum_inst_pull_operations is True
        same_instances(pulled, conn.EnumerateInstances(cls))
        paths = list(pc.IterEnumerateInstancePaths(cls, MaxObjectCount=max_objects))
        assert pc._use_enum_path_pull_operations is True
        assert keys(paths) == keys(conn.EnumerateInstanceNames(cls))
    assert len(list(pc.IterEnumerateInstances("Msvm_ComputerSystem"))) == VMS
    # More than one stream batch (100): the plain form above came as a chunked response.
    assert len(conn.EnumerateInstances("CIM_ManagedElement")) > 100


def test_iter_associators_and_references_pull_and_match(server, conn, world):
    pc = auto_conn(server)
    vm_paths = conn.EnumerateInstanceNames("Msvm_ComputerSystem")
    assert len(vm_paths) == VMS
    checked = 0
    for vm in vm_paths:
        for assoc in ["Msvm_SnapshotOfVirtualSystem", "Msvm_SettingsDefineState", None]:
            pulled = list(pc.IterAssociatorInstances(vm, AssocClass=assoc, MaxObjectCount=1))
            assert pc._use_assoc_inst_pull_operations is True
            plain = conn.Associators(vm, AssocClass=assoc)
            same_instances(pulled, plain)
            names = list(pc.IterAssociatorInstancePaths(vm, AssocClass=assoc, MaxObjectCount=2))
            assert pc._use_assoc_path_pull_operations is True
            assert keys(names) == keys(conn.AssociatorNames(vm, AssocClass=assoc))
            checked += len(pulled)
        refs = list(pc.IterReferenceInstances(vm, MaxObjectCount=2))
        assert pc._use_ref_inst_pull_operations is True
        same_instances(refs, conn.References(vm))
        ref_names = list(pc.IterReferenceInstancePaths(vm, MaxObjectCount=2))
        assert pc._use_ref_path_pull_operations is True
        assert keys(ref_names) == keys(conn.ReferenceNames(vm))
    # Each VM has two snapshots and its settings: the walk found something to compare.
    assert checked >= VMS * 3


def test_property_list_and_open_with_zero(server, conn, world):
    r = conn.OpenEnumerateInstances("Msvm_ComputerSystem", MaxObjectCount=0, PropertyList=["ElementName"])
    assert r.instances == [] and not r.eos
    names = []
    while not r.eos:
        r = conn.PullInstancesWithPath(r.context, MaxObjectCount=4)
        assert len(r.instances) <= 4
        for i in r.instances:
            assert set(i.keys()) == {"ElementName"}
            names.append(i["ElementName"])
    assert sorted(names) == sorted(f"pull-{i}" for i in range(VMS))


def code(fn, *a, **kw):
    with pytest.raises(pywbem.CIMError) as e:
        fn(*a, **kw)
    return e.value.status_code


def test_contexts_are_owned_closable_and_checked(server, conn, world):
    other = server.conn(creds=(OTHER_USER, OTHER_PASSWORD))
    r = conn.OpenEnumerateInstances("Msvm_ComputerSystem", MaxObjectCount=1)
    assert len(r.instances) == 1 and not r.eos
    # Another user cannot pull or close it; the wrong kind of Pull is refused.
    assert code(other.PullInstancesWithPath, r.context, MaxObjectCount=1) == 21
    assert code(other.CloseEnumeration, r.context) == 21
    assert code(conn.PullInstancePaths, r.context, MaxObjectCount=1) == 21
    # Its owner still can, then closes it; afterwards it is gone.
    assert len(conn.PullInstancesWithPath(r.context, MaxObjectCount=1).instances) == 1
    conn.CloseEnumeration(r.context)
    assert code(conn.PullInstancesWithPath, r.context, MaxObjectCount=1) == 21
    assert code(conn.PullInstancesWithPath, ("0" * 32, NS), MaxObjectCount=1) == 21
    # What cosnap does not do is refused with the codes DSP0200 names.
    assert code(conn.OpenEnumerateInstances, "Msvm_ComputerSystem", OperationTimeout=0) == 22
    assert code(conn.OpenEnumerateInstances, "Msvm_ComputerSystem", FilterQueryLanguage="DMTF:FQL", FilterQuery="Name = 'x'") == 25
    assert code(conn.OpenEnumerateInstances, "Msvm_ComputerSystem", ContinueOnError=True) == 26
    assert code(conn.OpenEnumerateInstances, "Msvm_NoSuchClass") == 5
    assert code(conn.OpenQueryInstances, "WQL", "SELECT * FROM Msvm_ComputerSystem") == 7


def test_per_user_cap(server, world):
    c = server.conn()
    opened = []
    with pytest.raises(pywbem.CIMError) as e:
        for _ in range(100):
            opened.append(c.OpenEnumerateInstancePaths("Msvm_ComputerSystem", MaxObjectCount=1).context)
    assert e.value.status_code == 27
    assert len(opened) == 32
    for ctx in opened:
        c.CloseEnumeration(ctx)
    r = c.OpenEnumerateInstancePaths("Msvm_ComputerSystem", MaxObjectCount=1)
    assert len(r.paths) == 1
    c.CloseEnumeration(r.context)


def test_iter_query_falls_back(server, conn, world):
    pc = auto_conn(server)
    got = list(pc.IterQueryInstances("WQL", "SELECT * FROM Msvm_ComputerSystem").generator)
    assert pc._use_query_pull_operations is False
    assert len(got) == VMS


def test_wql_on_keys_is_a_lookup_with_the_same_answer(conn, world):
    vm = world["vms"][3]
    for spelled in [vm, vm.lower()]:
        q = f"SELECT * FROM Msvm_ComputerSystem WHERE Name = '{spelled}' AND CreationClassName = 'Msvm_ComputerSystem'"
        got = conn.ExecQuery("WQL", q)
        assert [i["Name"] for i in got] == [vm]
        assert dict(got[0].items()) == dict(conn.GetInstance(got[0].path).items())
    q = "SELECT * FROM Msvm_ComputerSystem WHERE Name = 'no-such-vm' AND CreationClassName = 'Msvm_ComputerSystem'"
    assert conn.ExecQuery("WQL", q) == []
    q = f"SELECT ElementName FROM Msvm_ComputerSystem WHERE Name = '{vm}' AND CreationClassName = 'Msvm_ComputerSystem' AND EnabledState = 2"
    assert conn.ExecQuery("WQL", q) == []  # the rest of the clause still applies
