"""Thin adapters over the real WS-Man clients, so the tests read as workflow steps.

Each adapter only arranges what its client sends (through the client's own request code) and
reads answers by namespace; nothing here talks HTTP itself except through the client.
  * pypsrp's `WSMan` (Basic over HTTP or HTTPS): Enumerate/Pull/Release/Get/Invoke.
  * pywinrm's `Protocol.send_message`: envelopes built from `build_wsman_header` + xmltodict.
  * Debian's wsl scripts (`wslenum`, `wslget`, `wslinvoke`), run as subprocesses over curl.
  * python-dracclient's `wsman.Client`: WQL enumerate with auto-pull, invoke with text params.
"""

import os
import pathlib
import subprocess
import xml.etree.ElementTree as ET

import xmltodict
from pypsrp.wsman import SelectorSet, WSMan
from winrm.protocol import Protocol

from conftest import poll_job
from wsman_wire import ANON, ENUM_ACTION, S, WSA, WSEN, WSMAN, Epr, parse_epr, props, q, uri

ASSOC_DIALECT = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding/associationFilter"
CIMBINDING = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd"


def selector_set(selectors):
    ss = SelectorSet()
    for k, v in selectors.items():
        ss.add_option(k, v)
    return ss


def items_of(body):
    """The items of an EnumerateResponse (wsman:Items) or PullResponse (wsen:Items)."""
    for tag in (q(WSMAN, "Items"), q(WSEN, "Items")):
        found = body.find(f".//{tag}")
        if found is not None:
            return list(found)
    return []


def context_of(body):
    c = body.find(f".//{q(WSEN, 'EnumerationContext')}")
    return c.text.strip() if c is not None and c.text and c.text.strip() else None


def split_item(item):
    """(instance element or None, Epr or None) of one enumeration item in any mode."""
    if item.tag == q(WSMAN, "Item"):
        inst = next((c for c in item if c.tag != q(WSA, "EndpointReference")), None)
        epr_el = item.find(q(WSA, "EndpointReference"))
        return inst, (parse_epr(epr_el) if epr_el is not None else None)
    if item.tag == q(WSA, "EndpointReference"):
        return None, parse_epr(item)
    return item, None


class Psrp:
    """pypsrp's WSMan with Basic authentication."""

    def __init__(self, port, user, password, https=False, ca=None):
        self.w = WSMan("127.0.0.1", port=port, username=user, password=password, ssl=https,
                       auth="basic", encryption="never" if not https else "auto",
                       cert_validation=ca if ca else False, operation_timeout=20)

    def enumerate(self, resource_uri, mode=None, max_elements=None, filter_el=None, pull_max=None, selectors=None):
        """Enumerate (optimized when max_elements is given) + Pull until the end; returns
        [(instance element, Epr)]."""
        e = ET.Element(q(WSEN, "Enumerate"))
        if max_elements:
            ET.SubElement(e, q(WSMAN, "OptimizeEnumeration"))
            ET.SubElement(e, q(WSMAN, "MaxElements")).text = str(max_elements)
        if mode:
            ET.SubElement(e, q(WSMAN, "EnumerationMode")).text = mode
        if filter_el is not None:
            e.append(filter_el)
        body = self.w.enumerate(resource_uri, e, selector_set=selector_set(selectors) if selectors else None)
        out = [split_item(i) for i in items_of(body)]
        ctx = context_of(body)
        pulls = 0
        while ctx:
            p = ET.Element(q(WSEN, "Pull"))
            ET.SubElement(p, q(WSEN, "EnumerationContext")).text = ctx
            if pull_max:
                ET.SubElement(p, q(WSEN, "MaxElements")).text = str(pull_max)
            body = self.w.pull(resource_uri, p)
            out += [split_item(i) for i in items_of(body)]
            ctx = context_of(body)
            pulls += 1
            assert pulls < 10_000, "enumeration never ends"
        return out

    def get(self, epr, option_set=None):
        body = self.w.get(epr.resource_uri, None, option_set=option_set, selector_set=selector_set(epr.selectors))
        return props(body[0])

    def invoke(self, epr, method, params):
        """Invoke `method` on the instance (or class) `epr` with [(name, text | Epr | [text])];
        returns (ReturnValue, {out name: element})."""
        ns = epr.resource_uri
        body = ET.Element(f"{{{ns}}}{method}_INPUT")
        for name, value in params:
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, Epr):
                    body.append(v.element(f"{{{ns}}}{name}"))
                else:
                    ET.SubElement(body, f"{{{ns}}}{name}").text = v
        env = self.w.invoke(f"{ns}/{method}", ns, body, selector_set=selector_set(epr.selectors) if epr.selectors else None)
        return parse_output(env.find(q(S, "Body")), method)

    def associators(self, epr, assoc_class, result_class):
        """EPRs associated with `epr` (WinRM's AssociatedInstances filter on the `*` URI)."""
        f = ET.Element(q(WSMAN, "Filter"), Dialect=ASSOC_DIALECT)
        ai = ET.SubElement(f, q(CIMBINDING, "AssociatedInstances"))
        ai.append(epr.element(q(CIMBINDING, "Object")))
        ET.SubElement(ai, q(CIMBINDING, "AssociationClassName")).text = assoc_class
        ET.SubElement(ai, q(CIMBINDING, "ResultClassName")).text = result_class
        return [e for _, e in self.enumerate(uri("*"), mode="EnumerateEPR", filter_el=f)]

    def wait_job(self, job, timeout=300):
        return poll_job(self.get, job, timeout)


def parse_output(body, method):
    out_el = body.find("./*")
    assert out_el is not None and out_el.tag.endswith(f"}}{method}_OUTPUT"), ET.tostring(body)[:600]
    outs = {}
    for child in out_el:
        outs.setdefault(child.tag.split("}", 1)[1], []).append(child)
    rv = int(outs.pop("ReturnValue")[0].text)
    return rv, {k: v[0] if len(v) == 1 else v for k, v in outs.items()}


class Winrm:
    """pywinrm's Protocol over HTTP Basic ("plaintext" transport); requests are whole
    envelopes built from the library's own header, sent with send_message."""

    def __init__(self, port, user, password):
        self.p = Protocol(endpoint=f"http://127.0.0.1:{port}/wsman", transport="plaintext",
                          username=user, password=password)

    def _send(self, action, resource_uri, selectors, body):
        env = {"env:Envelope": self.p.build_wsman_header(action, resource_uri)}
        if selectors:
            env["env:Envelope"]["env:Header"]["w:SelectorSet"] = {
                "w:Selector": [{"@Name": k, "#text": v} for k, v in selectors.items()]}
        env["env:Envelope"]["env:Body"] = body
        raw = self.p.send_message(xmltodict.unparse(env))
        return ET.fromstring(raw)

    def get(self, epr):
        root = self._send("http://schemas.xmlsoap.org/ws/2004/09/transfer/Get", epr.resource_uri, epr.selectors, {})
        return props(root.find(q(S, "Body"))[0])

    def invoke(self, epr, method, params):
        """As Psrp.invoke; the class namespace gets the prefix `cs` (pywinrm's `p` is taken)."""
        ns = epr.resource_uri
        inp = {"@xmlns:cs": ns}
        for name, value in params:
            vals = [epr_dict(v) if isinstance(v, Epr) else v for v in (value if isinstance(value, list) else [value])]
            inp[f"cs:{name}"] = vals if len(vals) > 1 else vals[0]
        root = self._send(f"{ns}/{method}", ns, epr.selectors, {f"cs:{method}_INPUT": inp})
        return parse_output(root.find(q(S, "Body")), method)

    def enumerate(self, resource_uri, max_elements, pull_max):
        """Optimized Enumerate (`max_elements`) + Pulls of `pull_max` until the end; returns the
        item elements and how many responses carried them."""
        body = {"n:Enumerate": {"w:OptimizeEnumeration": None, "w:MaxElements": str(max_elements)}}
        root = self._send(f"{ENUM_ACTION}/Enumerate", resource_uri, None, body).find(q(S, "Body"))
        items, ctx, responses = items_of(root), context_of(root), 1
        while ctx:
            body = {"n:Pull": {"n:EnumerationContext": ctx, "n:MaxElements": str(pull_max)}}
            root = self._send(f"{ENUM_ACTION}/Pull", resource_uri, None, body).find(q(S, "Body"))
            items += items_of(root)
            ctx = context_of(root)
            responses += 1
            assert responses < 10_000, "enumeration never ends"
        return items, responses

    def wait_job(self, job, timeout=300):
        return poll_job(self.get, job, timeout)


def epr_dict(epr):
    """An EPR as xmltodict input, in pywinrm's pre-declared prefixes (a: addressing, w: wsman)."""
    return {"a:Address": ANON, "a:ReferenceParameters": {
        "w:ResourceURI": epr.resource_uri,
        "w:SelectorSet": {"w:Selector": [{"@Name": k, "#text": v} for k, v in epr.selectors.items()]}}}


class Wsl:
    """Debian's wsl scripts over HTTP Basic. Each call runs in a fresh output directory (wsl
    keeps its request/response files there) with HOME pointed at it (wsl writes a config file
    into $HOME on first use). wsl passes the password through an unquoted shell word, so its
    user must have one without spaces."""

    def __init__(self, port, user, password, workdir: pathlib.Path, https=False):
        assert " " not in password
        self.env = dict(os.environ, WSENDPOINT=f"127.0.0.1:{port}", WSUSER=user, WSPASS=password,
                        WSDONTASK="y", KEEPHISTORY="0", OUTLEVEL="1")
        if not https:
            self.env["WSNOSSL"] = "1"  # else wsl speaks HTTPS (curl --insecure)
        else:
            self.env.pop("WSNOSSL", None)
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.calls = 0

    def run(self, tool, *args, check=True):
        self.calls += 1
        out = self.workdir / f"{self.calls:03d}-{tool}"
        out.mkdir(parents=True)
        env = dict(self.env, OUTPREFIX=str(out), HOME=str(out))
        r = subprocess.run([tool, *map(str, args)], env=env, cwd=out, capture_output=True, text=True, timeout=120)
        if check:
            assert r.returncode == 0, f"{tool} {args} exited {r.returncode}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
        return r, out

    @staticmethod
    def responses(out):
        """Every response file of one run, parsed, in order."""
        files = sorted(out.glob("response-*.xml"), key=lambda p: int(p.stem.split("-")[1]))
        return [ET.parse(f).getroot() for f in files if f.stat().st_size]

    def enumerate_eprs(self, resource_uri):
        _, out = self.run("wslenum", resource_uri, "-mode", "epr")
        eprs = []
        for root in self.responses(out):
            eprs += [parse_epr(e) for e in items_of(root.find(q(S, "Body")))]
        return eprs, out

    def get(self, epr):
        _, out = self.run("wslget", epr.resource_uri, *(f"{k}={v}" for k, v in epr.selectors.items()))
        root = self.responses(out)[-1]
        return props(root.find(q(S, "Body"))[0])

    def epr_file(self, epr, name):
        """An EPR in the layout wsl's `PARAM=FILE:` reads (the lines between the opening and
        closing *:EndpointReference lines)."""
        f = self.workdir / f"{name}.xml"
        sels = "\n".join(f'<wsman:Selector Name="{k}">{v}</wsman:Selector>' for k, v in epr.selectors.items())
        f.write_text(f"<wsa:EndpointReference>\n<wsa:Address>{ANON}</wsa:Address>\n<wsa:ReferenceParameters>\n"
                     f"<wsman:ResourceURI>{epr.resource_uri}</wsman:ResourceURI>\n<wsman:SelectorSet>\n{sels}\n"
                     f"</wsman:SelectorSet>\n</wsa:ReferenceParameters>\n</wsa:EndpointReference>\n")
        return f

    def invoke(self, class_uri, method, *params, inst=None):
        """wslinvoke: finds the (single) instance itself by EnumerateEPR unless `inst` names an
        EPR file; returns (ReturnValue, {out name: element})."""
        extra = ["-inst", inst] if inst else []
        r, out = self.run("wslinvoke", class_uri, method, *params, *extra)
        root = self.responses(out)[-1]
        return parse_output(root.find(q(S, "Body")), method)
