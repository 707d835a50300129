//! Fuzz target: arbitrary bytes as the body of a CIM-XML request to `POST /cimom`.
//!
//! The headers are the ones pywbem sends, with `CIMMethod` taken from the body's first
//! `NAME="…"` (so that most inputs get past the header checks into the decoder). A decoded
//! request is then run by `cosnap_wbem::ops::handle` against a provider that serves the
//! real schema with no instances, so parameter typing (untyped values, embedded
//! instances, references), WQL parsing and the response writer run too.
//!
//! Oracles: no panic, no hang, no huge allocation; every response the server would send
//! is well-formed XML with a `CIM` root.
#![no_main]

use cosnap_cim::{
    AssocFilter, CimError, CimProvider, ClassDef, Instance, MethodOutcome, ObjectPath, Value,
};
use cosnap_wbem::{DecodeLimits, decode_request};
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
        // Echo the typed parameters as out parameters: exercises the out-param writer with
        // references, embedded instances and arrays.
        Ok(MethodOutcome {
            return_value: 0,
            out_params: params,
        })
    }
}

fn method_name(body: &[u8]) -> &[u8] {
    let pat = b"NAME=\"";
    let Some(start) = body
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| p + pat.len())
    else {
        return b"GetClass";
    };
    let len = body[start..]
        .iter()
        .take(64)
        .position(|&c| c == b'"')
        .unwrap_or(0);
    &body[start..start + len]
}

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    let headers: Vec<(&str, &[u8])> = vec![
        (
            "Content-Type",
            b"application/xml; charset=\"utf-8\"".as_slice(),
        ),
        ("CIMOperation", b"MethodCall".as_slice()),
        ("CIMMethod", method_name(data)),
        ("CIMObject", b"root%2Fvirtualization%2Fv2".as_slice()),
    ];
    let Ok(req) = decode_request(headers, data, &limits) else {
        return;
    };
    let body = cosnap_wbem::ops::handle(&SchemaOnly, "fuzz-host", req);
    let doc = cosnap_cim::xml::Document::parse(&body).expect("the response is not well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "CIM");
});
