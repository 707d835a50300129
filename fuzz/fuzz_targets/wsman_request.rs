//! Fuzz target: arbitrary bytes as the body of a WS-Management request to `POST /wsman`.
//!
//! The envelope decoder runs first on its own (it must never panic, whatever the input);
//! then the whole service answers the body against a provider that serves the real schema
//! with no instances (every method "runs" and echoes its typed parameters), so resource
//! URIs, selectors, filters, parameter typing (EPRs, embedded instances in both forms,
//! datetimes, arrays), enumeration contexts, faults and the response writer run too.
//!
//! Oracles: no panic, no hang, no huge allocation; every reply is 200 or 500 and its body
//! is well-formed XML with a SOAP 1.2 `Envelope` root.
#![no_main]

use std::sync::{Arc, OnceLock};

use cosnap_cim::{
    AssocFilter, CimError, CimProvider, ClassDef, Instance, MethodOutcome, ObjectPath, Value,
};
use cosnap_wbem::DecodeLimits;
use cosnap_wbem::wsman::Service;
use cosnap_wbem::wsman::enumeration::ContextLimits;
use libfuzzer_sys::fuzz_target;

/// Serves the schema's classes; no instances; every method "runs" and returns 0.
struct SchemaOnly;

impl CimProvider for SchemaOnly {
    fn get_class(&self, class_name: &str) -> Result<ClassDef, CimError> {
        cosnap_cim::schema()
            .class(class_name)
            .cloned()
            .ok_or_else(|| CimError::not_found(class_name.to_string()))
    }
    fn class_names(&self) -> Vec<String> {
        cosnap_cim::schema().class_names()
    }
    fn enumerate_instances(&self, _: &str) -> Result<Vec<Instance>, CimError> {
        Ok(Vec::new())
    }
    fn get_instance(&self, path: &ObjectPath) -> Result<Instance, CimError> {
        Err(CimError::not_found(path.class_name.clone()))
    }
    fn associators(&self, _: &ObjectPath, _: &AssocFilter) -> Result<Vec<Instance>, CimError> {
        Ok(Vec::new())
    }
    fn references(&self, _: &ObjectPath, _: &AssocFilter) -> Result<Vec<Instance>, CimError> {
        Ok(Vec::new())
    }
    fn invoke_method(
        &self,
        _: &ObjectPath,
        _: &str,
        params: Vec<(String, Value)>,
    ) -> Result<MethodOutcome, CimError> {
        Ok(MethodOutcome {
            return_value: 0,
            out_params: params,
        })
    }
}

fn service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(|| {
        Service::new(
            Arc::new(SchemaOnly),
            "fuzz-host".into(),
            DecodeLimits::default(),
            ContextLimits::default(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = cosnap_wbem::wsman::envelope::decode(data, &DecodeLimits::default());
    let reply = service().handle_body("fuzz", data);
    assert!(reply.status == 200 || reply.status == 500, "status {}", reply.status);
    let doc = cosnap_cim::xml::Document::parse(&reply.body).expect("the reply is not well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "Envelope");
});
