use super::*;
use crate::value::{CimType, Value};

const PLAIN: &str = r#"<INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"><PROPERTY NAME="CopyVmStorage" TYPE="boolean"><VALUE>TRUE</VALUE></PROPERTY><PROPERTY NAME="BackupIntent" TYPE="uint16"><VALUE>1</VALUE></PROPERTY><PROPERTY NAME="DifferentialBackupBase" TYPE="string"><VALUE>\\HOST\root\virtualization\v2:Msvm_ReferencePointCollection.CollectionID="rp-1",VirtualSystemCollectionId="g-1"</VALUE></PROPERTY></INSTANCE>"#;

fn class() -> &'static ClassDef {
    crate::schema::schema()
        .class("Msvm_CollectionSnapshotExportSettingData")
        .unwrap()
}

fn check(inst: &Instance) {
    assert_eq!(inst.class_name, "Msvm_CollectionSnapshotExportSettingData");
    assert_eq!(inst.get("CopyVmStorage"), Some(&Value::Boolean(true)));
    assert_eq!(inst.get("BackupIntent").and_then(Value::as_u64), Some(1));
    let base = inst
        .get("DifferentialBackupBase")
        .and_then(Value::as_str)
        .unwrap();
    let p = crate::path_text::parse(base).unwrap();
    assert_eq!(p.key_str("CollectionID"), Some("rp-1"));
    assert_eq!(p.host.as_deref(), Some("HOST"));
}

fn utf16le(s: &str, bom: bool) -> Vec<u8> {
    let mut out = if bom { vec![0xFF, 0xFE] } else { Vec::new() };
    for u in s.encode_utf16() {
        out.extend_from_slice(&u.to_le_bytes());
    }
    out
}

#[test]
fn every_producer_variant() {
    let variants = [
        // System.Management GetText(CimDtd20) / SWbem GetText_(1) / pywbem
        PLAIN.to_string(),
        // with an XML declaration (any label)
        format!("<?xml version=\"1.0\" encoding=\"utf-16\"?>\n{PLAIN}"),
        format!("<?xml version=\"1.0\"?>{PLAIN}\n"),
        // wrapped
        format!("<VALUE.OBJECT>{PLAIN}</VALUE.OBJECT>"),
        // class declaration first, then the instance
        format!("<CLASS NAME=\"X\"></CLASS>{PLAIN}"),
        // CDATA around the whole text
        format!("<![CDATA[{PLAIN}]]>"),
        // whitespace, BOM char and trailing NULs
        format!("\u{FEFF}  {PLAIN}\n\0\0"),
        // WMI DTD 2.0 flavour: qualifiers, CLASSORIGIN, PROPAGATED, system properties, lower-case booleans
        r#"<INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"><QUALIFIER NAME="dynamic" PROPAGATED="true" TYPE="boolean" OVERRIDABLE="false" TOINSTANCE="true"><VALUE>TRUE</VALUE></QUALIFIER><PROPERTY NAME="__GENUS" CLASSORIGIN="___SYSTEM" TYPE="sint32"><VALUE>2</VALUE></PROPERTY><PROPERTY NAME="__PATH" CLASSORIGIN="___SYSTEM" TYPE="string"></PROPERTY><PROPERTY NAME="BackupIntent" CLASSORIGIN="Msvm_CollectionSnapshotExportSettingData" TYPE="uint16"><QUALIFIER NAME="CIMTYPE" PROPAGATED="true" TYPE="string" TOINSTANCE="true"><VALUE>uint16</VALUE></QUALIFIER><VALUE>1</VALUE></PROPERTY><PROPERTY NAME="copyvmstorage" CLASSORIGIN="Msvm_CollectionSnapshotExportSettingData" TYPE="boolean" PROPAGATED="false" xml:lang="en-US"><VALUE>true</VALUE></PROPERTY><PROPERTY NAME="DifferentialBackupBase" TYPE="string"><VALUE><![CDATA[\\HOST\root\virtualization\v2:Msvm_ReferencePointCollection.CollectionID="rp-1",VirtualSystemCollectionId="g-1"]]></VALUE></PROPERTY></INSTANCE>"#.to_string(),
        // PROPERTY without TYPE: taken from the class
        r#"<INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"><PROPERTY NAME="CopyVmStorage"><VALUE>TRUE</VALUE></PROPERTY><PROPERTY NAME="BackupIntent"><VALUE>1</VALUE></PROPERTY><PROPERTY NAME="DifferentialBackupBase"><VALUE>\\HOST\root\virtualization\v2:Msvm_ReferencePointCollection.CollectionID="rp-1",VirtualSystemCollectionId="g-1"</VALUE></PROPERTY></INSTANCE>"#.to_string(),
    ];
    for v in &variants {
        let inst = decode_str(v, Some(class()))
            .unwrap_or_else(|e| panic!("{e}\n{v}"))
            .unwrap();
        check(&inst);
        assert_eq!(inst.get("BackupIntent"), Some(&Value::Uint16(1)), "{v}");
        let via_schema = decode_with_schema(v).unwrap().unwrap();
        assert_eq!(via_schema, inst);
        // and as bytes: UTF-8, UTF-8 BOM, UTF-16LE with and without BOM, UTF-16BE with BOM
        let mut utf8_bom = vec![0xEF, 0xBB, 0xBF];
        utf8_bom.extend_from_slice(v.as_bytes());
        let mut be = vec![0xFE, 0xFF];
        for u in v.encode_utf16() {
            be.extend_from_slice(&u.to_be_bytes());
        }
        for bytes in [
            v.as_bytes().to_vec(),
            utf8_bom,
            utf16le(v, true),
            utf16le(v.trim_start_matches('\u{FEFF}'), false),
            be,
        ] {
            assert_eq!(
                decode_bytes(&bytes, Some(class())).unwrap().unwrap(),
                inst,
                "{v}"
            );
        }
    }
}

#[test]
fn powershell_cimserializer_bytes() {
    // What `[Text.Encoding]::Unicode.GetString($serializer.Serialize($inst, 0))` yields:
    // UTF-16LE with an XML declaration naming utf-16.
    let text = format!("<?xml version=\"1.0\" encoding=\"utf-16\"?>{PLAIN}");
    let bytes = utf16le(&text, false);
    check(&decode_bytes(&bytes, Some(class())).unwrap().unwrap());
    let inst = decode_bytes(&bytes, None).unwrap().unwrap();
    assert_eq!(
        decode_bytes(&encode_utf16le(&inst), None).unwrap().unwrap(),
        inst
    );
}

#[test]
fn empty_means_none() {
    for e in ["", "   ", "\n\t", "\0\0"] {
        assert_eq!(decode_str(e, Some(class())).unwrap(), None);
    }
    assert_eq!(decode_bytes(&[], None).unwrap(), None);
    assert_eq!(decode_bytes(&[0xFF, 0xFE], None).unwrap(), None);
}

#[test]
fn typed_errors_with_messages() {
    let bad = r#"<INSTANCE CLASSNAME="Msvm_CollectionSnapshotExportSettingData"><PROPERTY NAME="BackupIntent" TYPE="string"><VALUE>abc</VALUE></PROPERTY></INSTANCE>"#;
    let e = decode_str(bad, Some(class()))
        .unwrap_err()
        .within("ExportSettingData");
    assert_eq!(
        e.to_string(),
        "ExportSettingData: property BackupIntent: expected uint16, got \"abc\""
    );
    let e = decode_str(r#"<INSTANCE CLASSNAME="C"><PROPERTY NAME="N" TYPE="uint16"><VALUE>70000</VALUE></PROPERTY></INSTANCE>"#, None)
        .unwrap_err();
    assert_eq!(e.to_string(), "property N: expected uint16, got \"70000\"");
    for junk in [
        "not xml",
        "<INSTANCE",
        "<FOO/>",
        "<INSTANCE/>",
        "<INSTANCE CLASSNAME=\"C\"><PROPERTY TYPE=\"string\"/></INSTANCE>",
    ] {
        let e = decode_str(junk, None).unwrap_err();
        assert!(!e.to_string().is_empty());
    }
    // invalid UTF-16 (lone surrogate) and invalid UTF-8
    assert!(decode_bytes(&[0xFF, 0xFE, 0x00, 0xD8, 0x3C, 0x00], None).is_err());
    assert!(decode_bytes(&[b'<', 0xC3, 0x28], None).is_err());
}

#[test]
fn hostile_inputs() {
    // billion laughs: a DTD is refused, nothing is expanded
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><INSTANCE CLASSNAME="C"><PROPERTY NAME="P" TYPE="string"><VALUE>&lol2;</VALUE></PROPERTY></INSTANCE>"#;
    assert!(matches!(
        decode_str(bomb, None).unwrap_err().kind,
        CodecErrorKind::Xml(_)
    ));
    let bomb_no_decl = bomb.replace("<?xml version=\"1.0\"?>", "");
    assert!(matches!(
        decode_str(&bomb_no_decl, None).unwrap_err().kind,
        CodecErrorKind::Xml(_)
    ));
    // external entity
    let xxe = r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><INSTANCE CLASSNAME="C"><PROPERTY NAME="P" TYPE="string"><VALUE>&e;</VALUE></PROPERTY></INSTANCE>"#;
    assert!(decode_str(xxe, None).is_err());
    // oversize
    let big = format!(
        r#"<INSTANCE CLASSNAME="C"><PROPERTY NAME="P" TYPE="string"><VALUE>{}</VALUE></PROPERTY></INSTANCE>"#,
        "x".repeat(MAX_EMBEDDED_BYTES)
    );
    assert!(matches!(
        decode_str(&big, None).unwrap_err().kind,
        CodecErrorKind::TooLarge { .. }
    ));
    assert!(matches!(
        decode_bytes(&vec![b'x'; 3 * MAX_EMBEDDED_BYTES], None)
            .unwrap_err()
            .kind,
        CodecErrorKind::TooLarge { .. }
    ));
    // deep nesting
    let deep = format!(
        "{}{}",
        "<VALUE.OBJECT>".repeat(100_000),
        "</VALUE.OBJECT>".repeat(100_000)
    );
    assert!(decode_str(&deep, None).is_err());
    // huge attribute counts
    let attrs: String = (0..10_000).map(|i| format!(" a{i}=\"x\"")).collect();
    let many = format!(r#"<INSTANCE CLASSNAME="C"{attrs}></INSTANCE>"#);
    assert!(matches!(
        decode_str(&many, None).unwrap_err().kind,
        CodecErrorKind::TooMany { .. }
    ));
    // embedded inside embedded inside … beyond MAX_DEPTH
    let mut inst = Instance::new("C").with("Leaf", CimType::Uint8, Some(Value::Uint8(1)));
    for _ in 0..crate::xml::MAX_DEPTH + 3 {
        inst = Instance::new("C").with("E", CimType::String, Some(Value::Instance(Box::new(inst))));
    }
    let text = encode(&inst);
    let e = decode_str(&text, None).unwrap_err();
    assert!(e.to_string().contains("nested deeper"), "{e}");
}

#[test]
fn encode_round_trip_and_nesting() {
    let inner = Instance::new("Msvm_VirtualMachineToDisks").with(
        "VirtualMachineId",
        CimType::String,
        Some(Value::String("vm-1".into())),
    );
    let inst = Instance::new("Msvm_Error")
        .with(
            "Message",
            CimType::String,
            Some(Value::String("disk <1> & \"2\"".into())),
        )
        .with("CIMStatusCode", CimType::Uint32, Some(Value::Uint32(4)))
        .with(
            "MessageArguments",
            CimType::String,
            Some(Value::Array(vec![
                Value::String("a".into()),
                Value::String("b".into()),
            ])),
        )
        .with(
            "Nested",
            CimType::String,
            Some(Value::Instance(Box::new(inner))),
        );
    let text = encode(&inst);
    assert!(text.starts_with(r#"<INSTANCE CLASSNAME="Msvm_Error"><PROPERTY NAME="Message" TYPE="string"><VALUE>disk &lt;1&gt; &amp; "2"</VALUE>"#), "{text}");
    let back = decode_str(&text, None).unwrap().unwrap();
    assert_eq!(back.get("Message"), inst.get("Message"));
    assert_eq!(back.get("CIMStatusCode"), Some(&Value::Uint32(4)));
    assert_eq!(back.get("MessageArguments"), inst.get("MessageArguments"));
    assert_eq!(
        back.get("Nested")
            .unwrap()
            .as_instance()
            .unwrap()
            .get("VirtualMachineId"),
        Some(&Value::String("vm-1".into()))
    );
    // typed against the schema's Msvm_Error
    let typed = decode_with_schema(&text).unwrap().unwrap();
    assert_eq!(typed.property("CIMStatusCode").unwrap().ty, CimType::Uint32);
}

proptest::proptest! {
    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let _ = decode_bytes(&bytes, Some(class()));
    }

    #[test]
    fn decoder_never_panics_on_near_valid_text(
        cut in 0usize..PLAIN.len(),
        junk in "[<>&\"'=/A-Z\\[\\]!-]{0,8}",
    ) {
        let mut s = PLAIN.to_string();
        if s.is_char_boundary(cut) {
            s.insert_str(cut, &junk);
        }
        let _ = decode_str(&s, Some(class()));
        let _ = decode_with_schema(&s[..cut.min(s.len())]);
    }
}
