use super::*;
use proptest::prelude::*;

fn doc(text: &str) -> Document<'_> {
    parse_document(text).unwrap()
}

fn svc_def() -> &'static ClassDef {
    crate::schema::schema()
        .class("Msvm_CollectionSnapshotService")
        .unwrap()
}

#[test]
fn scalars_are_range_checked() {
    assert_eq!(
        parse_scalar("70", CimType::Uint16).unwrap(),
        Value::Uint16(70)
    );
    assert_eq!(
        parse_scalar(" 65535 ", CimType::Uint16).unwrap(),
        Value::Uint16(65535)
    );
    let e = parse_scalar("70000", CimType::Uint16).unwrap_err();
    assert_eq!(e.to_string(), "expected uint16, got \"70000\"");
    assert!(parse_scalar("-1", CimType::Uint32).is_err());
    assert_eq!(
        parse_scalar("-128", CimType::Sint8).unwrap(),
        Value::Sint8(-128)
    );
    assert!(parse_scalar("-129", CimType::Sint8).is_err());
    assert!(parse_scalar("1.5", CimType::Uint8).is_err());
    assert!(parse_scalar("0x10", CimType::Uint8).is_err());
    assert_eq!(
        parse_scalar("18446744073709551615", CimType::Uint64).unwrap(),
        Value::Uint64(u64::MAX)
    );
    assert_eq!(
        parse_scalar("true", CimType::Boolean).unwrap(),
        Value::Boolean(true)
    );
    assert_eq!(
        parse_scalar("FALSE", CimType::Boolean).unwrap(),
        Value::Boolean(false)
    );
    assert!(parse_scalar("yes", CimType::Boolean).is_err());
    assert_eq!(
        parse_scalar("x", CimType::Char16).unwrap(),
        Value::Char16('x')
    );
    assert!(parse_scalar("xy", CimType::Char16).is_err());
    assert_eq!(
        parse_scalar("-INF", CimType::Real64).unwrap(),
        Value::Real64(f64::NEG_INFINITY)
    );
    assert_eq!(
        parse_scalar("2.5e3", CimType::Real32).unwrap(),
        Value::Real32(2500.0)
    );
    assert!(parse_scalar("inf", CimType::Real64).is_err());
    assert_eq!(
        parse_scalar(" a b ", CimType::String).unwrap(),
        Value::String(" a b ".into())
    );
    assert!(parse_scalar("20261125063001.123456+000", CimType::Datetime).is_ok());
    assert!(parse_scalar("yesterday", CimType::Datetime).is_err());
    let r = parse_scalar(
        r#"root/virtualization/v2:Msvm_ConcreteJob.InstanceID="J""#,
        CimType::Reference,
    )
    .unwrap();
    assert_eq!(r.as_reference().unwrap().key_str("InstanceID"), Some("J"));
}

#[test]
fn coercion() {
    assert_eq!(
        coerce_value(Value::Uint64(5), CimType::Uint16).unwrap(),
        Value::Uint16(5)
    );
    assert!(coerce_value(Value::Uint64(70000), CimType::Uint16).is_err());
    assert_eq!(
        coerce_value(Value::Sint64(-5), CimType::Sint8).unwrap(),
        Value::Sint8(-5)
    );
    assert_eq!(
        coerce_value(Value::String("7".into()), CimType::Uint8).unwrap(),
        Value::Uint8(7)
    );
    assert_eq!(
        coerce_value(Value::Uint8(7), CimType::Real64).unwrap(),
        Value::Real64(7.0)
    );
    let p = ObjectPath::new("C").with_key("K", Value::String("v".into()));
    assert_eq!(
        coerce_value(Value::Reference(p.clone()), CimType::String).unwrap(),
        Value::String(r#"C.K="v""#.into())
    );
    assert_eq!(
        coerce_value(Value::String(r#"C.K="v""#.into()), CimType::Reference).unwrap(),
        Value::Reference(p)
    );
    assert!(coerce_value(Value::Boolean(true), CimType::Uint8).is_err());
    assert_eq!(
        coerce_value(
            Value::Array(vec![Value::Uint64(1), Value::Uint64(2)]),
            CimType::Uint16
        )
        .unwrap(),
        Value::Array(vec![Value::Uint16(1), Value::Uint16(2)])
    );
}

#[test]
fn instance_name_forms() {
    // pywbem: VALUETYPE + TYPE
    let d = doc(
        r#"<INSTANCENAME CLASSNAME="Msvm_SnapshotCollection"><KEYBINDING NAME="CollectionID"><KEYVALUE VALUETYPE="string" TYPE="string">SC-7</KEYVALUE></KEYBINDING></INSTANCENAME>"#,
    );
    let p = parse_instance_name(d.root_element()).unwrap();
    assert_eq!(
        p,
        ObjectPath::new("Msvm_SnapshotCollection")
            .with_key("CollectionID", Value::String("SC-7".into()))
    );
    // wbemcli: VALUETYPE only; numeric and boolean keys
    let d = doc(
        r#"<INSTANCENAME CLASSNAME="C"><KEYBINDING NAME="A"><KEYVALUE VALUETYPE="numeric">12</KEYVALUE></KEYBINDING><KEYBINDING NAME="B"><KEYVALUE VALUETYPE="boolean">TRUE</KEYVALUE></KEYBINDING><KEYBINDING NAME="C"><KEYVALUE>plain</KEYVALUE></KEYBINDING><KEYBINDING NAME="D"><KEYVALUE VALUETYPE="numeric">-3</KEYVALUE></KEYBINDING></INSTANCENAME>"#,
    );
    let p = parse_instance_name(d.root_element()).unwrap();
    assert_eq!(p.key("A"), Some(&Value::Uint64(12)));
    assert_eq!(p.key("B"), Some(&Value::Boolean(true)));
    assert_eq!(p.key("C"), Some(&Value::String("plain".into())));
    assert_eq!(p.key("D"), Some(&Value::Sint64(-3)));
    // Reference-valued key
    let d = doc(
        r#"<INSTANCENAME CLASSNAME="Msvm_CollectedSnapshots"><KEYBINDING NAME="Collection"><VALUE.REFERENCE><INSTANCENAME CLASSNAME="Msvm_SnapshotCollection"><KEYBINDING NAME="CollectionID"><KEYVALUE>x</KEYVALUE></KEYBINDING></INSTANCENAME></VALUE.REFERENCE></KEYBINDING></INSTANCENAME>"#,
    );
    let p = parse_instance_name(d.root_element()).unwrap();
    assert_eq!(
        p.key("Collection")
            .unwrap()
            .as_reference()
            .unwrap()
            .key_str("CollectionID"),
        Some("x")
    );
    // Bad numeric key
    let d = doc(
        r#"<INSTANCENAME CLASSNAME="C"><KEYBINDING NAME="A"><KEYVALUE VALUETYPE="numeric">abc</KEYVALUE></KEYBINDING></INSTANCENAME>"#,
    );
    let e = parse_instance_name(d.root_element()).unwrap_err();
    assert!(e.to_string().starts_with("key A: expected"), "{e}");
    let d = doc(
        r#"<INSTANCENAME CLASSNAME="C"><KEYBINDING NAME="A"><KEYVALUE TYPE="uint8">300</KEYVALUE></KEYBINDING></INSTANCENAME>"#,
    );
    assert!(parse_instance_name(d.root_element()).is_err());
    let d = doc(
        r#"<INSTANCENAME><KEYBINDING NAME="A"><KEYVALUE>1</KEYVALUE></KEYBINDING></INSTANCENAME>"#,
    );
    assert!(matches!(
        parse_instance_name(d.root_element()).unwrap_err().kind,
        CodecErrorKind::MissingAttribute { .. }
    ));
}

#[test]
fn value_reference_forms_ignore_host() {
    let name = r#"<INSTANCENAME CLASSNAME="Msvm_ConcreteJob"><KEYBINDING NAME="InstanceID"><KEYVALUE VALUETYPE="string">J-1</KEYVALUE></KEYBINDING></INSTANCENAME>"#;
    let lns = r#"<LOCALNAMESPACEPATH><NAMESPACE NAME="root"/><NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH>"#;
    let want = ObjectPath::new("Msvm_ConcreteJob")
        .with_namespace("root/virtualization/v2")
        .with_key("InstanceID", Value::String("J-1".into()));
    for text in [
        format!(
            "<VALUE.REFERENCE><INSTANCEPATH><NAMESPACEPATH><HOST>127.0.0.1</HOST>{lns}</NAMESPACEPATH>{name}</INSTANCEPATH></VALUE.REFERENCE>"
        ),
        format!(
            "<VALUE.REFERENCE><LOCALINSTANCEPATH>{lns}{name}</LOCALINSTANCEPATH></VALUE.REFERENCE>"
        ),
    ] {
        assert_eq!(
            parse_value_reference(doc(&text).root_element()).unwrap(),
            want
        );
    }
    let bare = format!("<VALUE.REFERENCE>{name}</VALUE.REFERENCE>");
    assert_eq!(
        parse_value_reference(doc(&bare).root_element()).unwrap(),
        ObjectPath {
            namespace: None,
            ..want.clone()
        }
    );
    let cls = format!(
        r#"<VALUE.REFERENCE><LOCALCLASSPATH>{lns}<CLASSNAME NAME="Msvm_ConcreteJob"/></LOCALCLASSPATH></VALUE.REFERENCE>"#
    );
    assert_eq!(
        parse_value_reference(doc(&cls).root_element()).unwrap(),
        ObjectPath::new("Msvm_ConcreteJob").with_namespace("root/virtualization/v2")
    );
    let cn = r#"<VALUE.REFERENCE><CLASSNAME NAME="X"/></VALUE.REFERENCE>"#;
    assert_eq!(
        parse_value_reference(doc(cn).root_element()).unwrap(),
        ObjectPath::new("X")
    );
    let bad = r#"<VALUE.REFERENCE><VALUE>x</VALUE></VALUE.REFERENCE>"#;
    assert!(parse_value_reference(doc(bad).root_element()).is_err());
    let incomplete =
        format!("<VALUE.REFERENCE><LOCALINSTANCEPATH>{lns}</LOCALINSTANCEPATH></VALUE.REFERENCE>");
    assert!(parse_value_reference(doc(&incomplete).root_element()).is_err());
}

#[test]
fn paths_round_trip_through_xml() {
    let inner = ObjectPath::new("Msvm_ComputerSystem")
        .with_key(
            "CreationClassName",
            Value::String("Msvm_ComputerSystem".into()),
        )
        .with_key("Name", Value::String("a<b>&\"c'".into()));
    let p = ObjectPath::new("Msvm_SnapshotOfVirtualSystem")
        .with_namespace("root/virtualization/v2")
        .with_key(
            "Antecedent",
            Value::Reference(inner.clone().with_namespace("root/virtualization/v2")),
        )
        .with_key("N", Value::Uint16(7))
        .with_key("B", Value::Boolean(false));
    for host in [None, Some("cosnap-host".to_string())] {
        let p = ObjectPath {
            host: host.clone(),
            ..p.clone()
        };
        let mut out = String::new();
        write_value_reference(&mut out, &p);
        let back = parse_value_reference(doc(&out).root_element()).unwrap();
        // The host is not kept (ignored on input), everything else is.
        assert_eq!(
            back,
            ObjectPath {
                host: None,
                ..p.clone()
            },
            "{out}"
        );
    }
}

#[test]
fn paramvalues_pywbem_and_wbemcli() {
    let def = svc_def().method("ExportSnapshot").unwrap();
    // pywbem: typed, embedded instance escaped in VALUE
    let d = doc(r#"<METHODCALL NAME="ExportSnapshot">
      <PARAMVALUE NAME="SnapshotCollection" PARAMTYPE="reference"><VALUE.REFERENCE><INSTANCENAME CLASSNAME="Msvm_SnapshotCollection"><KEYBINDING NAME="CollectionID"><KEYVALUE VALUETYPE="string" TYPE="string">SC-7</KEYVALUE></KEYBINDING></INSTANCENAME></VALUE.REFERENCE></PARAMVALUE>
      <PARAMVALUE NAME="ExportDirectory" PARAMTYPE="string"><VALUE>/srv/export</VALUE></PARAMVALUE>
      <PARAMVALUE NAME="ExportSettingData" PARAMTYPE="string" EmbeddedObject="instance"><VALUE>&lt;INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"&gt;&lt;PROPERTY NAME="CopyVmStorage" TYPE="boolean"&gt;&lt;VALUE&gt;TRUE&lt;/VALUE&gt;&lt;/PROPERTY&gt;&lt;PROPERTY NAME="BackupIntent" TYPE="uint16"&gt;&lt;VALUE&gt;1&lt;/VALUE&gt;&lt;/PROPERTY&gt;&lt;/INSTANCE&gt;</VALUE></PARAMVALUE>
    </METHODCALL>"#);
    let params: Vec<ParamValue> = elements(d.root_element())
        .map(|n| parse_paramvalue(n).unwrap())
        .collect();
    assert_eq!(params[0].param_type, Some(CimType::Reference));
    assert!(params[2].embedded);
    let typed: Vec<Option<Value>> = params
        .into_iter()
        .map(|p| {
            let pd = def.parameter(&p.name);
            p.typed(pd).unwrap()
        })
        .collect();
    assert_eq!(
        typed[0]
            .as_ref()
            .unwrap()
            .as_reference()
            .unwrap()
            .key_str("CollectionID"),
        Some("SC-7")
    );
    assert_eq!(typed[1], Some(Value::String("/srv/export".into())));
    let esd = typed[2].as_ref().unwrap().as_instance().unwrap();
    assert_eq!(esd.class_name, "Msvm_CollectionSnapshotExportSettingData");
    assert_eq!(esd.get("copyvmstorage"), Some(&Value::Boolean(true)));
    assert_eq!(esd.get("BackupIntent"), Some(&Value::Uint16(1)));

    // wbemcli: no PARAMTYPE, host-qualified reference; typing comes from the class
    let d = doc(r#"<METHODCALL NAME="CreateSnapshot">
      <PARAMVALUE NAME="Collection"><VALUE.REFERENCE><INSTANCEPATH><NAMESPACEPATH><HOST>127.0.0.1</HOST><LOCALNAMESPACEPATH><NAMESPACE NAME="root"/><NAMESPACE NAME="virtualization"/><NAMESPACE NAME="v2"/></LOCALNAMESPACEPATH></NAMESPACEPATH><INSTANCENAME CLASSNAME="Msvm_VirtualSystemCollection"><KEYBINDING NAME="CollectionID"><KEYVALUE VALUETYPE="string">G</KEYVALUE></KEYBINDING></INSTANCENAME></INSTANCEPATH></VALUE.REFERENCE></PARAMVALUE>
      <PARAMVALUE NAME="SnapshotType"><VALUE>2</VALUE></PARAMVALUE>
      <PARAMVALUE NAME="SnapshotSettings"><VALUE></VALUE></PARAMVALUE>
    </METHODCALL>"#);
    let def = svc_def().method("CreateSnapshot").unwrap();
    let typed: Vec<(String, Option<Value>)> = elements(d.root_element())
        .map(|n| {
            let p = parse_paramvalue(n).unwrap();
            (
                p.name.clone(),
                p.clone().typed(def.parameter(&p.name)).unwrap(),
            )
        })
        .collect();
    let coll = typed[0].1.as_ref().unwrap().as_reference().unwrap();
    assert_eq!(
        (coll.host.as_deref(), coll.namespace.as_deref()),
        (None, Some("root/virtualization/v2"))
    );
    assert_eq!(typed[1].1, Some(Value::Uint16(2)));
    assert_eq!(typed[2].1, None, "empty SnapshotSettings = no settings");

    // wrong types are typed errors naming the parameter
    let d = doc(r#"<PARAMVALUE NAME="SnapshotType"><VALUE>70000</VALUE></PARAMVALUE>"#);
    let e = parse_paramvalue(d.root_element())
        .unwrap()
        .typed(def.parameter("SnapshotType"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "SnapshotType: expected uint16, got \"70000\""
    );
    let d = doc(r#"<PARAMVALUE NAME="Collection"><VALUE>not a path</VALUE></PARAMVALUE>"#);
    assert!(
        parse_paramvalue(d.root_element())
            .unwrap()
            .typed(def.parameter("Collection"))
            .is_err()
    );
    let d = doc(
        r#"<PARAMVALUE NAME="SnapshotType"><VALUE.ARRAY><VALUE>1</VALUE></VALUE.ARRAY></PARAMVALUE>"#,
    );
    assert!(
        parse_paramvalue(d.root_element())
            .unwrap()
            .typed(def.parameter("SnapshotType"))
            .is_err()
    );
    let d = doc(r#"<PARAMVALUE NAME="X" PARAMTYPE="uint99"><VALUE>1</VALUE></PARAMVALUE>"#);
    assert!(parse_paramvalue(d.root_element()).is_err());

    // Embedded instance given as an INSTANCE element (DSP0230-style) and an array param
    let d = doc(
        r#"<PARAMVALUE NAME="ExportSettingData"><INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"><PROPERTY NAME="CopyVmStorage" TYPE="boolean"><VALUE>false</VALUE></PROPERTY></INSTANCE></PARAMVALUE>"#,
    );
    let v = parse_paramvalue(d.root_element())
        .unwrap()
        .typed(
            svc_def()
                .method("ExportSnapshot")
                .unwrap()
                .parameter("ExportSettingData"),
        )
        .unwrap();
    assert_eq!(
        v.unwrap().as_instance().unwrap().get("CopyVmStorage"),
        Some(&Value::Boolean(false))
    );
    let vsms = crate::schema::schema()
        .class("Msvm_VirtualSystemManagementService")
        .unwrap();
    let rs = vsms
        .method("DefineSystem")
        .unwrap()
        .parameter("ResourceSettings")
        .unwrap();
    let d = doc(
        r#"<PARAMVALUE NAME="ResourceSettings" PARAMTYPE="string" EmbeddedObject="instance"><VALUE.ARRAY><VALUE>&lt;INSTANCE CLASSNAME="Msvm_ProcessorSettingData"&gt;&lt;PROPERTY NAME="VirtualQuantity" TYPE="uint64"&gt;&lt;VALUE&gt;2&lt;/VALUE&gt;&lt;/PROPERTY&gt;&lt;/INSTANCE&gt;</VALUE><VALUE.NULL/></VALUE.ARRAY></PARAMVALUE>"#,
    );
    let v = parse_paramvalue(d.root_element())
        .unwrap()
        .typed(Some(rs))
        .unwrap()
        .unwrap();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].as_instance().unwrap().get("VirtualQuantity"),
        Some(&Value::Uint64(2))
    );
}

#[test]
fn embedded_params_are_typed_by_the_schema() {
    let def = svc_def()
        .method("ExportSnapshot")
        .unwrap()
        .parameter("ExportSettingData");
    let param = |esd: &str| {
        let text = format!(
            r#"<PARAMVALUE NAME="ExportSettingData" PARAMTYPE="string" EmbeddedObject="instance"><VALUE>{}</VALUE></PARAMVALUE>"#,
            escape_text(esd)
        );
        let d = parse_document(&text).unwrap();
        parse_paramvalue(d.root_element()).unwrap().typed(def)
    };
    // untyped (WMI flavour) and narrower-typed (per-VM uint8) BackupIntent both become uint16
    for esd in [
        r#"<INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"><PROPERTY NAME="BackupIntent"><VALUE>2</VALUE></PROPERTY></INSTANCE>"#,
        r#"<INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"><PROPERTY NAME="backupintent" TYPE="uint8"><VALUE>2</VALUE></PROPERTY></INSTANCE>"#,
    ] {
        let v = param(esd).unwrap().unwrap();
        assert_eq!(
            v.as_instance().unwrap().get("BackupIntent"),
            Some(&Value::Uint16(2))
        );
    }
    let e = param(r#"<INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"><PROPERTY NAME="BackupIntent"><VALUE>abc</VALUE></PROPERTY></INSTANCE>"#)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "ExportSettingData: property BackupIntent: expected uint16, got \"abc\""
    );
    let e = param("<INSTANCE").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("ExportSettingData: not well-formed XML"),
        "{e}"
    );
}

#[test]
fn untyped_params_without_definition() {
    let d = doc(r#"<PARAMVALUE NAME="X"><VALUE>5</VALUE></PARAMVALUE>"#);
    assert_eq!(
        parse_paramvalue(d.root_element())
            .unwrap()
            .typed(None)
            .unwrap(),
        Some(Value::String("5".into()))
    );
    let d = doc(r#"<PARAMVALUE NAME="X" PARAMTYPE="uint8"><VALUE>5</VALUE></PARAMVALUE>"#);
    assert_eq!(
        parse_paramvalue(d.root_element())
            .unwrap()
            .typed(None)
            .unwrap(),
        Some(Value::Uint8(5))
    );
    let d = doc(r#"<PARAMVALUE NAME="X"/>"#);
    assert_eq!(
        parse_paramvalue(d.root_element())
            .unwrap()
            .typed(None)
            .unwrap(),
        None
    );
}

fn sample_instance() -> Instance {
    let job = ObjectPath::new("Msvm_ConcreteJob")
        .with_namespace("root/virtualization/v2")
        .with_key("InstanceID", Value::String("J-1".into()));
    let esd = Instance::new("Msvm_CollectionSnapshotExportSettingData")
        .with("CopyVmStorage", CimType::Boolean, Some(Value::Boolean(true)))
        .with("DifferentialBackupBase", CimType::String, Some(Value::String(r#"\\H\root\virtualization\v2:Msvm_ReferencePointCollection.CollectionID="a",VirtualSystemCollectionId="b""#.into())));
    Instance::new("Cosnap_Test")
        .with(
            "S",
            CimType::String,
            Some(Value::String("a<b>&c \"q\" 'x'\r\n\ttab".into())),
        )
        .with("U8", CimType::Uint8, Some(Value::Uint8(255)))
        .with("S64", CimType::Sint64, Some(Value::Sint64(i64::MIN)))
        .with("R", CimType::Real64, Some(Value::Real64(0.1)))
        .with("B", CimType::Boolean, Some(Value::Boolean(false)))
        .with("C", CimType::Char16, Some(Value::Char16('é')))
        .with(
            "D",
            CimType::Datetime,
            Some(Value::Datetime("20261125063001.123456+000".into())),
        )
        .with("Null", CimType::Uint16, None)
        .with(
            "Arr",
            CimType::Uint16,
            Some(Value::Array(vec![Value::Uint16(1), Value::Uint16(2)])),
        )
        .with(
            "SArr",
            CimType::String,
            Some(Value::Array(vec![
                Value::String("x".into()),
                Value::String("".into()),
            ])),
        )
        .with("Ref", CimType::Reference, Some(Value::Reference(job)))
        .with("Emb", CimType::String, Some(Value::Instance(Box::new(esd))))
}

#[test]
fn instance_round_trip() {
    let inst = sample_instance();
    let mut out = String::new();
    write_instance(&mut out, &inst);
    assert!(
        out.contains(
            r#"<PROPERTY NAME="Emb" TYPE="string" EmbeddedObject="instance"><VALUE>&lt;INSTANCE"#
        ),
        "{out}"
    );
    assert!(
        out.contains(r#"<PROPERTY.REFERENCE NAME="Ref"><VALUE.REFERENCE><LOCALINSTANCEPATH>"#),
        "{out}"
    );
    assert!(
        out.contains(r#"<PROPERTY NAME="Null" TYPE="uint16"></PROPERTY>"#),
        "{out}"
    );
    assert!(
        out.contains(r#"<PROPERTY.ARRAY NAME="Arr" TYPE="uint16"><VALUE.ARRAY><VALUE>1</VALUE>"#),
        "{out}"
    );
    let back = parse_instance(doc(&out).root_element(), None).unwrap();
    let mut want = inst.clone();
    // Decoded embedded instances record their class.
    for p in &mut want.properties {
        if p.name == "Emb" {
            p.embedded_class = Some("Msvm_CollectionSnapshotExportSettingData".into());
        }
    }
    assert_eq!(back, want);
}

#[test]
fn instance_typed_by_class() {
    let class = crate::schema::schema()
        .class("Msvm_CollectionSnapshotExportSettingData")
        .unwrap();
    // WMI flavour: no TYPE, other case, qualifiers, system properties, extra attributes
    let d = doc(
        r#"<INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData" xml:lang="en-US">
      <QUALIFIER NAME="dynamic" TYPE="boolean" TOSUBCLASS="false"><VALUE>TRUE</VALUE></QUALIFIER>
      <PROPERTY NAME="__CLASS" CLASSORIGIN="___SYSTEM" TYPE="string"><VALUE>Msvm_CollectionSnapshotExportSettingData</VALUE></PROPERTY>
      <PROPERTY NAME="backupintent" CLASSORIGIN="Msvm_CollectionSnapshotExportSettingData" PROPAGATED="false"><QUALIFIER NAME="CIMTYPE" TYPE="string"><VALUE>uint16</VALUE></QUALIFIER><VALUE>2</VALUE></PROPERTY>
      <PROPERTY NAME="CopyVmStorage" TYPE="boolean" MODIFIED="TRUE"><VALUE>true</VALUE></PROPERTY>
      <PROPERTY NAME="Unknown" TYPE="uint8"><VALUE>9</VALUE></PROPERTY>
    </INSTANCE>"#,
    );
    let inst = parse_instance(d.root_element(), Some(class)).unwrap();
    assert!(inst.property("__CLASS").is_none());
    let bi = inst.property("BackupIntent").unwrap();
    assert_eq!(
        (bi.name.as_str(), bi.ty, &bi.value),
        ("BackupIntent", CimType::Uint16, &Some(Value::Uint16(2)))
    );
    assert_eq!(inst.get("CopyVmStorage"), Some(&Value::Boolean(true)));
    assert_eq!(inst.get("Unknown"), Some(&Value::Uint8(9)));
    // uint8 on the wire is widened to the class's uint16; out-of-range and junk are errors
    let d = doc(
        r#"<INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"><PROPERTY NAME="BackupIntent" TYPE="uint8"><VALUE>1</VALUE></PROPERTY></INSTANCE>"#,
    );
    assert_eq!(
        parse_instance(d.root_element(), Some(class))
            .unwrap()
            .get("BackupIntent"),
        Some(&Value::Uint16(1))
    );
    let d = doc(
        r#"<INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"><PROPERTY NAME="BackupIntent"><VALUE>abc</VALUE></PROPERTY></INSTANCE>"#,
    );
    let e = parse_instance(d.root_element(), Some(class)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "property BackupIntent: expected uint16, got \"abc\""
    );
    let d = doc(
        r#"<INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"><PROPERTY NAME="CopyVmStorage" TYPE="boolean"><VALUE>maybe</VALUE></PROPERTY></INSTANCE>"#,
    );
    assert!(parse_instance(d.root_element(), Some(class)).is_err());
}

#[test]
fn hostile_elements() {
    // Too many attributes
    let attrs: String = (0..200).map(|i| format!(" a{i}=\"x\"")).collect();
    let text = format!(r#"<INSTANCE CLASSNAME="C"{attrs}/>"#);
    let e = parse_document(&text).unwrap_err();
    assert!(
        matches!(
            e.kind,
            CodecErrorKind::TooMany {
                what: "attributes on one element",
                ..
            }
        ),
        "{e}"
    );
    // References nested in keys beyond MAX_DEPTH
    let mut text = String::from(
        r#"<INSTANCENAME CLASSNAME="C"><KEYBINDING NAME="K"><KEYVALUE>x</KEYVALUE></KEYBINDING></INSTANCENAME>"#,
    );
    for _ in 0..MAX_DEPTH + 2 {
        text = format!(
            r#"<INSTANCENAME CLASSNAME="C"><KEYBINDING NAME="R"><VALUE.REFERENCE>{text}</VALUE.REFERENCE></KEYBINDING></INSTANCENAME>"#
        );
    }
    let e = parse_instance_name(doc(&text).root_element()).unwrap_err();
    assert!(e.to_string().contains("nested deeper"), "{e}");
    // Deep generic nesting is refused before a tree is built (no stack overflow)
    let deep = format!(
        "{}{}",
        "<VALUE.ARRAY>".repeat(50_000),
        "</VALUE.ARRAY>".repeat(50_000)
    );
    assert!(matches!(
        parse_document(&deep).unwrap_err().kind,
        CodecErrorKind::TooDeep { .. }
    ));
    let deep = format!("<A x='>'>{}", "<B>".repeat(MAX_XML_DEPTH + 5));
    assert!(matches!(
        parse_document(&deep).unwrap_err().kind,
        CodecErrorKind::TooDeep { .. }
    ));
    // Self-closing tags, comments and quoted '>' do not count
    let flat = format!(
        "<A>{}<!-- <B><B> --><![CDATA[<B><B>]]></A>",
        "<B x=\"/>\"/>".repeat(MAX_XML_DEPTH + 5)
    );
    parse_document(&flat).unwrap();
    let ok = format!(
        "{}{}",
        "<B>".repeat(MAX_XML_DEPTH - 1),
        "</B>".repeat(MAX_XML_DEPTH - 1)
    );
    parse_document(&ok).unwrap();
    // Billion laughs: DTDs are refused outright
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><VALUE>&lol3;</VALUE>"#;
    assert!(matches!(
        parse_document(bomb).unwrap_err().kind,
        CodecErrorKind::Xml(_)
    ));
    // Oversize
    let big = "x".repeat(MAX_DOCUMENT_BYTES + 1);
    assert!(matches!(
        parse_document(&big).unwrap_err().kind,
        CodecErrorKind::TooLarge { .. }
    ));
    // Unknown child in a VALUE.ARRAY
    let d = doc("<VALUE.ARRAY><VALUE>1</VALUE><FOO/></VALUE.ARRAY>");
    assert!(parse_raw_value(d.root_element()).is_err());
}

#[test]
fn class_writer_honours_flags() {
    let class = svc_def();
    let mut all = String::new();
    write_class(
        &mut all,
        class,
        ClassFlags {
            local_only: false,
            include_qualifiers: true,
            include_class_origin: true,
        },
    );
    assert!(
        all.starts_with(
            r#"<CLASS NAME="Msvm_CollectionSnapshotService" SUPERCLASS="CIM_Service">"#
        ),
        "{all}"
    );
    assert!(all.contains(r#"<PROPERTY NAME="SystemName" TYPE="string" CLASSORIGIN="CIM_Service" PROPAGATED="true"><QUALIFIER NAME="Key" TYPE="boolean" PROPAGATED="true" OVERRIDABLE="false"><VALUE>TRUE</VALUE></QUALIFIER>"#), "{all}");
    assert!(all.contains(r#"<METHOD NAME="ExportSnapshot" TYPE="uint32" CLASSORIGIN="Msvm_CollectionSnapshotService">"#), "{all}");
    assert!(all.contains(r#"<PARAMETER.REFERENCE NAME="SnapshotCollection" REFERENCECLASS="CIM_Collection"><QUALIFIER NAME="In" TYPE="boolean" OVERRIDABLE="false"><VALUE>TRUE</VALUE></QUALIFIER></PARAMETER.REFERENCE>"#), "{all}");
    assert!(all.contains(r#"<QUALIFIER NAME="EmbeddedInstance" TYPE="string"><VALUE>Msvm_CollectionSnapshotExportSettingData</VALUE></QUALIFIER>"#), "{all}");
    assert!(all.contains(r#"<METHOD NAME="StartService" TYPE="uint32" CLASSORIGIN="CIM_Service" PROPAGATED="true">"#), "{all}");
    let mut local = String::new();
    write_class(
        &mut local,
        class,
        ClassFlags {
            local_only: true,
            include_qualifiers: false,
            include_class_origin: false,
        },
    );
    assert!(
        !local.contains("QUALIFIER")
            && !local.contains("CLASSORIGIN")
            && !local.contains("StartService"),
        "{local}"
    );
    assert!(local.contains(r#"<METHOD NAME="CreateSnapshot" TYPE="uint32"><PARAMETER.REFERENCE NAME="Collection" REFERENCECLASS="CIM_CollectionOfMSEs"></PARAMETER.REFERENCE>"#), "{local}");
    assert!(!local.contains("<PROPERTY"), "{local}");
    let job = crate::schema::schema().class("Msvm_ConcreteJob").unwrap();
    let mut j = String::new();
    write_class(
        &mut j,
        job,
        ClassFlags {
            local_only: false,
            include_qualifiers: false,
            include_class_origin: false,
        },
    );
    assert!(
        j.contains(r#"<PARAMETER.ARRAY NAME="Errors" TYPE="string"></PARAMETER.ARRAY>"#),
        "{j}"
    );
    assert!(j.contains(r#"<PROPERTY NAME="TimeBeforeRemoval" TYPE="datetime" PROPAGATED="true"><VALUE>00000000000500.000000:000</VALUE></PROPERTY>"#), "{j}");
    assert!(j.contains(r#"<PROPERTY.ARRAY NAME="OperationalStatus" TYPE="uint16" PROPAGATED="true"></PROPERTY.ARRAY>"#), "{j}");
    // Every class in the schema writes well-formed XML
    for c in crate::schema::schema().classes() {
        let mut s = String::new();
        write_class(
            &mut s,
            c,
            ClassFlags {
                local_only: false,
                include_qualifiers: true,
                include_class_origin: true,
            },
        );
        parse_document(&s).unwrap();
    }
}

#[test]
fn escaping() {
    assert_eq!(escape_text("a<b>&c\"'"), "a&lt;b&gt;&amp;c\"'");
    assert_eq!(escape_attr("a<\"'\n"), "a&lt;&quot;&apos;&#10;");
    assert_eq!(escape_text("\u{1}x\r"), "\u{FFFD}x&#13;");
    assert!(matches!(escape_text("plain"), Cow::Borrowed(_)));
}

proptest! {
    #[test]
    fn string_values_survive(s in "\\PC{0,64}") {
        let inst = Instance::new("C").with("S", CimType::String, Some(Value::String(s.clone())));
        let mut out = String::new();
        write_instance(&mut out, &inst);
        let back = parse_instance(doc(&out).root_element(), None).unwrap();
        prop_assert_eq!(back.get("S"), Some(&Value::String(s)));
    }

    #[test]
    fn integers_survive(n in any::<i64>(), m in any::<u32>()) {
        let inst = Instance::new("C")
            .with("A", CimType::Sint64, Some(Value::Sint64(n)))
            .with("B", CimType::Uint32, Some(Value::Uint32(m)));
        let mut out = String::new();
        write_instance(&mut out, &inst);
        prop_assert_eq!(parse_instance(doc(&out).root_element(), None).unwrap(), inst);
    }

    #[test]
    fn parser_never_panics(s in "<[A-Z.]{1,12}( [A-Z]{1,8}=\"[^\"<&]{0,8}\"){0,3}>[^<&]{0,16}</[A-Z.]{1,12}>") {
        if let Ok(d) = parse_document(&s) {
            let n = d.root_element();
            let _ = parse_raw_value(n);
            let _ = parse_instance(n, None);
            let _ = parse_instance_name(n);
            let _ = parse_paramvalue(n);
            let _ = parse_path_element(n);
        }
    }
}
