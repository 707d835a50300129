use super::*;

#[test]
fn cosnap_mof_resolves() {
    let s = schema();
    for name in [
        "Msvm_ComputerSystem",
        "Msvm_VirtualSystemSettingData",
        "Msvm_SnapshotCollection",
        "Msvm_ReferencePointCollection",
        "Msvm_CollectionSnapshotService",
        "Msvm_ConcreteJob",
        "Msvm_Error",
        "Msvm_AffectedJobElement",
        "Msvm_VirtualSystemSettingDataComponent",
    ] {
        assert!(s.class(name).is_some(), "{name}");
    }
    assert!(s.class("msvm_snapshotcollection").is_some());
    assert!(s.class("Msvm_CollectionSnapshotSettingData").is_none());
}

#[test]
fn inheritance_is_flattened() {
    let s = schema();
    let job = s.class("Msvm_ConcreteJob").unwrap();
    let keys: Vec<&str> = job.keys().map(|p| p.name.as_str()).collect();
    assert_eq!(keys, ["InstanceID"]);
    let iid = job.property("InstanceID").unwrap();
    // An override keeps the origin of the first declaration (as pywbem reports it) and
    // brings its own qualifiers.
    assert_eq!(iid.class_origin, "CIM_ManagedElement");
    assert!(iid.qualifiers.iter().any(|q| q.name == "Key"));
    assert!(s.is_propagated_qualifier(
        "Msvm_ConcreteJob",
        QualifiedMember::Property("InstanceID"),
        "Key"
    ));
    assert!(!s.is_propagated_qualifier(
        "CIM_ConcreteJob",
        QualifiedMember::Property("InstanceID"),
        "Description"
    ));
    assert!(!s.is_propagated_qualifier(
        "CIM_ConcreteJob",
        QualifiedMember::Property("InstanceID"),
        "Override"
    ));
    // Key is DisableOverride: repeating it in an override still counts as inherited.
    assert!(s.is_propagated_qualifier(
        "Msvm_CollectedSnapshots",
        QualifiedMember::Property("Collection"),
        "Key"
    ));
    assert_eq!(
        job.property("JobState").unwrap().class_origin,
        "CIM_ConcreteJob"
    );
    assert_eq!(
        job.property("Caption").unwrap().class_origin,
        "CIM_ManagedElement"
    );
    assert_eq!(
        job.property("JobType").unwrap().class_origin,
        "Msvm_ConcreteJob"
    );
    assert_eq!(
        job.property("TimeBeforeRemoval").unwrap().default,
        Some(Value::Datetime("00000000000500.000000:000".into()))
    );
    // GetError redeclared: origin moves, its own EmbeddedInstance wins.
    let ge = job.method("GetError").unwrap();
    assert_eq!(ge.class_origin, "CIM_ConcreteJob");
    let q = ge.parameters[0].qualifier("EmbeddedInstance").unwrap();
    assert_eq!(q.value, Some(Value::String("Msvm_Error".into())));
    assert_eq!(
        job.method("RequestStateChange").unwrap().class_origin,
        "CIM_ConcreteJob"
    );
    assert!(job.method("KillJob").is_some());
    assert!(job.method("GetErrorEx").unwrap().parameters[0].is_array);

    let svc = s.class("Msvm_CollectionSnapshotService").unwrap();
    let keys: Vec<&str> = svc.keys().map(|p| p.name.as_str()).collect();
    // An override keeps the inherited position (Name comes from CIM_ManagedSystemElement).
    assert_eq!(
        keys,
        [
            "Name",
            "SystemCreationClassName",
            "SystemName",
            "CreationClassName"
        ]
    );
    // Abstract is Restricted: not inherited.
    assert!(svc.qualifiers.iter().all(|q| q.name != "Abstract"));
    assert!(
        s.class("CIM_Service")
            .unwrap()
            .qualifiers
            .iter()
            .any(|q| q.name == "Abstract")
    );

    let rp = s.class("Msvm_ReferencePointCollection").unwrap();
    let keys: Vec<&str> = rp.keys().map(|p| p.name.as_str()).collect();
    assert_eq!(keys, ["CollectionID", "VirtualSystemCollectionId"]);
    let cs = s.class("Msvm_ComputerSystem").unwrap();
    let keys: Vec<&str> = cs.keys().map(|p| p.name.as_str()).collect();
    assert_eq!(keys, ["Name", "CreationClassName"]);
    let sd = s.class("Msvm_CollectionSnapshotExportSettingData").unwrap();
    assert_eq!(
        sd.keys().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["InstanceID"]
    );
    assert_eq!(sd.property("BackupIntent").unwrap().ty, CimType::Uint16);
    assert_eq!(
        sd.property("AllowFullExportFallback").unwrap().ty,
        CimType::Boolean
    );
    assert!(sd.property("CreateVmExportSubdirectory").is_some());
}

#[test]
fn method_signatures_match_hyperv() {
    let s = schema();
    let svc = s.class("Msvm_CollectionSnapshotService").unwrap();
    let sig = |m: &str| -> Vec<(String, CimType, Option<String>, bool, bool)> {
        svc.method(m)
            .unwrap()
            .parameters
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.ty,
                    p.reference_class.clone(),
                    p.qualifier("In").is_some(),
                    p.qualifier("Out").is_some(),
                )
            })
            .collect()
    };
    let r = |c: &str| Some(c.to_string());
    assert_eq!(
        sig("CreateSnapshot"),
        vec![
            (
                "Collection".into(),
                CimType::Reference,
                r("CIM_CollectionOfMSEs"),
                true,
                false
            ),
            (
                "SnapshotSettings".into(),
                CimType::String,
                None,
                true,
                false
            ),
            ("SnapshotType".into(), CimType::Uint16, None, true, false),
            (
                "ResultingSnapshotCollection".into(),
                CimType::Reference,
                r("CIM_Collection"),
                true,
                true
            ),
            (
                "Job".into(),
                CimType::Reference,
                r("CIM_ConcreteJob"),
                false,
                true
            ),
        ]
    );
    assert_eq!(
        sig("ExportSnapshot"),
        vec![
            (
                "SnapshotCollection".into(),
                CimType::Reference,
                r("CIM_Collection"),
                true,
                false
            ),
            ("ExportDirectory".into(), CimType::String, None, true, false),
            (
                "ExportSettingData".into(),
                CimType::String,
                None,
                true,
                false
            ),
            (
                "Job".into(),
                CimType::Reference,
                r("CIM_ConcreteJob"),
                false,
                true
            ),
        ]
    );
    assert_eq!(
        sig("ConvertToReferencePoint")[1],
        (
            "ResultingReferencePointCollection".into(),
            CimType::Reference,
            r("Msvm_ReferencePointCollection"),
            true,
            true
        )
    );
    assert_eq!(sig("ApplySnapshot").len(), 2);
    assert_eq!(sig("DestroySnapshot")[0].0, "AffectedSnapshotCollection");
    let export = svc.method("ExportSnapshot").unwrap();
    assert_eq!(
        export
            .parameter("exportsettingdata")
            .unwrap()
            .qualifier("EmbeddedInstance")
            .unwrap()
            .value,
        Some(Value::String(
            "Msvm_CollectionSnapshotExportSettingData".into()
        ))
    );
    let cms = s.class("Msvm_CollectionManagementService").unwrap();
    for m in [
        "DefineCollection",
        "DestroyCollection",
        "RenameCollection",
        "AddMember",
        "RemoveMember",
        "RemoveMemberById",
    ] {
        assert_eq!(cms.method(m).unwrap().return_type, CimType::Uint32, "{m}");
    }
    let vsms = s.class("Msvm_VirtualSystemManagementService").unwrap();
    let rs = vsms
        .method("DefineSystem")
        .unwrap()
        .parameter("ResourceSettings")
        .unwrap();
    assert!(rs.is_array && rs.ty == CimType::String);
    assert!(vsms.method("DestroySystem").is_some());
    let crp = s.class("Msvm_CollectionReferencePointService").unwrap();
    assert!(
        crp.method("CreateReferencePoint").is_some()
            && crp.method("DestroyReferencePoint").is_some()
    );
}

#[test]
fn hierarchy_queries() {
    let s = schema();
    assert!(s.is_subclass("Msvm_SnapshotCollection", "CIM_Collection"));
    assert!(s.is_subclass("Msvm_SnapshotCollection", "cim_managedelement"));
    assert!(s.is_subclass("Msvm_ConcreteJob", "Msvm_ConcreteJob"));
    assert!(!s.is_subclass("CIM_Collection", "Msvm_SnapshotCollection"));
    assert!(!s.is_subclass("Nope", "CIM_Collection"));
    let subs: Vec<&str> = s
        .subclasses("CIM_CollectionOfMSEs")
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        subs,
        ["Msvm_VirtualSystemCollection", "Msvm_ManagementCollection"]
    );
    let roots: Vec<&str> = s
        .direct_subclasses(None)
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert!(roots.contains(&"CIM_ManagedElement") && roots.contains(&"CIM_Error"));
    assert!(s.class_names().len() > 50);
    // Every reference class and embedded-instance class the schema names is defined.
    for c in s.classes() {
        for p in &c.properties {
            if let Some(rc) = &p.reference_class {
                assert!(s.class(rc).is_some(), "{}.{} -> {rc}", c.name, p.name);
            }
        }
        for m in &c.methods {
            for p in &m.parameters {
                if let Some(rc) = &p.reference_class {
                    assert!(
                        s.class(rc).is_some(),
                        "{}.{}.{} -> {rc}",
                        c.name,
                        m.name,
                        p.name
                    );
                }
                if let Some(Value::String(e)) = p
                    .qualifier("EmbeddedInstance")
                    .and_then(|q| q.value.as_ref())
                {
                    assert!(
                        s.class(e).is_some(),
                        "{}.{}.{} embeds {e}",
                        c.name,
                        m.name,
                        p.name
                    );
                }
            }
        }
    }
}

#[test]
fn bad_mof_is_an_error() {
    assert!(Schema::from_mof("class A : B { };").is_err());
    assert!(Schema::from_mof("[Nope] class A { };").is_err());
    assert!(Schema::from_mof("class A { }; class A { };").is_err());
    let e = Schema::from_mof(
        "Qualifier MaxLen : uint32, Scope(property);\nclass A { [MaxLen(\"x\")] string S; };",
    )
    .unwrap_err();
    assert!(e.to_string().contains("MaxLen"), "{e}");
}
