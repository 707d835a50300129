"""Every WS-Man fault of issue 11, checked on the wire and through the real clients.

On the wire (a raw HTTP client, so nothing is hidden): HTTP status, the SOAP subcode (resolved
to its namespace, not compared as a prefix), WinRM's `WSManFault/@Code`, and `wsa:RelatesTo`
echoing the request's MessageID verbatim — `uuid:` form and wsl's bare form. Through the
clients: what pypsrp, pywinrm, python-dracclient and wsl make of the same faults and of bad
credentials (401).
"""

import re
import time
import uuid

import pytest
import winrm.exceptions
from dracclient import exceptions as drac_exc
from dracclient import wsman as drac
from pypsrp.exceptions import AuthenticationError, WSManFaultError

from conftest import PASSWORD, USER, CosnapServer, Raw, serving
from wsman_clients import Psrp, Winrm, Wsl, context_of
from wsman_wire import (ACTION_NOT_SUPPORTED, ANON, CANNOT_PROCESS_FILTER, DESTINATION_UNREACHABLE, ENCODING_LIMIT,
                        ENUM_ACTION, FAULT_ACTIONS, INVALID_ENUMERATION_CONTEXT, INVALID_PARAMETER, INVALID_SELECTORS,
                        MESSAGE_INFO_HEADER_REQUIRED, S, SOAP_CT, TIMED_OUT, TRANSFER, UNSUPPORTED_FEATURE, WSMAN, Epr, basic, Fault, enumerate_body, envelope, pull_body, q,
                        release_body, response_root, uri, wql_filter)

OTHER_USER, OTHER_PASSWORD = "other", "other-pass-2"
WSL_USER, WSL_PASSWORD = "wsl", "wsl-pass-1"
CSS = "Msvm_CollectionSnapshotService"
GET = f"{TRANSFER}/Get"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = CosnapServer(tmp_path_factory.mktemp("cosnap"))
    s.cli("user", "add", OTHER_USER, "--password-stdin", input=OTHER_PASSWORD + "\n")
    s.cli("user", "add", WSL_USER, "--password-stdin", input=WSL_PASSWORD + "\n")
    s.big_collection = s.cli("collection", "define", "n" * 9000).stdout.strip()  # a 9 kB instance
    yield from serving(s)


@pytest.fixture(scope="module")
def wire(server):
    return Wire(server.port)


@pytest.fixture(scope="module")
def css(server):
    """The snapshot service's EPR, as pypsrp enumerates it."""
    found = Psrp(server.port, USER, PASSWORD).enumerate(uri(CSS), mode="EnumerateEPR")
    assert len(found) == 1
    return found[0][1]


class Wire:
    """Raw POSTs to /wsman; answers parsed as success envelopes or faults."""

    def __init__(self, port):
        self.raw = Raw(port)

    def post(self, text, auth=basic(USER, PASSWORD), content_type=SOAP_CT, encoding="utf-8"):
        headers = {"Authorization": auth} if auth else {}
        if content_type:
            headers["Content-Type"] = content_type
        return self.raw.send(text.encode(encoding), headers, path="/wsman")

    def ok(self, text, **kw):
        status, hdrs, payload = self.post(text, **kw)
        assert status == 200, (status, payload[:800])
        assert hdrs.get("content-type", "").lower().startswith("application/soap+xml"), hdrs
        return response_root(payload)

    def fault(self, text, subcode, code=None, message_id=None, **kw):
        """Sends `text` and checks the fault: HTTP 500, the subcode, WSManFault/@Code and RelatesTo."""
        status, hdrs, payload = self.post(text, **kw)
        assert status == 500, (status, payload[:800])
        assert hdrs.get("content-type", "").lower().startswith("application/soap+xml"), hdrs
        f = Fault(status, payload)
        assert f.action in FAULT_ACTIONS, f.action
        assert f.subcode == subcode, (f, payload[:1200])
        if code is not None:
            assert f.wsman_code == code, (f, payload[:1200])
        assert f.reason, f
        if message_id is not None:
            assert f.relates_to == message_id, (f.relates_to, message_id)
        return f


def mid():
    return f"uuid:{str(uuid.uuid4()).upper()}"


# -- on the wire ----------------------------------------------------------------------------

def test_identify(wire, server):
    ident = ('<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
             'xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd">'
             '<s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>')
    root = wire.ok(ident)
    resp = root.find(f"{q(S, 'Body')}/{{http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd}}IdentifyResponse")
    assert resp is not None
    assert resp.findtext("{http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd}ProtocolVersion").strip() \
        == "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
    # wsl's wslid sends the same request (no Action, no MessageID) over curl.
    wsl = Wsl(server.port, WSL_USER, WSL_PASSWORD, server.base / "wslid")
    r, out = wsl.run("wslid", "x")
    assert "IdentifyResponse" in (out / "response.xml").read_text()


def test_selector_faults(wire, css):
    m = mid()
    wire.fault(envelope(GET, css.resource_uri, selectors={"Name": css.key("Name")}, message_id=m),
               INVALID_SELECTORS, 2150858842, m)
    m = mid()
    wire.fault(envelope(GET, css.resource_uri, selectors=dict(css.selectors, Bogus="1"), message_id=m),
               INVALID_SELECTORS, 2150858843, m)
    m = "0e1c1f3a-0b7d-4bb0-9d8f-0a4f3b4f2d10"  # wsl's bare-UUID MessageID, echoed verbatim
    wire.fault(envelope(GET, css.resource_uri, selectors={}, message_id=m), INVALID_SELECTORS, message_id=m)
    # Well-formed keys of nothing that exists.
    m = mid()
    wire.fault(envelope(GET, uri("Msvm_ConcreteJob"), selectors={"InstanceID": "no-such-job"}, message_id=m),
               DESTINATION_UNREACHABLE, 0x80041002, m)


def test_selector_names_are_case_insensitive(wire, css):
    sels = {k.upper(): v for k, v in css.selectors.items()}
    wire.ok(envelope(GET, css.resource_uri, selectors=sels))


def test_resource_uri_faults(wire):
    # A URI cosnap does not serve: WinRM's "resource URI is not valid".
    for bad in ["http://example.invalid/wsman/Thing",
                "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Service"]:
        m = mid()
        wire.fault(envelope(GET, bad, selectors={"Name": "x"}, message_id=m), DESTINATION_UNREACHABLE, 2150858811, m)
    # A class the namespace lacks: WMI's "invalid class" HRESULT, as WinRM passes it on.
    m = mid()
    wire.fault(envelope(GET, uri("Msvm_NoSuchClass"), selectors={"Name": "x"}, message_id=m),
               DESTINATION_UNREACHABLE, 0x80041010, m)


def test_action_faults(wire, css):
    m = mid()
    wire.fault(envelope(f"{TRANSFER}/Frobnicate", css.resource_uri, selectors=css.selectors, message_id=m),
               ACTION_NOT_SUPPORTED, 2150858771, m)
    m = mid()
    wire.fault(envelope(f"{css.resource_uri}/NoSuchMethod", css.resource_uri,
                        f'<p:NoSuchMethod_INPUT xmlns:p="{css.resource_uri}"/>', selectors=css.selectors, message_id=m),
               ACTION_NOT_SUPPORTED, 0x80041030, m)  # WMI's "method not found", as WinRM passes it on
    # WS-Transfer Put / Create / Delete: cosnap's model is changed through methods only.
    inst = f'<p:{CSS} xmlns:p="{css.resource_uri}"><p:ElementName>x</p:ElementName></p:{CSS}>'
    for verb, body in [("Put", inst), ("Create", inst), ("Delete", ""), ("../enumeration/Renew", "")]:
        m = mid()
        wire.fault(envelope(f"{TRANSFER}/{verb}", css.resource_uri, body, selectors=css.selectors, message_id=m),
                   ACTION_NOT_SUPPORTED, 2150858771, m)


def test_encoding_limit(wire, server, css):
    m = mid()
    wire.fault(envelope(GET, css.resource_uri, selectors=css.selectors, message_id=m, max_envelope_size=1024),
               ENCODING_LIMIT, 2150858823, m)
    # The minimum itself is fine.
    wire.ok(envelope(GET, css.resource_uri, selectors=css.selectors, max_envelope_size=8192))
    # An instance that cannot fit in the envelope the client accepts: refused whole, in a Get and
    # in an optimized enumeration (never cut, never sent over the limit).
    big = {"CollectionID": server.big_collection}
    m = mid()
    wire.fault(envelope(GET, uri("Msvm_VirtualSystemCollection"), selectors=big, message_id=m, max_envelope_size=8192),
               ENCODING_LIMIT, 2150858824, m)
    wire.ok(envelope(GET, uri("Msvm_VirtualSystemCollection"), selectors=big, max_envelope_size=65536))
    m = mid()
    wire.fault(envelope(f"{ENUM_ACTION}/Enumerate", uri("Msvm_VirtualSystemCollection"), enumerate_body(optimize=10),
                        message_id=m, max_envelope_size=8192), ENCODING_LIMIT, 2150858824, m)


def test_filter_faults(wire):
    cases = [
        (uri("*"), '<wsman:Filter Dialect="http://example.invalid/dialect">x</wsman:Filter>', 2150858778),
        (uri(CSS), wql_filter(f"SELECT * FROM {CSS}"), 2150859003),  # WQL belongs on the `*` URI
        (uri("*"), wql_filter("SELECT FROM WHERE (("), 2150858778),
        (uri("*"), wql_filter("DELETE FROM Msvm_ConcreteJob"), 2150858778),
    ]
    for resource, flt, code in cases:
        m = mid()
        wire.fault(envelope(f"{ENUM_ACTION}/Enumerate", resource, enumerate_body(filter_xml=flt), message_id=m),
                   CANNOT_PROCESS_FILTER, code, m)
    # The all-classes URI needs a filter.
    m = mid()
    wire.fault(envelope(f"{ENUM_ACTION}/Enumerate", uri("*"), enumerate_body(), message_id=m),
               DESTINATION_UNREACHABLE, 2150858811, m)


def test_enumeration_mode_fault(wire):
    m = mid()
    f = wire.fault(envelope(f"{ENUM_ACTION}/Enumerate", uri(CSS), enumerate_body(mode="EnumerateEverything"), message_id=m),
                   UNSUPPORTED_FEATURE, 2150858886, m)
    assert fault_detail(f) == "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/EnumerationMode"


def test_timed_out(wire, server, css):
    """OperationTimeout PT0S: the deadline passes before the operation's work is done; an
    Invoke is refused before the method runs (no side effect)."""
    m = mid()
    wire.fault(envelope(f"{ENUM_ACTION}/Enumerate", uri(CSS), enumerate_body(), message_id=m, operation_timeout="PT0S"),
               TIMED_OUT, 2150858793, m)
    cms = Psrp(server.port, USER, PASSWORD).enumerate(uri("Msvm_CollectionManagementService"), mode="EnumerateEPR")[0][1]
    body = (f'<p:DefineCollection_INPUT xmlns:p="{cms.resource_uri}"><p:Name>timed-out</p:Name><p:Type>0</p:Type>'
            f'</p:DefineCollection_INPUT>')
    m = mid()
    wire.fault(envelope(f"{cms.resource_uri}/DefineCollection", cms.resource_uri, body, selectors=cms.selectors,
                        message_id=m, operation_timeout="PT0S"), TIMED_OUT, 2150858793, m)
    found = Psrp(server.port, USER, PASSWORD).enumerate(
        uri("*"), filter_el=_wql_el("SELECT * FROM Msvm_VirtualSystemCollection WHERE ElementName = 'timed-out'"))
    assert found == [], found


def _wql_el(query):
    import xml.etree.ElementTree as ET
    f = ET.Element(q(WSMAN, "Filter"), Dialect="http://schemas.microsoft.com/wbem/wsman/1/WQL")
    f.text = query
    return f


def fault_detail(f):
    return (f.detail.findtext(q(WSMAN, "FaultDetail")) or "").strip()


def test_enumeration_contexts(wire):
    """Pull and Release of unknown, released and other users' contexts; the per-user bound."""
    def open_context(auth=basic(USER, PASSWORD)):
        root = wire.ok(envelope(f"{ENUM_ACTION}/Enumerate", uri(CSS), enumerate_body()), auth=auth)
        ctx = context_of(root.find(q(S, "Body")))
        assert ctx
        return ctx

    for action, body in [("Pull", pull_body("uuid:00000000-0000-0000-0000-000000000000")),
                         ("Release", release_body("no-such-context"))]:
        m = mid()
        wire.fault(envelope(f"{ENUM_ACTION}/{action}", uri(CSS), body, message_id=m),
                   INVALID_ENUMERATION_CONTEXT, 2150858779, m)

    ctx = open_context()
    m = mid()
    wire.fault(envelope(f"{ENUM_ACTION}/Pull", uri(CSS), pull_body(ctx), message_id=m),
               INVALID_ENUMERATION_CONTEXT, message_id=m, auth=basic(OTHER_USER, OTHER_PASSWORD))
    root = wire.ok(envelope(f"{ENUM_ACTION}/Release", uri(CSS), release_body(ctx)))
    assert root.find(f"{q(S, 'Header')}/{{http://schemas.xmlsoap.org/ws/2004/08/addressing}}Action").text.strip() \
        == f"{ENUM_ACTION}/ReleaseResponse"
    m = mid()
    wire.fault(envelope(f"{ENUM_ACTION}/Pull", uri(CSS), pull_body(ctx), message_id=m),
               INVALID_ENUMERATION_CONTEXT, message_id=m)

    # One user cannot hold more than a bounded number of contexts; releasing frees them.
    held = []
    for _ in range(200):
        status, _, payload = wire.post(envelope(f"{ENUM_ACTION}/Enumerate", uri(CSS), enumerate_body()),
                                       auth=basic(OTHER_USER, OTHER_PASSWORD))
        if status != 200:
            f = Fault(status, payload)
            assert f.subcode == q(WSMAN, "QuotaLimit") and f.wsman_code == 2150859175, f
            break
        held.append(context_of(response_root(payload).find(q(S, "Body"))))
    else:
        raise AssertionError("200 open enumeration contexts for one user: no bound")
    assert held, "the first context was refused"
    open_context()  # another user is not affected
    for ctx in held:
        wire.ok(envelope(f"{ENUM_ACTION}/Release", uri(CSS), release_body(ctx)), auth=basic(OTHER_USER, OTHER_PASSWORD))
    open_context(basic(OTHER_USER, OTHER_PASSWORD))


def test_header_faults(wire, css):
    m = mid()
    unknown = '<x:Frob xmlns:x="urn:example:frob" s:mustUnderstand="true">1</x:Frob>'
    wire.fault(envelope(GET, css.resource_uri, selectors=css.selectors, message_id=m, extra_headers=unknown),
               UNSUPPORTED_FEATURE, 2150858817, m)
    # The same header without mustUnderstand is ignored, as is pywinrm's unqualified attribute.
    wire.ok(envelope(GET, css.resource_uri, selectors=css.selectors, extra_headers=unknown.replace(' s:mustUnderstand="true"', "")))
    wire.ok(envelope(GET, css.resource_uri, selectors=css.selectors,
                     extra_headers=unknown.replace("s:mustUnderstand", "mustUnderstand")))
    # Replies go back on the same connection only.
    m = mid()
    text = envelope(GET, css.resource_uri, selectors=css.selectors, message_id=m).replace(
        f"<wsa:Address s:mustUnderstand=\"true\">{ANON}</wsa:Address>", "<wsa:Address>http://attacker.invalid/</wsa:Address>")
    f = wire.fault(text, UNSUPPORTED_FEATURE, 2150858817, m)
    assert fault_detail(f) == "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/AddressingMode"
    # No ReplyTo at all is accepted (WinRM clients always send it; nothing to reply elsewhere).
    wire.ok(envelope(GET, css.resource_uri, selectors=css.selectors, reply_to=False))
    # Action and MessageID are required (everywhere but Identify).
    m = mid()
    no_action = re.sub(r"<wsa:Action[^>]*>[^<]*</wsa:Action>", "", envelope(GET, css.resource_uri, selectors=css.selectors, message_id=m))
    wire.fault(no_action, MESSAGE_INFO_HEADER_REQUIRED, 2150858817, m)
    no_id = re.sub(r"<wsa:MessageID>[^<]*</wsa:MessageID>", "", envelope(GET, css.resource_uri, selectors=css.selectors))
    f = wire.fault(no_id, MESSAGE_INFO_HEADER_REQUIRED, 2150858817)
    assert f.relates_to == ""


def test_content_types(wire, css):
    text = envelope(GET, css.resource_uri, selectors=css.selectors)
    for ct in [None, "application/soap+xml;charset=utf-8", "application/soap+xml", 'application/soap+xml; charset="UTF-8"']:
        wire.ok(text, content_type=ct)
    for ct in ["application/json", "application/soap+xml;charset=latin-1", "text/plain"]:
        status, _, _ = wire.post(text, content_type=ct)
        assert status == 415, (ct, status)


def test_invoke_parameter_faults(wire, css):
    """A parameter of the wrong type is refused before any job starts: a fault or a non-zero
    ReturnValue (never 0 or 4096)."""
    coll = Epr(uri("Msvm_VirtualSystemCollection"), {"CollectionID": "no-such-collection"})
    for bad in ["abc", "-1", "70000", "1.5", "", "0x10", "9" * 40]:
        body = (f'<p:CreateSnapshot_INPUT xmlns:p="{css.resource_uri}"><p:Collection>{coll.xml()}</p:Collection>'
                f'<p:SnapshotType>{bad}</p:SnapshotType></p:CreateSnapshot_INPUT>')
        m = mid()
        status, _, payload = wire.post(envelope(f"{css.resource_uri}/CreateSnapshot", css.resource_uri, body,
                                                selectors=css.selectors, message_id=m))
        if status == 500:
            f = Fault(status, payload)
            assert f.subcode == INVALID_PARAMETER and f.wsman_code == 0x80041008, f
            assert f.relates_to == m
        else:
            assert status == 200, (status, payload[:500])
            rv = response_root(payload).find(f".//{{{css.resource_uri}}}ReturnValue").text
            assert int(rv) not in (0, 4096), (bad, payload[:500])


def test_utf16_request(wire, css):
    """WinRM accepts UTF-16 bodies; cosnap does too (or refuses them with a fault, never garbage)."""
    text = envelope(GET, css.resource_uri, selectors=css.selectors)
    root = wire.ok(text, content_type="application/soap+xml;charset=UTF-16", encoding="utf-16")
    assert root.find(q(S, "Body"))[0].tag.endswith(f"}}{CSS}")


def test_bad_credentials_on_the_wire(wire, css):
    text = envelope(GET, css.resource_uri, selectors=css.selectors)
    for auth in [None, "Basic", "Basic !!!", "Bearer x", basic(USER, "wrong"), basic("nobody", "x")]:
        status, hdrs, _ = wire.post(text, auth=auth)
        assert status == 401, (auth, status)
        assert hdrs.get("www-authenticate") == 'Basic realm="cosnap"', hdrs


# -- through the clients --------------------------------------------------------------------

def test_pypsrp_sees_faults(server, css):
    psrp = Psrp(server.port, USER, PASSWORD)
    with pytest.raises(WSManFaultError) as e:
        psrp.get(Epr(css.resource_uri, dict(css.selectors, Bogus="1")))
    assert e.value.code == 2150858843 and e.value.reason
    with pytest.raises(WSManFaultError) as e:
        psrp.get(Epr(uri("Msvm_NoSuchClass"), {"Name": "x"}))
    assert e.value.code == 0x80041010  # WMI: invalid class
    with pytest.raises(AuthenticationError):
        Psrp(server.port, USER, "wrong").get(css)


def test_pywinrm_sees_faults(server, css):
    w = Winrm(server.port, USER, PASSWORD)
    with pytest.raises(winrm.exceptions.WSManFaultError) as e:
        w.get(Epr(css.resource_uri, dict(css.selectors, Bogus="1")))
    assert e.value.code == 500
    assert e.value.fault_subcode.endswith(":InvalidSelectors"), e.value.fault_subcode
    assert e.value.wsman_fault_code == 2150858843
    # A CIM-level failure carries MSFT_WmiError, whose error_Code pywinrm reads.
    with pytest.raises(winrm.exceptions.WSManFaultError) as e:
        w.get(Epr(uri("Msvm_ConcreteJob"), {"InstanceID": "no-such-job"}))
    assert e.value.fault_subcode.endswith(":DestinationUnreachable")
    assert e.value.wmierror_code == 0x80041002, e.value.wmierror_code
    with pytest.raises(winrm.exceptions.InvalidCredentialsError):
        Winrm(server.port, USER, "wrong").get(css)


def test_dracclient_sees_faults(server):
    c = drac.Client("127.0.0.1", USER, PASSWORD, port=server.port, protocol="http")
    with pytest.raises(drac_exc.WSManInvalidResponse) as e:
        c.enumerate(uri(CSS), filter_dialect="wql", filter_query=f"SELECT * FROM {CSS}")
    assert "500" in str(e.value)
    bad = drac.Client("127.0.0.1", USER, "wrong", port=server.port, protocol="http")
    with pytest.raises(drac_exc.WSManInvalidResponse) as e:
        bad.enumerate(uri("*"), filter_dialect="wql", filter_query=f"SELECT * FROM {CSS}")
    assert "401" in str(e.value)


def test_wsl_sees_faults(server, css):
    """wslget with a missing key: curl re-sends the request after the 500 (faults must be
    free of side effects), and the fault lands in wsl's response file."""
    wsl = Wsl(server.port, WSL_USER, WSL_PASSWORD, server.base / "wsl-faults")
    t0 = time.monotonic()
    r, out = wsl.run("wslget", css.resource_uri, f"Name={css.key('Name')}", check=False)
    assert r.returncode != 0
    f = Fault(500, (out / "response.xml").read_bytes())
    assert f.subcode == INVALID_SELECTORS, f
    assert time.monotonic() - t0 < 30
