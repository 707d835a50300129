//! The server end to end over loopback HTTP against a small in-test provider (the real
//! schema, a handful of instances, one method that records what it was given): Basic
//! authentication, intrinsic operations, method calls with untyped parameters, embedded
//! instances and host-qualified references, CIM errors, and HTTP-level refusals.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use cosnap_cim::{
    AssocFilter, CimError, CimProvider, CimType, ClassDef, Instance, MethodOutcome, ObjectPath,
    Value,
};
use cosnap_test_support::http::{basic_auth, header, parse_response_head};
use cosnap_wbem::{ServeConfig, Server, ServerLimits};

const NS_XML: &str = r#"<LOCALNAMESPACEPATH><NAMESPACE NAME="root"/><NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH>"#;

/// One recorded method call: target, method name, typed parameters.
type RecordedCall = (ObjectPath, String, Vec<(String, Value)>);

#[derive(Default)]
struct TestProvider {
    calls: Mutex<Vec<RecordedCall>>,
}

fn job(id: &str, state: u16) -> Instance {
    Instance::new("Msvm_ConcreteJob")
        .with(
            "InstanceID",
            CimType::String,
            Some(Value::String(id.into())),
        )
        .with("JobState", CimType::Uint16, Some(Value::Uint16(state)))
        .with("PercentComplete", CimType::Uint16, Some(Value::Uint16(100)))
        .with_path(
            ObjectPath::new("Msvm_ConcreteJob").with_key("InstanceID", Value::String(id.into())),
        )
}

/// Instances of Msvm_SnapshotCollection the test provider serves: more than one stream batch.
const MANY: usize = 250;

fn snapshot_collection(i: usize) -> Instance {
    let id = format!("SC-{i:04}");
    Instance::new("Msvm_SnapshotCollection")
        .with(
            "CollectionID",
            CimType::String,
            Some(Value::String(id.clone())),
        )
        .with_path(
            ObjectPath::new("Msvm_SnapshotCollection").with_key("CollectionID", Value::String(id)),
        )
}

/// Yields 150 instances, then fails: a provider error after the head went out.
struct FailingCursor(usize);

impl cosnap_cim::InstanceCursor for FailingCursor {
    fn next_batch(&mut self, _: &dyn CimProvider, max: usize) -> Result<Vec<Instance>, CimError> {
        if self.0 >= 150 {
            return Err(CimError::failed("the repository went away"));
        }
        let batch: Vec<Instance> = (self.0..self.0 + max).map(snapshot_collection).collect();
        self.0 += max;
        Ok(batch)
    }
    fn is_exhausted(&self) -> bool {
        false
    }
}

impl CimProvider for TestProvider {
    fn enumerate_cursor(
        &self,
        class_name: &str,
    ) -> Result<Box<dyn cosnap_cim::InstanceCursor>, CimError> {
        if class_name.eq_ignore_ascii_case("Msvm_ReferencePointCollection") {
            return Ok(Box::new(FailingCursor(0)));
        }
        let found = self.enumerate_instances(class_name)?;
        Ok(Box::new(cosnap_cim::BuiltCursor::new(found)))
    }
    fn get_class(&self, class_name: &str) -> Result<ClassDef, CimError> {
        cosnap_cim::schema()
            .class(class_name)
            .cloned()
            .ok_or_else(|| CimError::not_found(format!("no class {class_name}")))
    }
    fn class_names(&self) -> Vec<String> {
        cosnap_cim::schema().class_names()
    }
    fn enumerate_instances(&self, class_name: &str) -> Result<Vec<Instance>, CimError> {
        Ok(if class_name.eq_ignore_ascii_case("Msvm_ConcreteJob") {
            vec![job("J-1", 7), job("J-2", 4)]
        } else if class_name.eq_ignore_ascii_case("Msvm_SnapshotCollection") {
            (0..MANY).map(snapshot_collection).collect()
        } else {
            vec![]
        })
    }
    fn get_instance(&self, path: &ObjectPath) -> Result<Instance, CimError> {
        match path.key_str("InstanceID") {
            Some("J-1") => Ok(job("J-1", 7)),
            _ => Err(CimError::not_found("no such job")),
        }
    }
    fn associators(&self, _: &ObjectPath, _: &AssocFilter) -> Result<Vec<Instance>, CimError> {
        Ok(vec![])
    }
    fn references(&self, _: &ObjectPath, _: &AssocFilter) -> Result<Vec<Instance>, CimError> {
        Ok(vec![])
    }
    fn invoke_method(
        &self,
        target: &ObjectPath,
        method: &str,
        params: Vec<(String, Value)>,
    ) -> Result<MethodOutcome, CimError> {
        self.calls
            .lock()
            .unwrap()
            .push((target.clone(), method.to_string(), params));
        Ok(MethodOutcome {
            return_value: 4096,
            out_params: vec![(
                "Job".into(),
                Value::Reference(
                    ObjectPath::new("Msvm_ConcreteJob")
                        .with_key("InstanceID", Value::String("J-1".into())),
                ),
            )],
        })
    }
}

struct Running {
    port: u16,
    provider: Arc<TestProvider>,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    cosnap_wbem::auth::add_user(dir.path(), "u", "p w").unwrap();
    let provider = Arc::new(TestProvider::default());
    let config = ServeConfig {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        https_listen: None,
        tls_files: None,
        insecure_allow_plain_http: false,
        data_dir: dir.path().to_path_buf(),
        host_name: "testhost".into(),
        limits: ServerLimits::default(),
    };
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let p: Arc<dyn CimProvider> = provider.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = Server::bind(config, p).await.unwrap();
            port_tx.send(server.http_addr().unwrap().port()).unwrap();
            server
                .run(async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
    });
    let port = port_rx.recv().unwrap();
    Running {
        port,
        provider,
        _dir: dir,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

/// Sends one request to `/cimom`; returns (status, lower-cased headers, body).
fn post(port: u16, headers: &[(&str, &str)], body: &str) -> (u16, Vec<(String, String)>, String) {
    post_to(port, "/cimom", headers, body)
}

/// Sends one request to `path`; returns (status, lower-cased headers, body).
fn post_to(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    // The server may answer early (413) and close while the body is still being sent.
    let _ = s.write_all(req.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let (status, hdrs) = parse_response_head(head);
    (status, hdrs, body.to_string())
}

fn cim_headers<'a>(method: &'a str, object: &'a str, auth: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("Content-Type", "application/xml; charset=\"utf-8\""),
        ("CIMOperation", "MethodCall"),
        ("CIMMethod", method),
        ("CIMObject", object),
        ("Authorization", auth),
    ]
}

fn envelope(id: &str, inner: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8" ?><CIM CIMVERSION="2.0" DTDVERSION="2.0"><MESSAGE ID="{id}" PROTOCOLVERSION="1.0"><SIMPLEREQ>{inner}</SIMPLEREQ></MESSAGE></CIM>"#
    )
}

#[test]
fn intrinsic_operations_and_errors() {
    let s = start();
    let a = basic_auth("u", "p w");
    let ns = "root%2Fvirtualization%2Fv2";
    let body = envelope(
        "4711",
        &format!(
            r#"<IMETHODCALL NAME="EnumerateInstanceNames">{NS_XML}<IPARAMVALUE NAME="ClassName"><CLASSNAME NAME="Msvm_ConcreteJob"/></IPARAMVALUE></IMETHODCALL>"#
        ),
    );
    let (st, h, b) = post(
        s.port,
        &cim_headers("EnumerateInstanceNames", ns, &a),
        &body,
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(header(&h, "cimoperation"), Some("MethodResponse"));
    assert!(b.contains(r#"<MESSAGE ID="4711" PROTOCOLVERSION="1.0">"#));
    assert_eq!(
        b.matches("<INSTANCENAME CLASSNAME=\"Msvm_ConcreteJob\">")
            .count(),
        2
    );

    // GetInstance with a VALUETYPE-only KEYVALUE (wbemcli's form); a missing one is 6.
    let gi = |id: &str| {
        envelope(
            "1",
            &format!(
                r#"<IMETHODCALL NAME="GetInstance">{NS_XML}<IPARAMVALUE NAME="InstanceName"><INSTANCENAME CLASSNAME="Msvm_ConcreteJob"><KEYBINDING NAME="InstanceID"><KEYVALUE VALUETYPE="string">{id}</KEYVALUE></KEYBINDING></INSTANCENAME></IPARAMVALUE></IMETHODCALL>"#
            ),
        )
    };
    let (st, _, b) = post(s.port, &cim_headers("GetInstance", ns, &a), &gi("J-1"));
    assert_eq!(st, 200);
    assert!(
        b.contains(r#"<PROPERTY NAME="JobState" TYPE="uint16"><VALUE>7</VALUE></PROPERTY>"#),
        "{b}"
    );
    let (_, _, b) = post(s.port, &cim_headers("GetInstance", ns, &a), &gi("nope"));
    assert!(b.contains(r#"<ERROR CODE="6""#), "{b}");

    // Unknown namespace (3), unknown class (5 / GetClass 6), query pulls (7), WQL (14).
    let other = envelope(
        "1",
        r#"<IMETHODCALL NAME="EnumerateInstances"><LOCALNAMESPACEPATH><NAMESPACE NAME="root"/><NAMESPACE NAME="cimv2"/></LOCALNAMESPACEPATH><IPARAMVALUE NAME="ClassName"><CLASSNAME NAME="Msvm_ConcreteJob"/></IPARAMVALUE></IMETHODCALL>"#,
    );
    let (_, _, b) = post(
        s.port,
        &cim_headers("EnumerateInstances", "root/cimv2", &a),
        &other,
    );
    assert!(b.contains(r#"<ERROR CODE="3""#), "{b}");
    for (op, code) in [
        ("EnumerateInstances", 5),
        ("GetClass", 6),
        ("OpenEnumerateInstances", 5),
        ("OpenQueryInstances", 7),
    ] {
        let body = envelope(
            "1",
            &format!(
                r#"<IMETHODCALL NAME="{op}">{NS_XML}<IPARAMVALUE NAME="ClassName"><CLASSNAME NAME="Nope"/></IPARAMVALUE></IMETHODCALL>"#
            ),
        );
        let (_, _, b) = post(s.port, &cim_headers(op, ns, &a), &body);
        assert!(b.contains(&format!(r#"<ERROR CODE="{code}""#)), "{op}: {b}");
    }
    let q = envelope(
        "1",
        &format!(
            r#"<IMETHODCALL NAME="ExecQuery">{NS_XML}<IPARAMVALUE NAME="QueryLanguage"><VALUE>WQL</VALUE></IPARAMVALUE><IPARAMVALUE NAME="Query"><VALUE>SELECT InstanceID FROM Msvm_ConcreteJob WHERE JobState = 4</VALUE></IPARAMVALUE></IMETHODCALL>"#
        ),
    );
    let (_, _, b) = post(s.port, &cim_headers("ExecQuery", ns, &a), &q);
    assert_eq!(b.matches("<VALUE.OBJECTWITHPATH>").count(), 1, "{b}");
    assert!(b.contains("J-2") && !b.contains("JobState"), "{b}");
}

fn enumerate(class: &str) -> String {
    envelope(
        "7",
        &format!(
            r#"<IMETHODCALL NAME="EnumerateInstances">{NS_XML}<IPARAMVALUE NAME="ClassName"><CLASSNAME NAME="{class}"/></IPARAMVALUE></IMETHODCALL>"#
        ),
    )
}

/// Decodes a chunked body; `None` when the final empty chunk never came.
fn dechunk(mut raw: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = raw.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        raw = rest.get(size + 2..)?;
    }
}

#[test]
fn long_lists_are_streamed_in_chunks_and_failures_cut_the_response() {
    let s = start();
    let a = basic_auth("u", "p w");
    let ns = "root/virtualization/v2";
    let headers = cim_headers("EnumerateInstances", ns, &a);

    let (st, h, raw) = post(s.port, &headers, &enumerate("Msvm_SnapshotCollection"));
    assert_eq!(st, 200);
    assert_eq!(header(&h, "transfer-encoding"), Some("chunked"));
    let body = dechunk(&raw).expect("a complete chunked body");
    assert_eq!(body.matches("<VALUE.NAMEDINSTANCE>").count(), MANY);
    assert!(body.contains("SC-0000") && body.contains("SC-0249"));
    assert!(
        body.ends_with("</IMETHODRESPONSE></SIMPLERSP></MESSAGE></CIM>\n"),
        "{body}"
    );
    roxmltree::Document::parse(&body).unwrap();

    // ExecQuery streams its matches too, filtered batch by batch.
    let q = envelope(
        "8",
        &format!(
            r#"<IMETHODCALL NAME="ExecQuery">{NS_XML}<IPARAMVALUE NAME="QueryLanguage"><VALUE>WQL</VALUE></IPARAMVALUE><IPARAMVALUE NAME="Query"><VALUE>SELECT CollectionID FROM Msvm_SnapshotCollection WHERE CollectionID &lt;&gt; 'SC-0001'</VALUE></IPARAMVALUE></IMETHODCALL>"#
        ),
    );
    let (st, h, raw) = post(s.port, &cim_headers("ExecQuery", ns, &a), &q);
    assert_eq!(st, 200);
    assert_eq!(header(&h, "transfer-encoding"), Some("chunked"));
    let body = dechunk(&raw).expect("a complete chunked body");
    assert_eq!(body.matches("<VALUE.OBJECTWITHPATH>").count(), MANY - 1);
    assert!(body.contains("SC-0249") && !body.contains("SC-0001"));
    roxmltree::Document::parse(&body).unwrap();

    // Short lists keep their Content-Length.
    let (_, h, _) = post(s.port, &headers, &enumerate("Msvm_ConcreteJob"));
    assert!(header(&h, "content-length").is_some());

    // A provider failing after the head went out: the body never completes.
    let (st, _, raw) = post(
        s.port,
        &headers,
        &enumerate("Msvm_ReferencePointCollection"),
    );
    assert_eq!(st, 200);
    assert!(
        dechunk(&raw).is_none(),
        "a failed stream must not look complete"
    );
    assert!(!raw.contains("</CIM>"));
}

#[test]
fn pull_enumeration_in_batches_to_its_end() {
    let s = start();
    let a = basic_auth("u", "p w");
    let ns = "root/virtualization/v2";
    let open = envelope(
        "1",
        &format!(
            r#"<IMETHODCALL NAME="OpenEnumerateInstances">{NS_XML}<IPARAMVALUE NAME="ClassName"><CLASSNAME NAME="Msvm_ConcreteJob"/></IPARAMVALUE><IPARAMVALUE NAME="MaxObjectCount"><VALUE>1</VALUE></IPARAMVALUE></IMETHODCALL>"#
        ),
    );
    let (st, _, b) = post(
        s.port,
        &cim_headers("OpenEnumerateInstances", ns, &a),
        &open,
    );
    assert_eq!(st, 200);
    assert_eq!(b.matches("<VALUE.INSTANCEWITHPATH>").count(), 1, "{b}");
    assert!(
        b.contains(r#"<PARAMVALUE NAME="EndOfSequence" PARAMTYPE="boolean"><VALUE>FALSE</VALUE>"#),
        "{b}"
    );
    let context = b
        .split(r#"<PARAMVALUE NAME="EnumerationContext" PARAMTYPE="string"><VALUE>"#)
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("an EnumerationContext")
        .to_string();

    let pull = |context: &str| {
        envelope(
            "2",
            &format!(
                r#"<IMETHODCALL NAME="PullInstancesWithPath">{NS_XML}<IPARAMVALUE NAME="EnumerationContext"><VALUE>{context}</VALUE></IPARAMVALUE><IPARAMVALUE NAME="MaxObjectCount"><VALUE>10</VALUE></IPARAMVALUE></IMETHODCALL>"#
            ),
        )
    };
    let headers = cim_headers("PullInstancesWithPath", ns, &a);
    let (_, _, b) = post(s.port, &headers, &pull(&context));
    assert_eq!(b.matches("<VALUE.INSTANCEWITHPATH>").count(), 1, "{b}");
    assert!(
        b.contains(r#"<PARAMVALUE NAME="EndOfSequence" PARAMTYPE="boolean"><VALUE>TRUE</VALUE>"#),
        "{b}"
    );
    assert!(
        b.contains(r#"<PARAMVALUE NAME="EnumerationContext" PARAMTYPE="string"></PARAMVALUE>"#),
        "{b}"
    );
    let (_, _, b) = post(s.port, &headers, &pull(&context));
    assert!(
        b.contains(r#"<ERROR CODE="21""#),
        "the ended context is gone: {b}"
    );
}

#[test]
fn method_call_types_untyped_params_embedded_and_host_refs() {
    let s = start();
    let a = basic_auth("u", "p w");
    let target = format!(
        r#"<LOCALINSTANCEPATH>{NS_XML}<INSTANCENAME CLASSNAME="Msvm_CollectionSnapshotService"><KEYBINDING NAME="Name"><KEYVALUE VALUETYPE="string">svc</KEYVALUE></KEYBINDING></INSTANCENAME></LOCALINSTANCEPATH>"#
    );
    let host_ref = r#"<VALUE.REFERENCE><INSTANCEPATH><NAMESPACEPATH><HOST>127.0.0.1</HOST><LOCALNAMESPACEPATH><NAMESPACE NAME="root"/><NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH></NAMESPACEPATH><INSTANCENAME CLASSNAME="Msvm_SnapshotCollection"><KEYBINDING NAME="CollectionID"><KEYVALUE VALUETYPE="string">SC-7</KEYVALUE></KEYBINDING></INSTANCENAME></INSTANCEPATH></VALUE.REFERENCE>"#;
    let esd = "&lt;INSTANCE CLASSNAME=&quot;Msvm_CollectionSnapshotExportSettingData&quot;&gt;&lt;PROPERTY NAME=&quot;CopyVmStorage&quot; TYPE=&quot;boolean&quot;&gt;&lt;VALUE&gt;TRUE&lt;/VALUE&gt;&lt;/PROPERTY&gt;&lt;/INSTANCE&gt;";
    let body = envelope(
        "9",
        &format!(
            r#"<METHODCALL NAME="exportsnapshot">{target}<PARAMVALUE NAME="SnapshotCollection">{host_ref}</PARAMVALUE><PARAMVALUE NAME="ExportDirectory"><VALUE>/srv/x</VALUE></PARAMVALUE><PARAMVALUE NAME="ExportSettingData" EMBEDDEDOBJECT="object"><VALUE>{esd}</VALUE></PARAMVALUE></METHODCALL>"#
        ),
    );
    let (st, _, b) = post(
        s.port,
        &cim_headers(
            "exportsnapshot",
            "root%2Fvirtualization%2Fv2%3AMsvm_CollectionSnapshotService.Name%3D%22svc%22",
            &a,
        ),
        &body,
    );
    assert_eq!(st, 200, "{b}");
    // NAME echoed byte for byte, RETURNVALUE typed, Job a full INSTANCEPATH.
    assert!(b.contains(r#"<METHODRESPONSE NAME="exportsnapshot"><RETURNVALUE PARAMTYPE="uint32"><VALUE>4096</VALUE></RETURNVALUE><PARAMVALUE NAME="Job" PARAMTYPE="reference"><VALUE.REFERENCE><INSTANCEPATH><NAMESPACEPATH><HOST>testhost</HOST>"#), "{b}");
    let calls = s.provider.calls.lock().unwrap();
    let (path, method, params) = &calls[0];
    assert_eq!(method, "ExportSnapshot");
    assert_eq!(path.namespace.as_deref(), Some("root/virtualization/v2"));
    let sc = params
        .iter()
        .find(|(n, _)| n == "SnapshotCollection")
        .unwrap()
        .1
        .as_reference()
        .unwrap();
    assert_eq!(
        (
            sc.class_name.as_str(),
            sc.key_str("CollectionID"),
            sc.host.as_deref()
        ),
        ("Msvm_SnapshotCollection", Some("SC-7"), None)
    );
    assert_eq!(
        params
            .iter()
            .find(|(n, _)| n == "ExportDirectory")
            .unwrap()
            .1,
        Value::String("/srv/x".into())
    );
    let inst = params
        .iter()
        .find(|(n, _)| n == "ExportSettingData")
        .unwrap()
        .1
        .as_instance()
        .unwrap();
    assert_eq!(inst.get("CopyVmStorage"), Some(&Value::Boolean(true)));
    drop(calls);

    // Typed from the class: a uint16 given as "abc" or out of range is CIM error 4.
    for bad in ["abc", "70000", "-1"] {
        let body = envelope(
            "9",
            &format!(
                r#"<METHODCALL NAME="CreateSnapshot">{target}<PARAMVALUE NAME="SnapshotType"><VALUE>{bad}</VALUE></PARAMVALUE></METHODCALL>"#
            ),
        );
        let (_, _, b) = post(
            s.port,
            &cim_headers("CreateSnapshot", "root/virtualization/v2", &a),
            &body,
        );
        assert!(b.contains(r#"<ERROR CODE="4""#), "{bad}: {b}");
    }
    let body = envelope(
        "9",
        &format!(r#"<METHODCALL NAME="Frob">{target}</METHODCALL>"#),
    );
    let (_, _, b) = post(
        s.port,
        &cim_headers("Frob", "root/virtualization/v2", &a),
        &body,
    );
    assert!(b.contains(r#"<ERROR CODE="17""#), "{b}");
}

#[test]
fn http_level_refusals() {
    let s = start();
    let body = envelope(
        "1",
        &format!(r#"<IMETHODCALL NAME="EnumerateClassNames">{NS_XML}</IMETHODCALL>"#),
    );
    let ns = "root/virtualization/v2";
    for bad in [
        basic_auth("u", "wrong"),
        basic_auth("x", "p w"),
        "Basic".into(),
        String::new(),
    ] {
        let (st, h, _) = post(s.port, &cim_headers("EnumerateClassNames", ns, &bad), &body);
        assert_eq!(st, 401);
        assert_eq!(
            header(&h, "www-authenticate"),
            Some(r#"Basic realm="cosnap""#)
        );
    }
    let a = basic_auth("u", "p w");
    let (st, h, _) = post(
        s.port,
        &cim_headers("EnumerateClassNames", ns, &a),
        &body[..body.len() - 30],
    );
    assert_eq!(
        (st, header(&h, "cimerror")),
        (400, Some("request-not-well-formed"))
    );
    let laughs = r#"<?xml version="1.0"?><!DOCTYPE CIM [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><CIM CIMVERSION="2.0" DTDVERSION="2.0">&b;</CIM>"#;
    let (st, h, _) = post(s.port, &cim_headers("EnumerateClassNames", ns, &a), laughs);
    assert_eq!(
        (st, header(&h, "cimerror")),
        (400, Some("request-not-well-formed"))
    );
    let big = "x".repeat(5 * 1024 * 1024);
    let (st, _, _) = post(s.port, &cim_headers("EnumerateClassNames", ns, &a), &big);
    assert_eq!(st, 413);
    let (st, h, _) = post(s.port, &cim_headers("GetClass", ns, &a), &body);
    assert_eq!((st, header(&h, "cimerror")), (400, Some("header-mismatch")));
}

#[test]
fn plain_http_on_a_public_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        http_listen: Some("0.0.0.0:0".parse().unwrap()),
        https_listen: None,
        tls_files: None,
        insecure_allow_plain_http: false,
        data_dir: dir.path().to_path_buf(),
        host_name: "h".into(),
        limits: ServerLimits::default(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p: Arc<dyn CimProvider> = Arc::new(TestProvider::default());
    let e = rt.block_on(Server::bind(config, p)).err().unwrap();
    assert!(
        matches!(e, cosnap_wbem::ServeError::PlainHttpNotLoopback(_)),
        "{e}"
    );
}

/// A WS-Man Get of a job, as pypsrp sends it.
fn wsman_get(job_id: &str) -> String {
    format!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:wsman="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><s:Header><wsa:Action s:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/09/transfer/Get</wsa:Action><wsa:MessageID>uuid:5A0C3B9E-1111-4222-8333-444455556666</wsa:MessageID><wsa:ReplyTo><wsa:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:Address></wsa:ReplyTo><wsman:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/Msvm_ConcreteJob</wsman:ResourceURI><wsman:SelectorSet><wsman:Selector Name="InstanceID">{job_id}</wsman:Selector></wsman:SelectorSet></s:Header><s:Body/></s:Envelope>"#
    )
}

#[test]
fn wsman_on_the_same_listener_with_the_same_users() {
    let srv = start();
    let a = basic_auth("u", "p w");
    let soap = "application/soap+xml;charset=UTF-8";

    let (status, h, body) = post_to(
        srv.port,
        "/wsman",
        &[("Content-Type", soap), ("Authorization", &a)],
        &wsman_get("J-1"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&h, "content-type"), Some(soap));
    assert!(body.contains("<p:JobState>7</p:JobState>"), "{body}");
    assert!(body.contains(
        "<wsa:RelatesTo s:mustUnderstand=\"true\">uuid:5A0C3B9E-1111-4222-8333-444455556666</wsa:RelatesTo>"
    ));

    // No Content-Type at all (python-dracclient) is served.
    let (status, _, _) = post_to(
        srv.port,
        "/wsman",
        &[("Authorization", &a)],
        &wsman_get("J-1"),
    );
    assert_eq!(status, 200);

    // A fault: HTTP 500 with a SOAP body.
    let (status, h, body) = post_to(
        srv.port,
        "/wsman",
        &[("Content-Type", soap), ("Authorization", &a)],
        &wsman_get("J-404"),
    );
    assert_eq!(status, 500);
    assert_eq!(header(&h, "content-type"), Some(soap));
    assert!(
        body.contains("<s:Value>wsa:DestinationUnreachable</s:Value>"),
        "{body}"
    );

    // A media type that is not SOAP.
    let (status, _, _) = post_to(
        srv.port,
        "/wsman",
        &[("Content-Type", "text/plain"), ("Authorization", &a)],
        &wsman_get("J-1"),
    );
    assert_eq!(status, 415);

    // Bad credentials: 401 with the Basic challenge, before the body is looked at.
    let bad = basic_auth("u", "wrong");
    let (status, h, _) = post_to(
        srv.port,
        "/wsman",
        &[("Content-Type", soap), ("Authorization", &bad)],
        &wsman_get("J-1"),
    );
    assert_eq!(status, 401);
    assert_eq!(
        header(&h, "www-authenticate"),
        Some("Basic realm=\"cosnap\"")
    );
}
