"""Hostile input: well over 1,000 malformed or hostile requests against one `cosnap serve`.

Each request gets the answer DSP0200 asks for (400 + `CIMError: request-not-well-formed` /
`request-not-valid` / `header-mismatch` / `unsupported-…`, 401, 404, 405, 406, 413, 429, 501, or
HTTP 200 carrying a CIM `ERROR`/method return code for model-level faults), never a hang,
a reset or a crash. Afterwards the server still answers, its log shows no panic, and its
resident memory has stayed flat (VmRSS from /proc before and after the main run).
"""

import base64
import random
import re
import socket
import time

import pytest
import pywbem

from conftest import PASSWORD, USER, Raw, service

AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
NS_XML = '<LOCALNAMESPACEPATH><NAMESPACE NAME="root"/><NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH>'


def envelope(inner, msg_id="1001"):
    return (f'<?xml version="1.0" encoding="utf-8" ?><CIM CIMVERSION="2.0" DTDVERSION="2.0">'
            f'<MESSAGE ID="{msg_id}" PROTOCOLVERSION="1.0"><SIMPLEREQ>{inner}</SIMPLEREQ></MESSAGE></CIM>')


def imethod(name, params=""):
    return envelope(f'<IMETHODCALL NAME="{name}">{NS_XML}{params}</IMETHODCALL>')


def classname_param(cls):
    return f'<IPARAMVALUE NAME="ClassName"><CLASSNAME NAME="{cls}"/></IPARAMVALUE>'


def headers_for(method, obj="root/virtualization/v2", auth=AUTH, extra=None):
    h = {"Content-Type": 'application/xml; charset="utf-8"', "CIMOperation": "MethodCall",
         "CIMMethod": method, "CIMObject": obj}
    if auth:
        h["Authorization"] = auth
    h.update(extra or {})
    return h


def cim_error_code(payload):
    m = re.search(rb'<ERROR CODE="(\d+)"', payload)
    return int(m.group(1)) if m else None


def test_hostile_requests(server, conn, tmp_path):
    raw = Raw(server.port)
    rng = random.Random(20261125)
    counts = {"total": 0}
    outside = server.base / "outside-root"
    outside.mkdir()

    def expect(status_set, body, headers, cim_error_header=None, cim_code=None, **kw):
        t0 = time.monotonic()
        status, hdrs, payload = raw.send(body, headers, **kw)
        took = time.monotonic() - t0
        counts["total"] += 1
        assert status in status_set, (status, hdrs, payload[:300], body[:200] if isinstance(body, (str, bytes)) else None)
        assert took < 10, f"answer took {took:.1f}s"
        if cim_error_header:
            assert hdrs.get("cimerror") == cim_error_header, (hdrs, payload[:200])
        if cim_code is not None:
            assert cim_error_code(payload) == cim_code, payload[:400]
        return status, hdrs, payload

    good = imethod("EnumerateInstanceNames", classname_param("Msvm_ConcreteJob"))
    h_good = headers_for("EnumerateInstanceNames")
    expect({200}, good, h_good)

    def main_run():
        # 1. Truncated XML at 300 random places.
        for _ in range(400):
            cut = rng.randrange(1, len(good) - 1)
            expect({400}, good[:cut], h_good, "request-not-well-formed")
        # 2. Entity expansion and external entities: DTDs are refused outright, fast.
        laughs = '<?xml version="1.0"?><!DOCTYPE CIM [<!ENTITY a "aaaaaaaaaaaaaaaa">' + "".join(
            f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 16}">' for i in range(9)) + ']><CIM CIMVERSION="2.0" DTDVERSION="2.0">&j;</CIM>'
        xxe = '<?xml version="1.0"?><!DOCTYPE CIM [<!ENTITY x SYSTEM "file:///etc/passwd">]><CIM CIMVERSION="2.0" DTDVERSION="2.0">&x;</CIM>'
        for _ in range(50):
            expect({400}, laughs, h_good, "request-not-well-formed")
            expect({400}, xxe, h_good, "request-not-well-formed")
        # 3. Deep nesting (inside a valid envelope, and bare).
        for depth in [65, 100, 1000, 10_000, 100_000]:
            deep = "<a>" * depth + "</a>" * depth
            expect({400}, envelope(deep), h_good, "request-not-well-formed")
            expect({400}, deep, h_good, "request-not-well-formed")
        # 4. Too many attributes on one element.
        attrs = " ".join(f'a{i}="x"' for i in range(200))
        for _ in range(10):
            expect({400}, good.replace("<IMETHODCALL ", f"<IMETHODCALL {attrs} "), h_good, "request-not-well-formed")
        # 5. Well-formed but not CIM-XML, versions, MULTIREQ.
        for body, hdr in [
            ("<foo/>", "request-not-valid"),
            ('<CIM CIMVERSION="2.0" DTDVERSION="2.0"/>', "request-not-valid"),
            (envelope(""), "request-not-valid"),
            (envelope('<IMETHODCALL NAME="EnumerateInstanceNames"/>'), "request-not-valid"),
            (good.replace('CIMVERSION="2.0"', 'CIMVERSION="9.9"'), "unsupported-cim-version"),
            (good.replace('DTDVERSION="2.0"', 'DTDVERSION="1.1"'), "unsupported-dtd-version"),
            (good.replace('PROTOCOLVERSION="1.0"', 'PROTOCOLVERSION="2.0"'), "unsupported-protocol-version"),
        ]:
            for _ in range(10):
                expect({400}, body, h_good, hdr)
        multi = good.replace("<SIMPLEREQ>", "<MULTIREQ><SIMPLEREQ>").replace("</SIMPLEREQ>", "</SIMPLEREQ></MULTIREQ>")
        for _ in range(10):
            expect({501}, multi, h_good, "multiple-requests-unsupported")
        # 6. Garbage bytes, non-UTF-8, empty body.
        for _ in range(100):
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
            expect({400}, blob, h_good, "request-not-well-formed")
        expect({400}, b"", h_good, "request-not-well-formed")
        expect({400}, good.encode("utf-16"), h_good, "request-not-well-formed")
        # 7. Missing or wrong CIM headers.
        for drop in ["CIMOperation", "CIMMethod", "CIMObject"]:
            for _ in range(10):
                expect({400}, good, {k: v for k, v in h_good.items() if k != drop}, "header-mismatch")
        for _ in range(10):
            expect({400}, good, dict(h_good, CIMOperation="MethodResponse"), "header-mismatch")
            expect({400}, good, dict(h_good, CIMMethod="GetClass"), "header-mismatch")
            expect({400}, good, dict(h_good, CIMObject="root%2Fother"), "header-mismatch")
            expect({400}, good, dict(h_good, CIMProtocolVersion="2.0"), "unsupported-protocol-version")
            expect({406}, good, dict(h_good, **{"Content-Type": "application/json"}), "header-mismatch")
            expect({406}, good, dict(h_good, **{"Content-Type": "application/xml; charset=latin-1"}), "header-mismatch")
            expect({406}, good, dict(h_good, **{"Content-Encoding": "gzip"}), "header-mismatch")
            expect({404}, good, h_good, path="/")
            expect({404}, good, h_good, path="/cimom/../etc/passwd")
            expect({405}, good, h_good, method="GET")
        # 8. Huge bodies: declared too large (not sent), and actually sent.
        for _ in range(10):
            expect({413}, "", h_good, declared_length=1 << 40)
            expect({413}, "", h_good, declared_length=5 * 1024 * 1024)
        big = good.replace("</CIM>", "<!--" + "x" * (5 * 1024 * 1024) + "--></CIM>")
        for _ in range(5):
            expect({413}, big, h_good)
            expect({413}, big, h_good, chunked=True)
        expect({200}, good, h_good, chunked=True)
        # 9. Bad or missing credentials (each wrong password costs one slow hash; after ten
        #    from this source the server answers 429 + Retry-After without hashing).
        for auth in [None, "Basic", "Basic !!!", "Bearer x", "Basic " + base64.b64encode(b"nocolon").decode(),
                     "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode(),
                     "Basic " + base64.b64encode(b"nobody:x").decode(), "Basic " + "A" * 10000]:
            for _ in range(4):
                s, h, _ = expect({401, 400, 431, 429}, good, headers_for("EnumerateInstanceNames", auth=auth))
                if s == 401:
                    assert h.get("www-authenticate") == 'Basic realm="cosnap"'
                if s == 429:
                    assert int(h["retry-after"]) >= 1
        # 10. Model-level faults: HTTP 200 with the right CIM error.
        svc = service(conn, "Msvm_CollectionSnapshotService")
        svc_xml = "".join(f'<KEYBINDING NAME="{k}"><KEYVALUE VALUETYPE="string">{v}</KEYVALUE></KEYBINDING>' for k, v in svc.keybindings.items())
        target = f'<LOCALINSTANCEPATH>{NS_XML}<INSTANCENAME CLASSNAME="Msvm_CollectionSnapshotService">{svc_xml}</INSTANCENAME></LOCALINSTANCEPATH>'

        def call(method, params):
            return envelope(f'<METHODCALL NAME="{method}">{target}{params}</METHODCALL>')

        obj = "root/virtualization/v2:Msvm_CollectionSnapshotService"
        coll_ref = f'<VALUE.REFERENCE><INSTANCENAME CLASSNAME="Msvm_VirtualSystemCollection"><KEYBINDING NAME="CollectionID"><KEYVALUE VALUETYPE="string">X</KEYVALUE></KEYBINDING></INSTANCENAME></VALUE.REFERENCE>'
        for bad in ["abc", "-1", "70000", "1.5", "", "0x10", "9" * 40]:
            for _ in range(5):
                body = call("CreateSnapshot", f'<PARAMVALUE NAME="Collection">{coll_ref}</PARAMVALUE><PARAMVALUE NAME="SnapshotType"><VALUE>{bad}</VALUE></PARAMVALUE>')
                s, _, payload = expect({200}, body, headers_for("CreateSnapshot", obj))
                assert cim_error_code(payload) == 4 or b"RETURNVALUE" in payload, payload[:300]
        for _ in range(10):
            expect({200}, call("Nope", ""), headers_for("Nope", obj), cim_code=17)
            expect({200}, call("CreateSnapshot", '<PARAMVALUE NAME="Bogus"><VALUE>1</VALUE></PARAMVALUE>'), headers_for("CreateSnapshot", obj), cim_code=4)
            expect({200}, call("CreateSnapshot", '<PARAMVALUE NAME="SnapshotSettings" PARAMTYPE="string" EmbeddedObject="instance"><VALUE>&lt;INSTANCE</VALUE></PARAMVALUE>'), headers_for("CreateSnapshot", obj), cim_code=4)
            expect({200}, imethod("GetClass", classname_param("Nope")), headers_for("GetClass"), cim_code=6)
            expect({200}, imethod("EnumerateInstances", classname_param("Nope")), headers_for("EnumerateInstances"), cim_code=5)
            expect({200}, imethod("EnumerationCount", '<IPARAMVALUE NAME="EnumerationContext"><VALUE>x</VALUE></IPARAMVALUE>'), headers_for("EnumerationCount"), cim_code=7)
            expect({200}, imethod("FrobnicateEverything"), headers_for("FrobnicateEverything"), cim_code=7)
            expect({200}, imethod("EnumerateInstanceNames", classname_param("Msvm_ConcreteJob") + '<IPARAMVALUE NAME="Extra"><VALUE>1</VALUE></IPARAMVALUE>'), h_good, cim_code=4)
            expect({200}, imethod("ExecQuery", '<IPARAMVALUE NAME="QueryLanguage"><VALUE>WQL</VALUE></IPARAMVALUE><IPARAMVALUE NAME="Query"><VALUE>SELECT * FROM Msvm_ConcreteJob WHERE ' + "(" * 5000 + "</VALUE></IPARAMVALUE>"), headers_for("ExecQuery"), cim_code=15)
        # Deeply nested embedded instance text (parsed by the server as a second document).
        deep_embedded = ("&lt;INSTANCE CLASSNAME=\"Msvm_VirtualSystemSnapshotSettingData\"&gt;" + "&lt;a&gt;" * 50_000 + "&lt;/a&gt;" * 50_000 + "&lt;/INSTANCE&gt;")
        for _ in range(5):
            body = call("CreateSnapshot", f'<PARAMVALUE NAME="Collection">{coll_ref}</PARAMVALUE><PARAMVALUE NAME="SnapshotSettings" PARAMTYPE="string" EmbeddedObject="instance"><VALUE>{deep_embedded}</VALUE></PARAMVALUE>')
            expect({200}, body, headers_for("CreateSnapshot", obj), cim_code=4)
        # 11. Path traversal in ExportDirectory: refused by the method (a return code, not a
        # job), and nothing is written outside the export roots.
        snap_ref = f'<VALUE.REFERENCE><INSTANCENAME CLASSNAME="Msvm_SnapshotCollection"><KEYBINDING NAME="CollectionID"><KEYVALUE VALUETYPE="string">{world_snapshot}</KEYVALUE></KEYBINDING></INSTANCENAME></VALUE.REFERENCE>'
        for d in [f"{server.export_root}/../outside-root", f"{server.export_root}/../../../../../../tmp",
                  str(outside), "/etc", "relative/dir", f"{server.export_root}/\x00x", "//etc//", "../../etc"]:
            for _ in range(3):
                body = call("ExportSnapshot", f'<PARAMVALUE NAME="SnapshotCollection">{snap_ref}</PARAMVALUE>'
                                              f'<PARAMVALUE NAME="ExportDirectory"><VALUE>{d.replace(chr(0), "&#0;")}</VALUE></PARAMVALUE>')
                s, _, payload = expect({200, 400}, body, headers_for("ExportSnapshot", obj))
                if s == 200:
                    rv = re.search(rb"<RETURNVALUE PARAMTYPE=\"uint32\"><VALUE>(\d+)</VALUE>", payload)
                    assert rv and int(rv.group(1)) not in (0, 4096), payload[:400]
        assert list(outside.iterdir()) == []

    # The snapshot the export attempts name.
    img = server.base / "h.qcow2"
    server.cli("disk", "create", img, "--format", "qcow2", "--size", "4M")
    vm = server.cli("vm", "define", "--name", "h", "--disk", img).stdout.strip()
    coll = server.cli("collection", "define", "h-group").stdout.strip()
    server.cli("collection", "add-member", coll, vm)
    world_snapshot = server.cli("snapshot", "create", coll, "--type", "recovery").stdout.strip()

    main_run()  # warm-up: allocator pools, caches, thread stacks
    rss_before = server.rss_kb()
    counts["total"] = 0
    main_run()
    rss_after = server.rss_kb()
    assert counts["total"] >= 1000, counts
    assert server.alive()
    assert rss_after - rss_before < 16 * 1024, f"VmRSS grew from {rss_before} kB to {rss_after} kB"
    # Still healthy: a normal client works, and nothing panicked.
    assert len(server.conn().EnumerateInstanceNames("Msvm_CollectionSnapshotService")) == 1
    assert "panicked" not in server.log.read_text()
    print(f"hostile requests: {counts['total']}, VmRSS {rss_before} kB -> {rss_after} kB")


def test_slow_and_idle_connections_do_not_block_others(server):
    """A few clients that open connections and send nothing (or half a header) do not
    stop others from being served."""
    idle = []
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", server.port))
        if i % 2:
            s.sendall(b"POST /cimom HTTP/1.1\r\nContent-Length: 10")
        idle.append(s)
    try:
        c = server.conn()
        for _ in range(20):
            assert len(c.EnumerateInstanceNames("Msvm_CollectionSnapshotService")) == 1
    finally:
        for s in idle:
            s.close()
