"""Invoke parameter forms other clients than ours send (raw envelopes, since the four clients
here each send only one form): REF parameters wrapped in `wsa:EndpointReference` (Dell/OpenWSMAN
samples) as well as bare, embedded instances as CDATA (libvirt) as well as escaped text, arrays
as repeated elements, `xsi:nil` for a null parameter; and out parameters as they come back.
"""

import pytest
from pywbem import Uint64

from conftest import PASSWORD, USER, CosnapServer, Raw, serving
from wsman_clients import Psrp, parse_output
from wsman_wire import (ANON, S, SOAP_CT, WSA, WSMAN, XSI, Epr, basic, embedded, envelope, parse_epr, q,
                        response_root, uri)

CMS = "Msvm_CollectionManagementService"
VSMS = "Msvm_VirtualSystemManagementService"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = CosnapServer(tmp_path_factory.mktemp("cosnap"))
    imgs = [s.storage_root / f"{i}.qcow2" for i in range(3)]  # DefineSystem disks lie under a storage root
    for img in imgs:
        s.cli("disk", "create", img, "--format", "qcow2", "--size", "1M")
    s.vm_ids = [s.cli("vm", "define", "--name", f"inv{i}", "--disk", imgs[i]).stdout.strip() for i in range(2)]
    s.img = imgs[2]  # for DefineSystem
    s.coll_id = s.cli("collection", "define", "invoke-group").stdout.strip()
    yield from serving(s)


@pytest.fixture(scope="module")
def call(server):
    raw = Raw(server.port)
    psrp = Psrp(server.port, USER, PASSWORD)
    services = {c: psrp.enumerate(uri(c), mode="EnumerateEPR")[0][1] for c in (CMS, VSMS)}

    def invoke(cls, method, params_xml):
        svc = services[cls]
        body = f'<p:{method}_INPUT xmlns:p="{svc.resource_uri}" xmlns:xsi="{XSI}">{params_xml}</p:{method}_INPUT>'
        status, _, payload = raw.send(envelope(f"{svc.resource_uri}/{method}", svc.resource_uri, body,
                                               selectors=svc.selectors),
                                      {"Content-Type": SOAP_CT, "Authorization": basic(USER, PASSWORD)}, path="/wsman")
        assert status == 200, payload[:800]
        invoke.last = payload
        return parse_output(response_root(payload).find(q(S, "Body")), method)

    return invoke


def members(server):
    psrp = Psrp(server.port, USER, PASSWORD)
    coll = Epr(uri("Msvm_VirtualSystemCollection"), {"CollectionID": server.coll_id})
    return sorted(m.key("Name") for m in psrp.associators(coll, "Msvm_CollectedVirtualSystems", "Msvm_ComputerSystem"))


def vm(server, i):
    return Epr(uri("Msvm_ComputerSystem"), {"CreationClassName": "Msvm_ComputerSystem", "Name": server.vm_ids[i]})


def test_ref_parameters_bare_and_wrapped(server, call):
    coll = Epr(uri("Msvm_VirtualSystemCollection"), {"CollectionID": server.coll_id})
    wrapped = f"<wsa:EndpointReference xmlns:wsa=\"{WSA}\">{vm(server, 0).xml()}</wsa:EndpointReference>"
    rv, _ = call(CMS, "AddMember", f"<p:Member>{wrapped}</p:Member><p:Collection>{coll.xml()}</p:Collection>")
    assert rv == 0
    rv, _ = call(CMS, "AddMember", f"<p:Member>{vm(server, 1).xml()}</p:Member><p:Collection>{coll.xml()}</p:Collection>")
    assert rv == 0
    assert members(server) == sorted(server.vm_ids)
    rv, _ = call(CMS, "RemoveMember", f"<p:Member>{vm(server, 1).xml()}</p:Member><p:Collection>{coll.xml()}</p:Collection>")
    assert rv == 0
    assert members(server) == [server.vm_ids[0]]


def test_embedded_instances_cdata_and_arrays(server, call):
    vssd = embedded("Msvm_VirtualSystemSettingData", [("ElementName", "from-cdata")])
    rasd = [embedded("Msvm_ProcessorSettingData", [("VirtualQuantity", Uint64(1))]),
            embedded("Msvm_StorageAllocationSettingData", [("HostResource", [str(server.img)]), ("ImageFormat", "qcow2")])]
    params = (f"<p:SystemSettings><![CDATA[{vssd}]]></p:SystemSettings>"
              + "".join(f"<p:ResourceSettings><![CDATA[{r}]]></p:ResourceSettings>" for r in rasd)
              + '<p:ReferenceConfiguration xsi:nil="true"/>')
    rv, outs = call(VSMS, "DefineSystem", params)
    assert rv in (0, 4096), rv
    if rv == 0:
        system = parse_epr(outs["ResultingSystem"])
    else:
        job = parse_epr(outs["Job"])
        assert int(Psrp(server.port, USER, PASSWORD).wait_job(job)["JobState"]) == 7
        system = Psrp(server.port, USER, PASSWORD).associators(job, "Msvm_AffectedJobElement", "Msvm_ComputerSystem")[0]
    got = Psrp(server.port, USER, PASSWORD).get(system)
    assert got["ElementName"] == "from-cdata"
    shown = server.cli("vm", "show", got["Name"]).stdout
    assert str(server.img) in shown, shown


def test_out_reference_is_an_epr_with_wsa_wsman_prefixes(server, call):
    """REF out parameters come back as EPR children (wsa:Address + wsa:ReferenceParameters)
    under the wsa:/wsman: prefixes wsl pastes from one response into the next request."""
    rv, outs = call(CMS, "DefineCollection", "<p:Name>out-ref</p:Name><p:Type>0</p:Type>")
    assert rv in (0, 4096)
    ref = outs.get("DefinedCollection") if rv == 0 else outs["Job"]
    assert ref.findtext(q(WSA, "Address")).strip() == ANON
    rp = ref.find(q(WSA, "ReferenceParameters"))
    assert rp.find(q(WSMAN, "ResourceURI")) is not None
    assert b"<wsa:ReferenceParameters>" in call.last and b"<wsman:SelectorSet>" in call.last, call.last[:1500]


def test_modify_resource_settings_sets_com2_over_wsman(server, call):
    """ModifyResourceSettings as a WS-Man client sends it (CDATA embedded instance, an array of
    one): COM 2's Connection moves under a storage root and reads back with a pypsrp Get; a socket
    outside the roots is Access Denied and changes nothing."""
    vm_id = server.vm_ids[0]
    port_id = f"Microsoft:{vm_id}\\Com\\2"
    port = Epr(uri("Msvm_SerialPortSettingData"), {"InstanceID": port_id})

    def modify(socket):
        rasd = embedded("Msvm_SerialPortSettingData",
                        [("InstanceID", port_id), ("ElementName", "COM 2"), ("Connection", [str(socket)])])
        rv, _ = call(VSMS, "ModifyResourceSettings", f"<p:ResourceSettings><![CDATA[{rasd}]]></p:ResourceSettings>")
        return rv

    assert modify(server.storage_root / "wsman-com2.sock") == 0
    shown = Psrp(server.port, USER, PASSWORD).get(port)
    assert shown["ElementName"] == "COM 2"
    assert str(shown["Connection"]).endswith("wsman-com2.sock"), shown

    assert modify(server.base / "outside-com2.sock") == 32769
    assert str(Psrp(server.port, USER, PASSWORD).get(port)["Connection"]).endswith("wsman-com2.sock")
