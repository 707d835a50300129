"""WS-Management wire helpers shared by the test_wsman_* modules.

Only what the clients themselves do not give: building raw envelopes (for faults and hostile
input, where a client would refuse to send or would hide the answer), reading endpoint
references, faults and instances out of responses by namespace URI (never by prefix), and
CIM-XML text for embedded instances (made by pywbem, the real CIM-XML encoder).
"""

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

V2 = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2"
DMTF = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2"
WQL = "http://schemas.microsoft.com/wbem/wsman/1/WQL"
ANON = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
S = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
WSEN = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
WSMANFAULT = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
ENUM_ACTION = WSEN
FAULT_ACTIONS = {"http://schemas.dmtf.org/wbem/wsman/1/wsman/fault",
                 "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault"}
SOAP_CT = "application/soap+xml;charset=UTF-8"


def basic(user, password):
    """An HTTP Basic Authorization header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def uri(cls):
    return f"{V2}/{cls}"


def q(ns, local):
    return f"{{{ns}}}{local}"


# -- endpoint references --------------------------------------------------------------------

class Epr:
    """An endpoint reference: resource URI and selectors (values as text)."""

    def __init__(self, resource_uri, selectors):
        self.resource_uri = resource_uri
        self.selectors = dict(selectors)

    @property
    def cls(self):
        return self.resource_uri.rsplit("/", 1)[-1]

    def key(self, name):
        """A selector's value, matched case-insensitively (as WinRM matches selector names)."""
        for k, v in self.selectors.items():
            if k.lower() == name.lower():
                return v
        raise KeyError(f"{name} not in {self.selectors}")

    def xml(self):
        """The EPR's children as WinRM puts them inside a REF parameter (wsa:/wsman: prefixes)."""
        sels = "".join(f'<wsman:Selector Name="{escape(k)}">{escape(v)}</wsman:Selector>' for k, v in self.selectors.items())
        return (f'<wsa:Address xmlns:wsa="{WSA}">{ANON}</wsa:Address>'
                f'<wsa:ReferenceParameters xmlns:wsa="{WSA}" xmlns:wsman="{WSMAN}">'
                f'<wsman:ResourceURI>{escape(self.resource_uri)}</wsman:ResourceURI>'
                f'<wsman:SelectorSet>{sels}</wsman:SelectorSet></wsa:ReferenceParameters>')

    def element(self, tag):
        """The EPR as an ElementTree element named `tag` (for pypsrp bodies)."""
        e = ET.Element(tag)
        ET.SubElement(e, q(WSA, "Address")).text = ANON
        rp = ET.SubElement(e, q(WSA, "ReferenceParameters"))
        ET.SubElement(rp, q(WSMAN, "ResourceURI")).text = self.resource_uri
        ss = ET.SubElement(rp, q(WSMAN, "SelectorSet"))
        for k, v in self.selectors.items():
            ET.SubElement(ss, q(WSMAN, "Selector"), Name=k).text = v
        return e

    def __repr__(self):
        return f"Epr({self.cls}, {self.selectors})"


def parse_epr(el):
    """Reads an EPR from an element holding wsa:Address + wsa:ReferenceParameters, directly
    or wrapped in a wsa:EndpointReference."""
    wrapped = el.find(q(WSA, "EndpointReference"))
    if wrapped is not None:
        el = wrapped
    rp = el.find(q(WSA, "ReferenceParameters"))
    assert rp is not None, f"no wsa:ReferenceParameters in {ET.tostring(el)[:400]!r}"
    ruri = rp.findtext(q(WSMAN, "ResourceURI")).strip()
    sels = {s.get("Name"): (s.text or "").strip() for s in rp.iter(q(WSMAN, "Selector"))}
    return Epr(ruri, sels)


# -- instances ------------------------------------------------------------------------------

def props(inst_el):
    """Properties of a WS-Man instance element as text (lists for repeated elements, None for
    xsi:nil, the inner text of a cim:Datetime / cim:Interval child)."""
    out = {}
    for child in inst_el:
        name = child.tag.split("}", 1)[-1]
        if child.get(q(XSI, "nil")) == "true":
            value = None
        elif len(child):
            value = (child[0].text or "").strip()
        else:
            value = (child.text or "").strip()
        if name in out:
            prev = out[name]
            out[name] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[name] = value
    return out


def embedded(classname, properties):
    """CIM-XML <INSTANCE> text of an instance, as pywbem encodes it (the embedded-instance
    parameter form WinRM clients send)."""
    from pywbem import CIMInstance, CIMProperty

    inst = CIMInstance(classname, properties=[CIMProperty(k, v) for k, v in properties])
    return inst.tocimxmlstr()


# -- faults ---------------------------------------------------------------------------------

class Fault:
    """A SOAP fault as read from the wire."""

    def __init__(self, status, payload):
        self.status = status
        self.payload = payload
        root = ET.fromstring(payload)
        self.root = root
        self.action = (root.findtext(f"{q(S, 'Header')}/{q(WSA, 'Action')}") or "").strip()
        self.relates_to = (root.findtext(f"{q(S, 'Header')}/{q(WSA, 'RelatesTo')}") or "").strip()
        fault = root.find(f"{q(S, 'Body')}/{q(S, 'Fault')}")
        assert fault is not None, f"no s:Fault in {payload[:600]!r}"
        code = fault.find(q(S, "Code"))
        self.code = resolve_qname(code.findtext(q(S, "Value")).strip(), payload)
        sub = code.find(f"{q(S, 'Subcode')}/{q(S, 'Value')}")
        self.subcode = resolve_qname(sub.text.strip(), payload) if sub is not None else None
        self.reason = (fault.findtext(f"{q(S, 'Reason')}/{q(S, 'Text')}") or "").strip()
        wf = fault.find(f".//{q(WSMANFAULT, 'WSManFault')}")
        self.wsman_code = int(wf.get("Code")) if wf is not None and wf.get("Code") else None
        self.detail = fault.find(q(S, "Detail"))

    def __repr__(self):
        return f"Fault({self.status}, {self.subcode}, {self.wsman_code}, {self.reason!r})"


def resolve_qname(text, payload):
    """`prefix:Local` → `{namespace}Local`, looking the prefix up in the document's xmlns
    declarations (ElementTree drops them; faults are small, so a scan is enough)."""
    if ":" not in text:
        return text
    prefix, local = text.split(":", 1)
    decl = re.search(rb'xmlns:' + re.escape(prefix.encode()) + rb'="([^"]+)"', payload)
    assert decl, f"prefix {prefix} of {text} undeclared"
    return f"{{{decl.group(1).decode()}}}{local}"


# Subcodes, as resolved QNames.
INVALID_SELECTORS = q(WSMAN, "InvalidSelectors")
DESTINATION_UNREACHABLE = q(WSA, "DestinationUnreachable")
ACTION_NOT_SUPPORTED = q(WSA, "ActionNotSupported")
ENCODING_LIMIT = q(WSMAN, "EncodingLimit")
CANNOT_PROCESS_FILTER = q(WSEN, "CannotProcessFilter")
INVALID_ENUMERATION_CONTEXT = q(WSEN, "InvalidEnumerationContext")
TIMED_OUT = q(WSMAN, "TimedOut")
UNSUPPORTED_FEATURE = q(WSMAN, "UnsupportedFeature")
SCHEMA_VALIDATION_ERROR = q(WSMAN, "SchemaValidationError")
INVALID_PARAMETER = q(WSMAN, "InvalidParameter")
MESSAGE_INFO_HEADER_REQUIRED = q(WSA, "MessageInformationHeaderRequired")


# -- raw envelopes --------------------------------------------------------------------------

def envelope(action, resource_uri, body="", selectors=None, message_id=None, extra_headers="",
             max_envelope_size=None, operation_timeout=None, reply_to=True):
    """A WS-Man request as text, in the style of the captures (wsa:/wsman: prefixes)."""
    message_id = message_id or f"uuid:{uuid.uuid4()}".upper().replace("UUID:", "uuid:")
    sel = ""
    if selectors is not None:
        sel = "<wsman:SelectorSet>" + "".join(
            f'<wsman:Selector Name="{escape(k)}">{escape(v)}</wsman:Selector>' for k, v in selectors.items()
        ) + "</wsman:SelectorSet>"
    mes = f'<wsman:MaxEnvelopeSize s:mustUnderstand="true">{max_envelope_size}</wsman:MaxEnvelopeSize>' if max_envelope_size else ""
    ot = f"<wsman:OperationTimeout>{operation_timeout}</wsman:OperationTimeout>" if operation_timeout else ""
    rt = f"<wsa:ReplyTo><wsa:Address s:mustUnderstand=\"true\">{ANON}</wsa:Address></wsa:ReplyTo>" if reply_to else ""
    return (f'<s:Envelope xmlns:s="{S}" xmlns:wsa="{WSA}" xmlns:wsman="{WSMAN}" xmlns:wsen="{WSEN}" '
            f'xmlns:xsi="{XSI}"><s:Header>'
            f'<wsa:Action s:mustUnderstand="true">{action}</wsa:Action>'
            f'<wsa:To>http://127.0.0.1/wsman</wsa:To>'
            f'<wsman:ResourceURI s:mustUnderstand="true">{resource_uri}</wsman:ResourceURI>'
            f'<wsa:MessageID>{message_id}</wsa:MessageID>{rt}{mes}{ot}{sel}{extra_headers}'
            f'</s:Header><s:Body>{body}</s:Body></s:Envelope>')


def enumerate_body(mode=None, optimize=None, filter_xml=""):
    opt = f"<wsman:OptimizeEnumeration/><wsman:MaxElements>{optimize}</wsman:MaxElements>" if optimize else ""
    m = f"<wsman:EnumerationMode>{mode}</wsman:EnumerationMode>" if mode else ""
    return f"<wsen:Enumerate>{opt}{m}{filter_xml}</wsen:Enumerate>"


def wql_filter(query):
    return f'<wsman:Filter Dialect="{WQL}">{escape(query)}</wsman:Filter>'


def pull_body(context, max_elements=None):
    me = f"<wsen:MaxElements>{max_elements}</wsen:MaxElements>" if max_elements else ""
    return f"<wsen:Pull><wsen:EnumerationContext>{escape(context)}</wsen:EnumerationContext>{me}</wsen:Pull>"


def release_body(context):
    return f"<wsen:Release><wsen:EnumerationContext>{escape(context)}</wsen:EnumerationContext></wsen:Release>"


def response_root(payload):
    return ET.fromstring(payload)

