//! Renders every class of the schema (and sample instances, names and references) as
//! CIM-XML into `tests/interop/golden/cosnap-cim.xml`. The file is committed; this test
//! fails when the output changes without the file being regenerated
//! (`COSNAP_UPDATE_GOLDEN=1 cargo test -p cosnap-cim --test golden`), and
//! `tests/interop/test_mof.py` checks the same file against pywbem 1.9.1: its strict
//! CIM-XML parser must accept every element, and every class must equal what pywbem's
//! MOF compiler makes of `schema/cosnap.mof`.

use cosnap_cim::xml::{self, ClassFlags};
use cosnap_cim::{CimType, Instance, ObjectPath, Value, schema};

fn render() -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GOLDEN>\n");
    let combos = [
        (
            "full",
            ClassFlags {
                local_only: false,
                include_qualifiers: true,
                include_class_origin: true,
            },
        ),
        (
            "plain",
            ClassFlags {
                local_only: false,
                include_qualifiers: false,
                include_class_origin: false,
            },
        ),
        (
            "local",
            ClassFlags {
                local_only: true,
                include_qualifiers: true,
                include_class_origin: false,
            },
        ),
    ];
    // Every class in full; the other flag combinations for a few (keeps the file small).
    let few = [
        "Msvm_CollectionSnapshotService",
        "Msvm_ConcreteJob",
        "Msvm_CollectedSnapshots",
        "CIM_ConcreteJob",
    ];
    for class in schema().classes() {
        for (label, flags) in combos {
            if label != "full" && !few.contains(&class.name.as_str()) {
                continue;
            }
            out.push_str(&format!(
                "<GETCLASS NAME=\"{}\" FLAGS=\"{label}\">",
                class.name
            ));
            xml::write_class(&mut out, class, flags);
            out.push_str("</GETCLASS>\n");
        }
    }
    let ns = "root/virtualization/v2";
    let job =
        ObjectPath::new("Msvm_ConcreteJob").with_key("InstanceID", Value::String("J-1".into()));
    let esd = Instance::new("Msvm_CollectionSnapshotExportSettingData")
        .with(
            "CopyVmStorage",
            CimType::Boolean,
            Some(Value::Boolean(true)),
        )
        .with("BackupIntent", CimType::Uint16, Some(Value::Uint16(1)));
    let err = Instance::new("Msvm_Error")
        .with(
            "Message",
            CimType::String,
            Some(Value::String("disk <1> & \"2\" failed".into())),
        )
        .with("CIMStatusCode", CimType::Uint32, Some(Value::Uint32(4)))
        .with(
            "MessageArguments",
            CimType::String,
            Some(Value::Array(vec![Value::String("a".into())])),
        );
    let inst = Instance::new("Msvm_ConcreteJob")
        .with(
            "InstanceID",
            CimType::String,
            Some(Value::String("J-1".into())),
        )
        .with("JobState", CimType::Uint16, Some(Value::Uint16(7)))
        .with("PercentComplete", CimType::Uint16, Some(Value::Uint16(100)))
        .with(
            "ElapsedTime",
            CimType::Datetime,
            Some(Value::Datetime("00000000000001.250000:000".into())),
        )
        .with(
            "TimeSubmitted",
            CimType::Datetime,
            Some(Value::Datetime("20261125063001.123456+000".into())),
        )
        .with("Cancellable", CimType::Boolean, Some(Value::Boolean(false)))
        .with("ErrorDescription", CimType::String, None)
        .with(
            "OperationalStatus",
            CimType::Uint16,
            Some(Value::Array(vec![Value::Uint16(2)])),
        )
        .with(
            "Settings",
            CimType::String,
            Some(Value::Instance(Box::new(esd))),
        )
        .with(
            "Error",
            CimType::String,
            Some(Value::Instance(Box::new(err))),
        )
        .with_path(job.clone().with_namespace(ns));
    let assoc = Instance::new("Msvm_AffectedJobElement")
        .with(
            "AffectedElement",
            CimType::Reference,
            Some(Value::Reference(
                ObjectPath::new("Msvm_SnapshotCollection")
                    .with_namespace(ns)
                    .with_key("CollectionID", Value::String("c\\\"1".into())),
            )),
        )
        .with(
            "AffectingElement",
            CimType::Reference,
            Some(Value::Reference(job.clone().with_namespace(ns))),
        )
        .with(
            "ElementEffects",
            CimType::Uint16,
            Some(Value::Array(vec![Value::Uint16(5)])),
        );
    out.push_str("<SAMPLE NAME=\"instance\">");
    xml::write_instance(&mut out, &inst);
    out.push_str("</SAMPLE>\n<SAMPLE NAME=\"association\">");
    xml::write_instance(&mut out, &assoc);
    out.push_str("</SAMPLE>\n<SAMPLE NAME=\"namedinstance\">");
    xml::write_named_instance(&mut out, &inst);
    out.push_str("</SAMPLE>\n<SAMPLE NAME=\"objectwithpath\">");
    xml::write_object_with_path(&mut out, &inst, "cosnap-host", ns);
    out.push_str("</SAMPLE>\n<SAMPLE NAME=\"instancename\">");
    let multi = ObjectPath::new("Msvm_CollectionSnapshotService")
        .with_key(
            "CreationClassName",
            Value::String("Msvm_CollectionSnapshotService".into()),
        )
        .with_key("Name", Value::String("cosnap-collsnap".into()))
        .with_key("Num", Value::Uint32(5))
        .with_key("Flag", Value::Boolean(true))
        .with_key("Ref", Value::Reference(job.clone().with_namespace(ns)));
    xml::write_instance_name(&mut out, &multi);
    out.push_str("</SAMPLE>\n<SAMPLE NAME=\"reference-host\">");
    xml::write_value_reference(
        &mut out,
        &ObjectPath {
            host: Some("cosnap-host".into()),
            ..job.clone().with_namespace(ns)
        },
    );
    out.push_str("</SAMPLE>\n<SAMPLE NAME=\"reference-local\">");
    xml::write_value_reference(&mut out, &job.clone().with_namespace(ns));
    out.push_str("</SAMPLE>\n<SAMPLE NAME=\"reference-class\">");
    xml::write_value_reference(
        &mut out,
        &ObjectPath::new("Msvm_ConcreteJob").with_namespace(ns),
    );
    out.push_str("</SAMPLE>\n");
    out.push_str("</GOLDEN>\n");
    out
}

#[test]
fn golden_cim_xml_is_current() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/interop/golden/cosnap-cim.xml"
    );
    let now = render();
    if std::env::var_os("COSNAP_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &now).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == now,
        "{path} is out of date: run COSNAP_UPDATE_GOLDEN=1 cargo test -p cosnap-cim --test golden"
    );
    // And it is well-formed for our own parser.
    xml::parse_document(&now).unwrap();
}
