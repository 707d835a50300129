"""pywbem 1.9.1 against a live `cosnap serve`: intrinsic operations, ExecQuery, errors,
HTTPS, and a strictness sweep over the exact bytes the server sent.

The objects are made with the CLI while the server runs (the two share the data
directory), so this also shows that a VM defined from the CLI is a Msvm_ComputerSystem
whose Name is the id the CLI printed.
"""

import http.client
import base64
import subprocess

import pytest
import pywbem
import pywbem_mock
from pywbem._tupleparse import TupleParser
from pywbem._tupletree import xml_to_tupletree_sax

from conftest import NS, PASSWORD, ROOT, SERVICES, USER, CosnapServer, service, serving

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serving(CosnapServer(tmp_path_factory.mktemp("cosnap"), https=True))


@pytest.fixture(scope="module")
def world(server):
    """Two VMs (qcow2 made by qemu-img, raw made by cosnap), a collection, a recovery snapshot."""
    disks = server.base / "disks"
    disks.mkdir()
    q = disks / "a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(q), "16M"], check=True)
    r = disks / "b.raw"
    server.cli("disk", "create", r, "--format", "raw", "--size", "16M")
    vm_a = server.cli("vm", "define", "--name", "alpha", "--disk", q).stdout.strip()
    vm_b = server.cli("vm", "define", "--name", "beta", "--disk", r, "--cpus", "2").stdout.strip()
    coll = server.cli("collection", "define", "group-1").stdout.strip()
    server.cli("collection", "add-member", coll, vm_a)
    server.cli("collection", "add-member", coll, vm_b)
    snap = server.cli("snapshot", "create", coll, "--type", "recovery").stdout.strip()
    return {"vms": {vm_a: "alpha", vm_b: "beta"}, "collection": coll, "snapshot": snap}


def vm_path(vm_id):
    return pywbem.CIMInstanceName("Msvm_ComputerSystem", {"CreationClassName": "Msvm_ComputerSystem", "Name": vm_id}, namespace=NS)


def find(conn, cls, **match):
    out = [i for i in conn.EnumerateInstances(cls) if all(i[k] == v for k, v in match.items())]
    assert len(out) == 1, (cls, match, out)
    return out[0]


def test_services_are_enumerable_and_gettable(conn):
    for cls in SERVICES:
        p = service(conn, cls)
        assert p.classname == cls
        assert set(p.keybindings) == {"CreationClassName", "Name", "SystemCreationClassName", "SystemName"}
        inst = conn.GetInstance(p)
        assert inst.classname == cls
        assert inst["CreationClassName"] == cls


def test_cli_vm_is_a_computer_system(conn, world):
    names = {p["Name"] for p in conn.EnumerateInstanceNames("Msvm_ComputerSystem")}
    assert set(world["vms"]) <= names
    for vm_id, name in world["vms"].items():
        inst = conn.GetInstance(vm_path(vm_id))
        assert inst["Name"] == vm_id
        assert inst["ElementName"] == name


def test_get_class_has_methods_parameters_and_qualifiers(conn):
    c = conn.GetClass("Msvm_CollectionSnapshotService", LocalOnly=False, IncludeQualifiers=True)
    assert c.superclass == "CIM_Service"
    for m in ["CreateSnapshot", "ApplySnapshot", "DestroySnapshot", "ConvertToReferencePoint", "ExportSnapshot"]:
        assert m in c.methods and c.methods[m].return_type == "uint32"
    ex = c.methods["ExportSnapshot"].parameters
    assert ex["SnapshotCollection"].type == "reference"
    assert ex["SnapshotCollection"].reference_class == "CIM_Collection"
    assert ex["ExportDirectory"].type == "string"
    assert ex["ExportSettingData"].qualifiers["EmbeddedInstance"].value == "Msvm_CollectionSnapshotExportSettingData"
    assert ex["Job"].qualifiers["Out"].value is True
    # LocalOnly=True (the DSP0200 default) leaves out what CIM_Service declares.
    local = conn.GetClass("Msvm_CollectionSnapshotService")
    assert "Name" not in local.properties and "ExportSnapshot" in local.methods


def test_every_served_class_equals_the_mof_compiled_by_pywbem(conn):
    """The MOF compiled by pywbem's own compiler is the oracle for GetClass."""
    mock = pywbem_mock.FakedWBEMConnection(default_namespace=NS)
    mock.compile_mof_file(str(ROOT / "schema" / "cosnap.mof"), namespace=NS)
    served = sorted(conn.EnumerateClassNames(DeepInheritance=True))
    assert served == sorted(mock.EnumerateClassNames(DeepInheritance=True))
    for name in served:
        kw = dict(LocalOnly=False, IncludeQualifiers=True, IncludeClassOrigin=True)
        got = conn.GetClass(name, **kw)
        # Normalise the mock's class through CIM-XML, as a client receives it from a server
        # (flavor attributes left out parse as their DSP0201 defaults).
        want = TupleParser().parse_any(xml_to_tupletree_sax(mock.GetClass(name, **kw).tocimxmlstr(), "mock"))
        got.path = want.path = None  # host:port differ by design
        assert got == want, name


def test_enumerate_classes_tree(conn):
    top = set(conn.EnumerateClassNames())
    assert "CIM_ManagedElement" in top and "Msvm_ConcreteJob" not in top
    assert conn.EnumerateClassNames(ClassName="CIM_ConcreteJob") == ["Msvm_ConcreteJob"]
    deep = set(conn.EnumerateClassNames(ClassName="CIM_Job", DeepInheritance=True))
    assert {"CIM_ConcreteJob", "Msvm_ConcreteJob"} <= deep
    classes = conn.EnumerateClasses(ClassName="CIM_Service", DeepInheritance=True, LocalOnly=False)
    assert {c.classname for c in classes} >= set(SERVICES)


def test_enumerate_instances_match_names_and_get_instance(conn, world):
    for cls in ["Msvm_ComputerSystem", "Msvm_VirtualSystemCollection", "Msvm_SnapshotCollection",
                "Msvm_VirtualSystemSettingData", "Msvm_StorageAllocationSettingData"]:
        insts = conn.EnumerateInstances(cls)
        names = conn.EnumerateInstanceNames(cls)
        assert insts, cls
        assert sorted(str(i.path) for i in insts) == sorted(str(n) for n in names), cls
        for i in insts:
            got = conn.GetInstance(i.path)
            assert got.properties == i.properties, cls
    # PropertyList is honoured.
    inst = conn.GetInstance(vm_path(next(iter(world["vms"]))), PropertyList=["ElementName"])
    assert list(inst.properties) == ["ElementName"]


def test_namespace_spellings(server, world):
    for ns in ["root/virtualization/v2", "ROOT/Virtualization/V2", "root\\virtualization\\v2"]:
        c = server.conn()
        assert len(c.EnumerateInstanceNames("Msvm_CollectionSnapshotService", namespace=ns)) == 1, ns


def test_associators_and_references(conn, world):
    coll = find(conn, "Msvm_VirtualSystemCollection", ElementName="group-1").path
    snaps = conn.Associators(coll, AssocClass="Msvm_SnapshotOfVirtualSystemCollection")
    assert [s.classname for s in snaps] == ["Msvm_SnapshotCollection"]
    assert snaps[0].path.keybindings["CollectionID"] == world["snapshot"] or world["snapshot"] in str(snaps[0].path)
    names = conn.AssociatorNames(coll, AssocClass="Msvm_SnapshotOfVirtualSystemCollection")
    assert [str(n) for n in names] == [str(s.path) for s in snaps]
    members = conn.Associators(coll, AssocClass="Msvm_CollectedVirtualSystems", ResultClass="Msvm_ComputerSystem")
    assert {m["Name"] for m in members} == set(world["vms"])
    refs = conn.References(coll, ResultClass="Msvm_SnapshotOfVirtualSystemCollection")
    assert len(refs) == 1 and refs[0].classname == "Msvm_SnapshotOfVirtualSystemCollection"
    ref_values = [v for v in refs[0].properties.values() if v.type == "reference"]
    assert len(ref_values) == 2
    assert any(v.value.classname == "Msvm_SnapshotCollection" for v in ref_values)
    rnames = conn.ReferenceNames(coll, ResultClass="Msvm_SnapshotOfVirtualSystemCollection")
    assert [str(n) for n in rnames] == [str(r.path) for r in refs]
    # From the other end: the snapshot collection's members are the per-VM snapshots.
    collected = conn.AssociatorNames(snaps[0].path, AssocClass="Msvm_CollectedSnapshots")
    assert len(collected) == 2


def test_exec_query(conn, world):
    a, b = list(world["vms"])
    got = conn.ExecQuery("WQL", f"SELECT * FROM Msvm_ComputerSystem WHERE Name = '{a}'")
    assert [i["Name"] for i in got] == [a]
    assert got[0].path.keybindings["Name"] == a
    got = conn.ExecQuery("WQL", f"select Name from Msvm_ComputerSystem where (Name = '{a}' OR Name = \"{b}\") and ElementName <> 'alpha'")
    assert [i["Name"] for i in got] == [b]
    assert list(got[0].properties) == ["Name"]
    assert conn.ExecQuery("WQL", "SELECT * FROM Msvm_SnapshotCollection WHERE ElementName = 'no such thing'") == []
    jobs = conn.ExecQuery("WQL", "SELECT * FROM Msvm_ConcreteJob WHERE JobState = 7 AND Cancellable = FALSE OR JobState = 7")
    assert all(j["JobState"] == 7 for j in jobs)
    with pytest.raises(pywbem.CIMError) as e:
        conn.ExecQuery("CQL", "SELECT * FROM Msvm_ComputerSystem")
    assert e.value.status_code == 14
    for bad in ["SELECT * FROM", "SELECT * FROM Msvm_ComputerSystem WHERE (Name = 'x'", "DROP TABLE jobs",
                "SELECT * FROM Msvm_ComputerSystem WHERE NoSuchProperty = 1"]:
        with pytest.raises(pywbem.CIMError) as e:
            conn.ExecQuery("WQL", bad)
        assert e.value.status_code == 15, bad
    with pytest.raises(pywbem.CIMError) as e:
        conn.ExecQuery("WQL", "SELECT * FROM Msvm_NoSuchClass")
    assert e.value.status_code == 5


def test_cim_errors(server, conn, world):
    svc = service(conn, "Msvm_CollectionSnapshotService")

    def code(fn, *a, **kw):
        with pytest.raises(pywbem.CIMError) as e:
            fn(*a, **kw)
        return e.value.status_code

    assert code(conn.EnumerateInstanceNames, "Msvm_ComputerSystem", namespace="root/cimv2") == 3
    assert code(conn.InvokeMethod, "Frobnicate", svc) == 17
    assert code(conn.GetClass, "Msvm_NoSuchClass") == 6
    assert code(conn.EnumerateInstances, "Msvm_NoSuchClass") == 5
    missing_job = pywbem.CIMInstanceName("Msvm_ConcreteJob", {"InstanceID": "00000000-0000-0000-0000-000000000000"}, namespace=NS)
    assert code(conn.GetInstance, missing_job) == 6
    # A parameter of the wrong type and an unknown parameter are CIM errors 4 …
    coll = find(conn, "Msvm_VirtualSystemCollection", ElementName="group-1").path
    assert code(conn.InvokeMethod, "CreateSnapshot", svc, [("Collection", coll), ("SnapshotType", "recovery")]) == 4
    assert code(conn.InvokeMethod, "CreateSnapshot", svc, [("Collection", coll), ("NoSuchParam", "x")]) == 4
    # … but a method that runs and refuses returns its code: a REF of the wrong class is 4.
    rv, out = conn.InvokeMethod("ExportSnapshot", svc, [
        ("SnapshotCollection", vm_path(next(iter(world["vms"])))),
        ("ExportDirectory", str(server.export_root))])
    assert rv == 4 and "Job" not in out
    # OpenQueryInstances is not supported, so pywbem's IterQueryInstances falls back.
    assert code(conn.OpenQueryInstances, "WQL", "SELECT * FROM Msvm_ComputerSystem") == 7


def test_authentication(server):
    for creds in [(USER, "wrong"), ("nobody", PASSWORD), None]:
        with pytest.raises(pywbem.AuthError):
            server.conn(creds=creds).EnumerateInstanceNames("Msvm_ConcreteJob")


def test_https_with_generated_certificate(server, monkeypatch):
    # requests lets these variables override the session's CA file (pywbem's ca_certs).
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    url = f"https://127.0.0.1:{server.https_port}"
    c = server.conn(url=url, no_verification=True)
    assert len(c.EnumerateInstanceNames("Msvm_CollectionSnapshotService")) == 1
    cert = server.data / "tls" / "cert.pem"
    assert cert.exists()
    c = server.conn(url=url, ca_certs=str(cert))
    assert len(c.EnumerateInstanceNames("Msvm_VirtualSystemManagementService")) == 1
    with pytest.raises(pywbem.AuthError):
        server.conn(url=url, creds=(USER, "bad"), no_verification=True).EnumerateInstanceNames("Msvm_ConcreteJob")


def _reparse(raw):
    """Strict re-parse of a reply with pywbem's own parser; returns the tuple tree."""
    tree = xml_to_tupletree_sax(raw, "CIM-XML response")
    return TupleParser().parse_cim(tree)


def test_strictness_sweep(conn, world):
    """Every operation's reply, re-parsed strictly: NAME echoes the method, the MESSAGE ID
    echoes the request's, RETURNVALUE carries PARAMTYPE."""
    import re
    coll = find(conn, "Msvm_VirtualSystemCollection", ElementName="group-1").path
    svc = service(conn, "Msvm_CollectionSnapshotService")
    vm = vm_path(next(iter(world["vms"])))
    calls = [
        ("EnumerateInstanceNames", lambda: conn.EnumerateInstanceNames("Msvm_ComputerSystem")),
        ("EnumerateInstances", lambda: conn.EnumerateInstances("Msvm_ConcreteJob")),
        ("GetInstance", lambda: conn.GetInstance(vm)),
        ("GetClass", lambda: conn.GetClass("Msvm_ConcreteJob", LocalOnly=False)),
        ("EnumerateClasses", lambda: conn.EnumerateClasses(DeepInheritance=True)),
        ("EnumerateClassNames", lambda: conn.EnumerateClassNames(DeepInheritance=True)),
        ("Associators", lambda: conn.Associators(coll, AssocClass="Msvm_SnapshotOfVirtualSystemCollection")),
        ("AssociatorNames", lambda: conn.AssociatorNames(coll)),
        ("References", lambda: conn.References(coll)),
        ("ReferenceNames", lambda: conn.ReferenceNames(coll)),
        ("ExecQuery", lambda: conn.ExecQuery("WQL", "SELECT * FROM Msvm_VirtualSystemSettingData")),
        ("RequestStateChange", lambda: conn.InvokeMethod("RequestStateChange", svc, [("RequestedState", pywbem.Uint16(2))])),
        ("ExportSnapshot", lambda: conn.InvokeMethod("ExportSnapshot", svc, [("SnapshotCollection", vm), ("ExportDirectory", "relative")])),
    ]
    for name, call in calls:
        try:
            call()
        except pywbem.CIMError:
            pass  # error replies are swept too
        raw, req = conn.last_raw_reply, conn.last_raw_request
        raw = raw.decode() if isinstance(raw, bytes) else raw
        req = req.decode() if isinstance(req, bytes) else req
        _reparse(raw)
        m = re.search(r'<(I?METHODRESPONSE) NAME="([^"]*)"', raw)
        assert m and m.group(2) == name, (name, raw[:300])
        assert re.search(r'<MESSAGE ID="([^"]*)"', raw).group(1) == re.search(r'<MESSAGE ID="([^"]*)"', req).group(1)
        for rv in re.findall(r"<RETURNVALUE[^>]*>", raw):
            assert 'PARAMTYPE="' in rv, rv


def test_http_envelope(server):
    """Headers of a 200 reply, and the DSP0200 answers to broken requests."""
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    body = ('<?xml version="1.0" encoding="utf-8" ?><CIM CIMVERSION="2.0" DTDVERSION="2.0"><MESSAGE ID="77" PROTOCOLVERSION="1.0">'
            '<SIMPLEREQ><IMETHODCALL NAME="EnumerateInstanceNames"><LOCALNAMESPACEPATH><NAMESPACE NAME="root"/>'
            '<NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH><IPARAMVALUE NAME="ClassName">'
            '<CLASSNAME NAME="Msvm_CollectionSnapshotService"/></IPARAMVALUE></IMETHODCALL></SIMPLEREQ></MESSAGE></CIM>')
    headers = {"Content-Type": 'application/xml; charset="utf-8"', "cimoperation": "MethodCall",
               "CIMMETHOD": "EnumerateInstanceNames", "CIMObject": "root%2Fvirtualization%2Fv2", "Authorization": auth}

    def post(h, b=body, path="/cimom", method="POST"):
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        c.request(method, path, body=b.encode() if isinstance(b, str) else b, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r, data

    r, data = post(headers)
    assert r.status == 200
    assert r.getheader("Content-Type").startswith("application/xml")
    assert r.getheader("CIMOperation") == "MethodResponse"
    assert int(r.getheader("Content-Length")) == len(data)
    assert b'<MESSAGE ID="77" PROTOCOLVERSION="1.0">' in data
    _reparse(data.decode())

    r, _ = post({k: v for k, v in headers.items() if k != "Authorization"})
    assert r.status == 401 and r.getheader("WWW-Authenticate") == 'Basic realm="cosnap"'
    r, _ = post({k: v for k, v in headers.items() if k != "cimoperation"})
    assert r.status == 400 and r.getheader("CIMError") == "header-mismatch"
    r, _ = post(dict(headers, CIMMETHOD="GetInstance"))
    assert r.status == 400 and r.getheader("CIMError") == "header-mismatch"
    r, _ = post(headers, body[:-20])
    assert r.status == 400 and r.getheader("CIMError") == "request-not-well-formed"
    r, _ = post(headers, body.replace('CIMVERSION="2.0"', 'CIMVERSION="3.0"'))
    assert r.status == 400 and r.getheader("CIMError") == "unsupported-cim-version"
    r, _ = post(dict(headers, **{"Content-Type": "text/plain"}))
    assert r.status == 406 and r.getheader("CIMError") == "header-mismatch"
    r, _ = post(headers, path="/other")
    assert r.status == 404
    r, _ = post(headers, method="PUT")
    assert r.status == 405
