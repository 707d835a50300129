//! Service-level tests: requests as real clients send them, answered by a provider with a
//! few instances; faults checked on the wire (status, subcode, code, RelatesTo).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cosnap_cim::xml::Document;
use cosnap_cim::{
    AssocFilter, CimError, CimProvider, CimType, ClassDef, Instance, InstanceCursor, MethodOutcome,
    ObjectPath, Value,
};

use super::enumeration::ContextLimits;
use super::envelope::{self, Body, ParamValue};
use super::{Reply, Service, encode, ops};
use crate::request::DecodeLimits;

const V2: &str = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/";
const ENUMERATE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate";
const PULL: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull";
const RELEASE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Release";
const GET: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get";

fn job(id: &str, state: u16) -> Instance {
    Instance::new("Msvm_ConcreteJob")
        .with(
            "InstanceID",
            CimType::String,
            Some(Value::String(id.into())),
        )
        .with("JobState", CimType::Uint16, Some(Value::Uint16(state)))
        .with("ErrorDescription", CimType::String, None)
        .with(
            "StartTime",
            CimType::Datetime,
            Some(Value::Datetime("20261130100000.123456+000".into())),
        )
        .with_path(
            ObjectPath::new("Msvm_ConcreteJob").with_key("InstanceID", Value::String(id.into())),
        )
}

fn service_instance() -> Instance {
    let path = ObjectPath::new("Msvm_CollectionSnapshotService")
        .with_key(
            "CreationClassName",
            Value::String("Msvm_CollectionSnapshotService".into()),
        )
        .with_key("Name", Value::String("vmms".into()))
        .with_key(
            "SystemCreationClassName",
            Value::String("Msvm_ComputerSystem".into()),
        )
        .with_key("SystemName", Value::String("HOST".into()));
    let mut inst = Instance::new("Msvm_CollectionSnapshotService").with_path(path.clone());
    for (k, v) in &path.keys {
        inst.set(k, CimType::String, Some(v.clone()));
    }
    inst
}

/// A method call the fake provider saw: method name and typed parameters.
type Call = (String, Vec<(String, Value)>);

/// A provider with three jobs and one snapshot service; records method calls. Its
/// Msvm_ComputerSystem cursor builds [`LAZY_VMS`] VMs only as they are read, counting them.
#[derive(Default)]
pub(super) struct Fake {
    calls: Mutex<Vec<Call>>,
    built: Arc<AtomicUsize>,
}

const LAZY_VMS: usize = 2_000;

fn lazy_vm(n: usize) -> Instance {
    let name = format!("VM-{n:04}");
    Instance::new("Msvm_ComputerSystem")
        .with("Name", CimType::String, Some(Value::String(name.clone())))
        .with(
            "Description",
            CimType::String,
            Some(Value::String("x".repeat(400))),
        )
        .with_path(ObjectPath::new("Msvm_ComputerSystem").with_key("Name", Value::String(name)))
}

/// Builds each VM when a batch asks for it.
struct LazyCursor {
    next: usize,
    built: Arc<AtomicUsize>,
}

impl InstanceCursor for LazyCursor {
    fn next_batch(&mut self, _: &dyn CimProvider, max: usize) -> Result<Vec<Instance>, CimError> {
        let end = (self.next + max.max(1)).min(LAZY_VMS);
        let batch: Vec<Instance> = (self.next..end).map(lazy_vm).collect();
        self.built.fetch_add(batch.len(), Ordering::Relaxed);
        self.next = end;
        Ok(batch)
    }

    fn is_exhausted(&self) -> bool {
        self.next == LAZY_VMS
    }
}

impl CimProvider for Fake {
    fn get_class(&self, class_name: &str) -> Result<ClassDef, CimError> {
        cosnap_cim::schema()
            .class(class_name)
            .cloned()
            .ok_or_else(|| CimError::not_found(class_name.to_string()))
    }
    fn class_names(&self) -> Vec<String> {
        cosnap_cim::schema().class_names()
    }
    fn enumerate_instances(&self, class_name: &str) -> Result<Vec<Instance>, CimError> {
        Ok(match class_name {
            "Msvm_ConcreteJob" | "CIM_ConcreteJob" => {
                vec![job("J-1", 4), job("J-2", 7), job("J-3", 10)]
            }
            "Msvm_CollectionSnapshotService" => vec![service_instance()],
            _ => Vec::new(),
        })
    }
    fn enumerate_cursor(&self, class_name: &str) -> Result<Box<dyn InstanceCursor>, CimError> {
        if class_name != "Msvm_ComputerSystem" {
            let found = self.enumerate_instances(class_name)?;
            return Ok(Box::new(cosnap_cim::BuiltCursor::new(found)));
        }
        Ok(Box::new(LazyCursor {
            next: 0,
            built: self.built.clone(),
        }))
    }
    fn get_instance(&self, path: &ObjectPath) -> Result<Instance, CimError> {
        let all = self.enumerate_instances(&path.class_name)?;
        all.into_iter()
            .find(|i| i.path.as_ref().is_some_and(|p| p.keys == path.keys))
            .ok_or_else(|| CimError::not_found("no such instance"))
    }
    fn associators(&self, _: &ObjectPath, _: &AssocFilter) -> Result<Vec<Instance>, CimError> {
        Ok(vec![job("J-1", 4)])
    }
    fn references(&self, _: &ObjectPath, _: &AssocFilter) -> Result<Vec<Instance>, CimError> {
        Ok(Vec::new())
    }
    fn invoke_method(
        &self,
        _: &ObjectPath,
        method: &str,
        params: Vec<(String, Value)>,
    ) -> Result<MethodOutcome, CimError> {
        self.calls
            .lock()
            .unwrap()
            .push((method.to_string(), params));
        Ok(MethodOutcome {
            return_value: 4096,
            out_params: vec![(
                "Job".into(),
                Value::Reference(
                    ObjectPath::new("Msvm_ConcreteJob")
                        .with_key("InstanceID", Value::String("J-9".into())),
                ),
            )],
        })
    }
}

fn service_with(limits: ContextLimits) -> (Service, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let s = Service::new(fake.clone(), "HOST".into(), DecodeLimits::default(), limits);
    (s, fake)
}

fn service() -> (Service, Arc<Fake>) {
    service_with(ContextLimits::default())
}

/// An envelope as pypsrp writes it (namespaces on the root, prefixes of its own).
fn request(action: &str, uri: &str, extra_headers: &str, body: &str) -> String {
    format!(
        r#"<?xml version="1.0"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:n="http://schemas.xmlsoap.org/ws/2004/09/enumeration" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<s:Header>
  <a:Action s:mustUnderstand="true">{action}</a:Action>
  <w:MaxEnvelopeSize s:mustUnderstand="true">153600</w:MaxEnvelopeSize>
  <a:MessageID>uuid:0A1B2C3D-0000-4000-8000-00000000ABCD</a:MessageID>
  <w:OperationTimeout>PT20S</w:OperationTimeout>
  <a:ReplyTo><a:Address s:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo>
  <w:ResourceURI s:mustUnderstand="true">
     {uri}
  </w:ResourceURI>
  <a:To>http://windows-host:5985/wsman</a:To>
  {extra_headers}
</s:Header>
<s:Body>{body}</s:Body></s:Envelope>"#
    )
}

fn send(s: &Service, text: &str) -> (Reply, String) {
    let reply = s.handle_body("alice", text.as_bytes());
    let body = reply.body.clone();
    (reply, body)
}

const SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
const WSA: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";

fn find<'a>(doc: &'a Document, local: &str) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == local)
        .collect()
}

fn text(doc: &Document, local: &str) -> Option<String> {
    find(doc, local)
        .first()
        .map(|n| n.text().unwrap_or("").to_string())
}

/// Checks a fault on the wire: HTTP 500, subcode, WSManFault code, RelatesTo.
fn assert_fault(reply: &Reply, subcode: &str, code: u32) {
    assert_eq!(reply.status, 500, "{}", reply.body);
    let doc = Document::parse(&reply.body).unwrap();
    let sub = find(&doc, "Subcode")[0]
        .children()
        .find(|c| c.is_element())
        .unwrap();
    assert_eq!(sub.text(), Some(subcode), "{}", reply.body);
    let fault = find(&doc, "WSManFault")[0];
    assert_eq!(fault.attribute("Code"), Some(code.to_string().as_str()));
    assert_eq!(
        text(&doc, "RelatesTo").as_deref(),
        Some("uuid:0A1B2C3D-0000-4000-8000-00000000ABCD")
    );
}

fn selectors(pairs: &[(&str, &str)]) -> String {
    let mut s = String::from("<w:SelectorSet>");
    for (k, v) in pairs {
        s.push_str(&format!(r#"<w:Selector Name="{k}">{v}</w:Selector>"#));
    }
    s.push_str("</w:SelectorSet>");
    s
}

#[test]
fn get_answers_the_instance_in_alphabetical_wsman_form() {
    let (s, _) = service();
    let req = request(
        GET,
        &format!("{V2}Msvm_ConcreteJob"),
        &selectors(&[("instanceid", "J-2")]),
        "",
    );
    let (reply, body) = send(&s, &req);
    assert_eq!(reply.status, 200, "{body}");
    let doc = Document::parse(&body).unwrap();
    assert_eq!(
        text(&doc, "RelatesTo").as_deref(),
        Some("uuid:0A1B2C3D-0000-4000-8000-00000000ABCD")
    );
    assert_eq!(
        text(&doc, "Action").as_deref(),
        Some("http://schemas.xmlsoap.org/ws/2004/09/transfer/GetResponse")
    );
    let inst = find(&doc, "Msvm_ConcreteJob")[0];
    assert_eq!(
        inst.tag_name().namespace(),
        Some(&*format!("{V2}Msvm_ConcreteJob"))
    );
    let names: Vec<&str> = inst
        .children()
        .filter(|c| c.is_element())
        .map(|c| c.tag_name().name())
        .collect();
    assert_eq!(
        names,
        ["ErrorDescription", "InstanceID", "JobState", "StartTime"]
    );
    assert_eq!(text(&doc, "JobState").as_deref(), Some("7"));
    assert_eq!(
        text(&doc, "Datetime").as_deref(),
        Some("2026-11-30T10:00:00.123456Z")
    );
    let nil = find(&doc, "ErrorDescription")[0];
    assert_eq!(
        nil.attribute(("http://www.w3.org/2001/XMLSchema-instance", "nil")),
        Some("true")
    );
}

#[test]
fn get_faults_on_the_wire() {
    let (s, _) = service();
    let job_uri = format!("{V2}Msvm_ConcreteJob");
    let cases: Vec<(String, &str, u32)> = vec![
        (
            request(GET, &job_uri, &selectors(&[("Name", "x")]), ""),
            "w:InvalidSelectors",
            2150858843,
        ),
        (
            request(GET, &job_uri, "", ""),
            "w:InvalidSelectors",
            2150858842,
        ),
        (
            request(GET, &job_uri, &selectors(&[("InstanceID", "nope")]), ""),
            "wsa:DestinationUnreachable",
            0x8004_1002,
        ),
        (
            request(GET, &format!("{V2}Msvm_NoSuchClass"), "", ""),
            "wsa:DestinationUnreachable",
            0x8004_1010,
        ),
        (
            request(GET, "http://example.com/other/Thing", "", ""),
            "wsa:DestinationUnreachable",
            2150858811,
        ),
        (
            request(
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/Put",
                &job_uri,
                "",
                "",
            ),
            "wsa:ActionNotSupported",
            2150858771,
        ),
        (
            request(
                GET,
                &job_uri,
                r#"<x:Odd xmlns:x="urn:x" s:mustUnderstand="true"/>"#,
                "",
            ),
            "w:UnsupportedFeature",
            2150858817,
        ),
        (
            request(GET, &job_uri, "", "").replace(">153600<", ">4096<"),
            "w:EncodingLimit",
            2150858823,
        ),
    ];
    for (req, subcode, code) in cases {
        let (reply, _) = send(&s, &req);
        assert_fault(&reply, subcode, code);
    }
}

#[test]
fn unknown_must_understand_without_soap_namespace_is_ignored() {
    // pywinrm writes mustUnderstand without a namespace: that is not SOAP's attribute.
    let (s, _) = service();
    let req = request(
        GET,
        &format!("{V2}Msvm_ConcreteJob"),
        &format!(
            r#"<x:Odd xmlns:x="urn:x" mustUnderstand="true"/>{}"#,
            selectors(&[("InstanceID", "J-1")])
        ),
        "",
    );
    assert_eq!(send(&s, &req).0.status, 200);
}

#[test]
fn malformed_input_is_a_fault_not_a_panic() {
    let (s, _) = service();
    let deep = format!("{}{}", "<a>".repeat(500), "</a>".repeat(500));
    let dtd = r#"<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x "y">]><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"/>"#;
    for body in [
        "",
        "<",
        "not xml",
        &deep,
        dtd,
        "<Envelope/>",
        "\u{feff}<x/>",
    ] {
        let reply = s.handle_body("alice", body.as_bytes());
        assert_eq!(reply.status, 500);
        let doc = Document::parse(&reply.body).unwrap();
        assert!(text(&doc, "Subcode").is_some() || !find(&doc, "Subcode").is_empty());
    }
    let reply = s.handle_body("alice", &[0xFF, 0xFE, 0x3C, 0xD8]);
    assert_eq!(reply.status, 500);
}

#[test]
fn identify_needs_no_addressing() {
    let (s, _) = service();
    let req = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"><s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>"#;
    let (reply, body) = send(&s, req);
    assert_eq!(reply.status, 200);
    assert!(body.contains("<wsmid:ProductVendor>cosnap</wsmid:ProductVendor>"));
    // UTF-16 with a byte-order mark, as WinRM also accepts.
    let mut utf16 = vec![0xFF, 0xFE];
    utf16.extend(req.encode_utf16().flat_map(u16::to_le_bytes));
    assert_eq!(s.handle_body("alice", &utf16).status, 200);
}

fn enumerate_body(inner: &str) -> String {
    format!("<n:Enumerate>{inner}</n:Enumerate>")
}

fn context_of(body: &str) -> String {
    let doc = Document::parse(body).unwrap();
    text(&doc, "EnumerationContext").unwrap()
}

fn items(body: &str, local: &str) -> usize {
    let doc = Document::parse(body).unwrap();
    find(&doc, local).len()
}

fn pull_request(uri: &str, ctx: &str, max: usize) -> String {
    request(
        PULL,
        uri,
        "",
        &format!(
            "<n:Pull><n:EnumerationContext>{ctx}</n:EnumerationContext><n:MaxElements>{max}</n:MaxElements></n:Pull>"
        ),
    )
}

#[test]
fn a_large_enumeration_is_read_as_it_is_pulled() {
    let (s, fake) = service();
    let uri = format!("{V2}Msvm_ComputerSystem");
    let (reply, body) = send(&s, &request(ENUMERATE, &uri, "", &enumerate_body("")));
    assert_eq!(reply.status, 200, "{body}");
    assert_eq!(
        fake.built.load(Ordering::Relaxed),
        0,
        "Enumerate read ahead"
    );
    let mut ctx = Some(context_of(&body));

    let (reply, body) = send(&s, &pull_request(&uri, ctx.as_deref().unwrap(), 10));
    assert_eq!(
        (reply.status, items(&body, "Msvm_ComputerSystem")),
        (200, 10)
    );
    let built = fake.built.load(Ordering::Relaxed);
    assert!(built <= 11, "10 items pulled, {built} VMs built");

    let mut names = Vec::new();
    while let Some(c) = ctx.take() {
        let (reply, body) = send(&s, &pull_request(&uri, &c, 32_000));
        assert_eq!(reply.status, 200, "{body}");
        assert!(body.len() <= 153_600, "{} bytes", body.len());
        let doc = Document::parse(&body).unwrap();
        names.extend(
            find(&doc, "Name")
                .iter()
                .map(|n| n.text().unwrap().to_string()),
        );
        if find(&doc, "EndOfSequence").is_empty() {
            ctx = Some(context_of(&body));
        }
    }
    let expected: Vec<String> = (10..LAZY_VMS).map(|n| format!("VM-{n:04}")).collect();
    assert_eq!(names, expected);
    assert_eq!(
        fake.built.load(Ordering::Relaxed),
        LAZY_VMS,
        "each VM built once"
    );
}

#[test]
fn an_idle_context_expires() {
    let (s, _) = service_with(ContextLimits {
        idle_timeout: std::time::Duration::from_millis(50),
        ..ContextLimits::default()
    });
    let uri = format!("{V2}Msvm_ConcreteJob");
    let (_, body) = send(&s, &request(ENUMERATE, &uri, "", &enumerate_body("")));
    let ctx = context_of(&body);
    std::thread::sleep(std::time::Duration::from_millis(80));
    assert_fault(
        &send(&s, &pull_request(&uri, &ctx, 1)).0,
        "wsen:InvalidEnumerationContext",
        2150858779,
    );
}

#[test]
fn enumerate_pull_release() {
    let (s, _) = service();
    let uri = format!("{V2}Msvm_ConcreteJob");
    let (reply, body) = send(&s, &request(ENUMERATE, &uri, "", &enumerate_body("")));
    assert_eq!(reply.status, 200, "{body}");
    let ctx = context_of(&body);
    // An empty Enumerate body (pypsrp with no options) is a plain enumeration.
    let (reply, _) = send(&s, &request(ENUMERATE, &uri, "", ""));
    assert_eq!(reply.status, 200);
    // Pull without its body is malformed.
    assert_fault(
        &send(&s, &request(PULL, &uri, "", "")).0,
        "w:SchemaValidationError",
        2150858817,
    );
    let pull = |max: &str, ctx: &str| {
        request(
            PULL,
            &uri,
            "",
            &format!("<n:Pull><n:EnumerationContext>{ctx}</n:EnumerationContext>{max}</n:Pull>"),
        )
    };
    // No MaxElements: one item (WS-Enumeration's default).
    let (_, body) = send(&s, &pull("", &ctx));
    assert_eq!(items(&body, "Msvm_ConcreteJob"), 1);
    assert_eq!(context_of(&body), ctx);
    // dracclient puts wsman:MaxElements in Pull.
    let (_, body) = send(&s, &pull("<w:MaxElements>5</w:MaxElements>", &ctx));
    assert_eq!(items(&body, "Msvm_ConcreteJob"), 2);
    assert_eq!(items(&body, "EndOfSequence"), 1);
    assert_eq!(items(&body, "EnumerationContext"), 0);
    let (reply, _) = send(&s, &pull("", &ctx));
    assert_fault(&reply, "wsen:InvalidEnumerationContext", 2150858779);

    let (_, body) = send(&s, &request(ENUMERATE, &uri, "", &enumerate_body("")));
    let ctx = context_of(&body);
    let release =
        format!("<n:Release><n:EnumerationContext>{ctx}</n:EnumerationContext></n:Release>");
    let (reply, body) = send(&s, &request(RELEASE, &uri, "", &release));
    assert_eq!(reply.status, 200, "{body}");
    assert!(body.contains("/enumeration/ReleaseResponse</wsa:Action>"));
    let (reply, _) = send(&s, &request(RELEASE, &uri, "", &release));
    assert_fault(&reply, "wsen:InvalidEnumerationContext", 2150858779);
}

#[test]
fn another_users_context_is_invalid() {
    let (s, _) = service();
    let uri = format!("{V2}Msvm_ConcreteJob");
    let (_, body) = send(&s, &request(ENUMERATE, &uri, "", &enumerate_body("")));
    let ctx = context_of(&body);
    let pull = request(
        PULL,
        &uri,
        "",
        &format!("<n:Pull><n:EnumerationContext>{ctx}</n:EnumerationContext></n:Pull>"),
    );
    let reply = s.handle_body("mallory", pull.as_bytes());
    assert_fault(&reply, "wsen:InvalidEnumerationContext", 2150858779);
    assert_eq!(s.handle_body("alice", pull.as_bytes()).status, 200);
}

#[test]
fn optimized_enumeration_modes() {
    let (s, _) = service();
    let uri = format!("{V2}Msvm_ConcreteJob");
    let body = enumerate_body(
        "<w:OptimizeEnumeration/><w:MaxElements>2</w:MaxElements><w:EnumerationMode>EnumerateObjectAndEPR</w:EnumerationMode>",
    );
    let (_, out) = send(&s, &request(ENUMERATE, &uri, "", &body));
    assert_eq!(items(&out, "Item"), 2);
    assert_eq!(items(&out, "EndpointReference"), 2);
    assert_eq!(items(&out, "EndOfSequence"), 0);
    let body = enumerate_body(
        "<w:OptimizeEnumeration/><w:MaxElements>10</w:MaxElements><w:EnumerationMode>EnumerateEPR</w:EnumerationMode>",
    );
    let (_, out) = send(&s, &request(ENUMERATE, &uri, "", &body));
    assert_eq!(items(&out, "Msvm_ConcreteJob"), 0);
    assert_eq!(items(&out, "EndpointReference"), 3);
    assert_eq!(items(&out, "EndOfSequence"), 1);
    // The EPR's selector text is what wsl pastes into its next request.
    assert!(out.contains(r#"<wsman:SelectorSet><wsman:Selector Name="InstanceID">J-1</wsman:Selector></wsman:SelectorSet>"#));
    // Empty result sets keep wsman:Items (python-dracclient needs it).
    let (_, out) = send(
        &s,
        &request(
            ENUMERATE,
            &format!("{V2}Msvm_SnapshotCollection"),
            "",
            &enumerate_body("<w:OptimizeEnumeration/>"),
        ),
    );
    assert!(
        out.contains("<wsen:EnumerationContext/><wsman:Items></wsman:Items><wsman:EndOfSequence/>"),
        "{out}"
    );
    let (reply, _) = send(
        &s,
        &request(
            ENUMERATE,
            &uri,
            "",
            &enumerate_body("<w:EnumerationMode>Sideways</w:EnumerationMode>"),
        ),
    );
    assert_fault(&reply, "w:UnsupportedFeature", 2150858886);
}

#[test]
fn batches_are_cut_to_max_envelope_size() {
    let (s, _) = service();
    let uri = format!("{V2}Msvm_ConcreteJob");
    let body = enumerate_body("<w:OptimizeEnumeration/><w:MaxElements>100</w:MaxElements>");
    let req = request(ENUMERATE, &uri, "", &body).replace(">153600<", ">8192<");
    let (reply, out) = send(&s, &req);
    assert_eq!(reply.status, 200);
    // 8192 - 2048 bytes of budget hold some but not all three jobs at ~2 KiB each? They
    // are small, so all fit; what matters is that the envelope stays under the limit.
    assert!(out.len() <= 8192);
}

#[test]
fn wql_selector_and_association_filters() {
    let (s, _) = service();
    let wql = enumerate_body(
        r#"<w:OptimizeEnumeration/><w:MaxElements>10</w:MaxElements><w:Filter Dialect="http://schemas.microsoft.com/wbem/wsman/1/WQL">SELECT InstanceID FROM Msvm_ConcreteJob WHERE JobState = 7</w:Filter>"#,
    );
    let (reply, out) = send(&s, &request(ENUMERATE, &format!("{V2}*"), "", &wql));
    assert_eq!(reply.status, 200, "{out}");
    assert_eq!(items(&out, "Msvm_ConcreteJob"), 1);
    assert_eq!(
        items(&out, "JobState"),
        0,
        "projection keeps only InstanceID"
    );
    // WQL on a class URI, an unparsable query, an unknown dialect.
    let (reply, _) = send(
        &s,
        &request(ENUMERATE, &format!("{V2}Msvm_ConcreteJob"), "", &wql),
    );
    assert_fault(&reply, "wsen:CannotProcessFilter", 2150859003);
    let bad = wql.replace("SELECT InstanceID", "SELECT FROM");
    let (reply, _) = send(&s, &request(ENUMERATE, &format!("{V2}*"), "", &bad));
    assert_fault(&reply, "wsen:CannotProcessFilter", 2150858778);
    let odd = wql.replace("wsman/1/WQL", "wsman/1/CQL");
    let (reply, _) = send(&s, &request(ENUMERATE, &format!("{V2}*"), "", &odd));
    assert_fault(&reply, "wsen:CannotProcessFilter", 2150858778);

    let sel = enumerate_body(&format!(
        r#"<w:OptimizeEnumeration/><w:MaxElements>10</w:MaxElements><w:Filter Dialect="http://schemas.dmtf.org/wbem/wsman/1/wsman/SelectorFilter">{}</w:Filter>"#,
        selectors(&[("JobState", "10")])
    ));
    let (_, out) = send(
        &s,
        &request(ENUMERATE, &format!("{V2}Msvm_ConcreteJob"), "", &sel),
    );
    assert_eq!(items(&out, "Msvm_ConcreteJob"), 1);
    assert!(out.contains(">J-3<"));

    let assoc = enumerate_body(&format!(
        r#"<w:OptimizeEnumeration/><w:MaxElements>10</w:MaxElements><w:Filter Dialect="http://schemas.dmtf.org/wbem/wsman/1/cimbinding/associationFilter"><b:AssociatedInstances xmlns:b="http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd"><b:Object><a:Address>x</a:Address><a:ReferenceParameters><w:ResourceURI>{V2}Msvm_ConcreteJob</w:ResourceURI>{}</a:ReferenceParameters></b:Object><b:ResultClassName>Msvm_ConcreteJob</b:ResultClassName></b:AssociatedInstances></w:Filter>"#,
        selectors(&[("InstanceID", "J-2")])
    ));
    let (reply, out) = send(&s, &request(ENUMERATE, &format!("{V2}*"), "", &assoc));
    assert_eq!(reply.status, 200, "{out}");
    assert_eq!(items(&out, "Msvm_ConcreteJob"), 1);
}

#[test]
fn contexts_are_bounded_per_user() {
    let (s, _) = service_with(ContextLimits {
        per_user: 2,
        ..ContextLimits::default()
    });
    let req = request(
        ENUMERATE,
        &format!("{V2}Msvm_ConcreteJob"),
        "",
        &enumerate_body(""),
    );
    assert_eq!(send(&s, &req).0.status, 200);
    assert_eq!(send(&s, &req).0.status, 200);
    assert_fault(&send(&s, &req).0, "w:QuotaLimit", 2150859175);
    assert_eq!(s.handle_body("bob", req.as_bytes()).status, 200);
}

#[test]
fn operation_timeout_is_honoured_before_side_effects() {
    let (s, fake) = service();
    let req = request(
        ENUMERATE,
        &format!("{V2}Msvm_ConcreteJob"),
        "",
        &enumerate_body(""),
    )
    .replace(">PT20S<", ">PT0S<");
    assert_fault(&send(&s, &req).0, "w:TimedOut", 2150858793);
    let invoke = export_request().replace(">PT20S<", ">PT0S<");
    assert_fault(&send(&s, &invoke).0, "w:TimedOut", 2150858793);
    assert!(
        fake.calls.lock().unwrap().is_empty(),
        "the method must not run"
    );
}

const EXPORT_SETTINGS: &str = r#"&lt;INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"&gt;&lt;PROPERTY NAME="BackupIntent" TYPE="uint16"&gt;&lt;VALUE&gt;1&lt;/VALUE&gt;&lt;/PROPERTY&gt;&lt;/INSTANCE&gt;"#;

fn export_request() -> String {
    let svc = format!("{V2}Msvm_CollectionSnapshotService");
    request(
        &format!("{svc}/ExportSnapshot"),
        &svc,
        &selectors(&[
            ("CreationClassName", "Msvm_CollectionSnapshotService"),
            ("Name", "vmms"),
            ("SystemCreationClassName", "Msvm_ComputerSystem"),
            ("SystemName", "HOST"),
        ]),
        &format!(
            r#"<p:ExportSnapshot_INPUT xmlns:p="{svc}"><p:SnapshotCollection><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address><a:ReferenceParameters><w:ResourceURI>{V2}Msvm_SnapshotCollection</w:ResourceURI><w:SelectorSet><w:Selector Name="CollectionID">SC-7</w:Selector></w:SelectorSet></a:ReferenceParameters></p:SnapshotCollection><p:ExportDirectory>/srv/export</p:ExportDirectory><p:ExportSettingData>{EXPORT_SETTINGS}</p:ExportSettingData></p:ExportSnapshot_INPUT>"#
        ),
    )
}

#[test]
fn invoke_types_parameters_and_answers_a_job_epr() {
    let (s, fake) = service();
    let (reply, out) = send(&s, &export_request());
    assert_eq!(reply.status, 200, "{out}");
    let doc = Document::parse(&out).unwrap();
    assert!(
        text(&doc, "Action")
            .unwrap()
            .ends_with("/Msvm_CollectionSnapshotService/ExportSnapshotResponse")
    );
    let output = find(&doc, "ExportSnapshot_OUTPUT")[0];
    let names: Vec<&str> = output
        .children()
        .filter(|c| c.is_element())
        .map(|c| c.tag_name().name())
        .collect();
    assert_eq!(names, ["Job", "ReturnValue"]);
    assert_eq!(text(&doc, "ReturnValue").as_deref(), Some("4096"));
    let job = find(&doc, "Job")[0];
    assert!(
        job.children()
            .any(|c| c.tag_name().name() == "Address" && c.tag_name().namespace() == Some(WSA))
    );
    assert_eq!(text(&doc, "Selector").as_deref(), Some("J-9"));

    let calls = fake.calls.lock().unwrap();
    let (method, params) = &calls[0];
    assert_eq!(method, "ExportSnapshot");
    let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let Some(Value::Reference(coll)) = get("SnapshotCollection") else {
        panic!("{params:?}")
    };
    assert_eq!(coll.class_name, "Msvm_SnapshotCollection");
    assert_eq!(coll.key_str("CollectionID"), Some("SC-7"));
    assert_eq!(
        get("ExportDirectory"),
        Some(Value::String("/srv/export".into()))
    );
    let Some(Value::Instance(settings)) = get("ExportSettingData") else {
        panic!("{params:?}")
    };
    assert_eq!(settings.get("BackupIntent"), Some(&Value::Uint16(1)));
}

#[test]
fn invoke_faults() {
    let (s, fake) = service();
    let svc = format!("{V2}Msvm_CollectionSnapshotService");
    let unknown = export_request().replace("/ExportSnapshot<", "/Frobnicate<");
    assert_fault(&send(&s, &unknown).0, "wsa:ActionNotSupported", 0x8004_1030);
    let wrong_body = export_request().replace("ExportSnapshot_INPUT", "Other_INPUT");
    assert_fault(
        &send(&s, &wrong_body).0,
        "w:SchemaValidationError",
        2150858817,
    );
    let bad_param = export_request().replace("p:ExportDirectory", "p:NoSuchParam");
    assert_fault(&send(&s, &bad_param).0, "w:InvalidParameter", 0x8004_1008);
    let foreign =
        export_request().replace(&format!("{svc}/ExportSnapshot<"), "urn:x/ExportSnapshot<");
    assert_fault(&send(&s, &foreign).0, "wsa:ActionNotSupported", 2150858771);
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[test]
fn element_form_embedded_instance_round_trips_through_the_encoder() {
    // The encoder's instance form, read back as a DSP0230 element-form parameter, gives
    // the same typed instance.
    let original = Instance::new("Msvm_CollectionSnapshotExportSettingData")
        .with("BackupIntent", CimType::Uint16, Some(Value::Uint16(2)))
        .with(
            "CopyVmStorage",
            CimType::Boolean,
            Some(Value::Boolean(true)),
        )
        .with("DifferentialBackupBase", CimType::String, None);
    let mut xml = String::new();
    encode::write_instance(&mut xml, &original);
    let wrapped = format!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common"><s:Body><M_INPUT>{}</M_INPUT></s:Body></s:Envelope>"#,
        xml.replacen("<p:Msvm_CollectionSnapshotExportSettingData ", "<p:X ", 1)
            .replace("</p:Msvm_CollectionSnapshotExportSettingData>", "</p:X>")
    );
    let req = envelope::decode(wrapped.as_bytes(), &DecodeLimits::default()).unwrap();
    let Body::Element { params, .. } = req.body else {
        panic!()
    };
    let [param] = &params[..] else { panic!() };
    let ParamValue::Instance {
        class_name,
        properties,
    } = &param.value
    else {
        panic!("{:?}", param.value)
    };
    let typed = ops::element_instance(class_name.as_deref(), properties).unwrap();
    let mut want = original.clone();
    want.properties.sort_by(|a, b| a.name.cmp(&b.name));
    let mut got = typed;
    got.properties.sort_by(|a, b| a.name.cmp(&b.name));
    for (w, g) in want.properties.iter().zip(&got.properties) {
        assert_eq!((&w.name, &w.value), (&g.name, &g.value));
    }
    assert_eq!(got.class_name, want.class_name);
}

#[test]
fn pywinrm_style_headers_and_bare_message_ids_are_accepted() {
    let (s, _) = service();
    // wsl sends a bare UUID; RelatesTo echoes it verbatim.
    let req = request(
        GET,
        &format!("{V2}Msvm_ConcreteJob"),
        &selectors(&[("InstanceID", "J-1")]),
        "",
    )
    .replace("uuid:0A1B2C3D-0000-4000-8000-00000000ABCD", "0a1b2c3d");
    let (reply, out) = send(&s, &req);
    assert_eq!(reply.status, 200);
    assert!(out.contains(r#"<wsa:RelatesTo s:mustUnderstand="true">0a1b2c3d</wsa:RelatesTo>"#));
    let doc = Document::parse(&out).unwrap();
    assert_eq!(doc.root_element().tag_name().namespace(), Some(SOAP));
}

#[test]
fn attribute_and_namespace_floods_are_refused_by_the_pre_scan() {
    // roxmltree's duplicate-attribute and namespace scans are quadratic; the bounded
    // reader's linear pre-scan must refuse such envelopes before they reach it.
    let (s, _) = service();
    let get = request(
        GET,
        &format!("{V2}Msvm_ConcreteJob"),
        &selectors(&[("InstanceID", "J-1")]),
        "",
    );
    let attrs: String = (0..50_000).map(|i| format!(" a{i}=\"x\"")).collect();
    let decls: String = (0..50_000)
        .map(|i| format!(" xmlns:n{i}=\"urn:x:{i}\""))
        .collect();
    for flood in [attrs, decls] {
        let req = get.replacen("<s:Body>", &format!("<s:Body{flood}>"), 1);
        let reply = s.handle_body("alice", req.as_bytes());
        assert_eq!(reply.status, 500);
        let doc = Document::parse(&reply.body).unwrap();
        assert_eq!(text(&doc, "Value").as_deref(), Some("s:Sender"));
        assert!(
            reply.body.contains("w:SchemaValidationError"),
            "{}",
            reply.body
        );
    }
}
