//! Method calls recorded from the real clients (pywbem 1.9.1 and sblim-wbemcli 1.6.3, see
//! `tests/interop/test_mof.py`, which keeps `tests/interop/golden/client-requests.xml`
//! current) decode with cosnap's codec to the same typed parameters: pywbem sends
//! PARAMTYPE, local paths and an escaped embedded instance; wbemcli sends no PARAMTYPE,
//! host-qualified references and no TYPE on KEYVALUEs.

use cosnap_cim::xml::{self, elements, parse_paramvalue, parse_path_element, tag, type_path_keys};
use cosnap_cim::{ObjectPath, Value, schema};

struct Call {
    client: String,
    method: String,
    target: ObjectPath,
    params: Vec<(String, Option<Value>)>,
}

fn calls() -> Vec<Call> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/interop/golden/client-requests.xml"
    ))
    .unwrap();
    let golden = xml::parse_document(&text).unwrap();
    let mut out = Vec::new();
    for req in elements(golden.root_element()) {
        let body = xml::text_of(&req);
        let doc = xml::parse_document(&body).unwrap();
        let call = doc
            .descendants()
            .find(|n| n.has_tag_name("METHODCALL"))
            .unwrap();
        let method = call.attribute("NAME").unwrap().to_string();
        let mut parts = elements(call);
        let mut target = parse_path_element(parts.next().unwrap()).unwrap();
        let class = schema().class(&target.class_name).unwrap();
        type_path_keys(&mut target, class).unwrap();
        let def = class.method(&method).unwrap();
        let params = parts
            .map(|p| {
                assert_eq!(tag(&p), "PARAMVALUE");
                let pv = parse_paramvalue(p).unwrap();
                let name = pv.name.clone();
                (name.clone(), pv.typed(def.parameter(&name)).unwrap())
            })
            .collect();
        out.push(Call {
            client: req.attribute("CLIENT").unwrap().into(),
            method,
            target,
            params,
        });
    }
    out
}

fn param<'a>(c: &'a Call, name: &str) -> Option<&'a Value> {
    c.params
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_ref())
}

#[test]
fn both_clients_decode_to_the_same_call() {
    let calls = calls();
    assert_eq!(calls.len(), 4);
    let svc = ObjectPath::new("Msvm_CollectionSnapshotService")
        .with_namespace("root/virtualization/v2")
        .with_key(
            "CreationClassName",
            Value::String("Msvm_CollectionSnapshotService".into()),
        )
        .with_key("Name", Value::String("cosnap-collsnap".into()))
        .with_key(
            "SystemCreationClassName",
            Value::String("Msvm_ComputerSystem".into()),
        )
        .with_key("SystemName", Value::String("cosnap-host".into()));
    for c in &calls {
        assert_eq!(c.target, svc, "{}", c.client);
        match c.method.as_str() {
            "ExportSnapshot" => {
                let sc = param(c, "SnapshotCollection")
                    .unwrap()
                    .as_reference()
                    .unwrap();
                assert_eq!(
                    (sc.class_name.as_str(), sc.key_str("CollectionID")),
                    ("Msvm_SnapshotCollection", Some("SC-7"))
                );
                assert_eq!(sc.namespace.as_deref(), Some("root/virtualization/v2"));
                assert_eq!(sc.host, None, "HOST is ignored");
                assert_eq!(
                    param(c, "ExportDirectory"),
                    Some(&Value::String("/srv/export".into()))
                );
                if c.client == "pywbem" {
                    let esd = param(c, "ExportSettingData")
                        .unwrap()
                        .as_instance()
                        .unwrap();
                    assert_eq!(esd.class_name, "Msvm_CollectionSnapshotExportSettingData");
                    assert_eq!(esd.get("CopyVmStorage"), Some(&Value::Boolean(true)));
                    assert_eq!(esd.get("BackupIntent"), Some(&Value::Uint16(1)));
                    let base = cosnap_cim::path_text::parse(
                        esd.get("DifferentialBackupBase").unwrap().as_str().unwrap(),
                    )
                    .unwrap();
                    assert_eq!(base.key_str("VirtualSystemCollectionId"), Some("g-1"));
                }
            }
            "CreateSnapshot" => {
                let coll = param(c, "Collection").unwrap().as_reference().unwrap();
                assert_eq!(coll.key_str("CollectionID"), Some("G-1"));
                // wbemcli sends "2" untyped; the schema makes it a uint16.
                assert_eq!(
                    param(c, "SnapshotType"),
                    Some(&Value::Uint16(2)),
                    "{}",
                    c.client
                );
                assert_eq!(param(c, "SnapshotSettings"), None, "empty = no settings");
            }
            m => panic!("unexpected {m}"),
        }
    }
}
