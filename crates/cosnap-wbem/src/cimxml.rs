//! CIM-XML over HTTP (DSP0200) as a [`Protocol`] of the transport, served at `/cimom`:
//! decodes the admitted request ([`crate::request`]), runs it ([`crate::ops`]) and answers
//! with the `CIMOperation` / `CIMError` headers DSP0200 asks for.

use std::sync::Arc;

use cosnap_cim::CimProvider;
use http_body_util::Full;
use hyper::Response;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};

use crate::enumerations::Enumerations;
use crate::http::{Admitted, HttpResponse, Protocol, header_text, plain};
use crate::request::{DecodeLimits, RequestError, decode_request};

/// The path CIM-XML is served at.
pub const PATH: &str = "/cimom";

pub struct CimXml {
    provider: Arc<dyn CimProvider>,
    host_name: String,
    limits: DecodeLimits,
    /// Pull enumerations waiting for their next Pull.
    enumerations: Enumerations,
}

impl CimXml {
    pub fn new(provider: Arc<dyn CimProvider>, host_name: String, limits: DecodeLimits) -> Self {
        Self {
            provider,
            host_name,
            limits,
            enumerations: Enumerations::default(),
        }
    }
}

impl Protocol for CimXml {
    fn methods(&self) -> &'static [&'static str] {
        &["POST", "M-POST"]
    }

    fn max_body(&self) -> usize {
        self.limits.max_body
    }

    fn handle(&self, request: Admitted) -> HttpResponse {
        let headers = request
            .parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()));
        match decode_request(headers, &request.body, &self.limits) {
            Ok(req) => {
                let session = crate::ops::Session {
                    provider: &*self.provider,
                    host_name: &self.host_name,
                    enumerations: &self.enumerations,
                    user: &request.user,
                };
                let xml = crate::ops::handle_in(&session, req);
                method_response(xml)
            }
            Err(e) => request_error(&e),
        }
    }
}

fn method_response(xml: String) -> HttpResponse {
    let mut r = Response::new(Full::new(Bytes::from(xml)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml; charset=\"utf-8\""),
    );
    h.insert("CIMOperation", HeaderValue::from_static("MethodResponse"));
    r
}

fn request_error(e: &RequestError) -> HttpResponse {
    let status =
        hyper::StatusCode::from_u16(e.kind.http_status()).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    let mut r = plain(status, &e.detail);
    r.headers_mut().insert(
        "CIMError",
        HeaderValue::from_static(e.kind.cim_error_header()),
    );
    r.headers_mut()
        .insert("CIMErrorDetails", header_text(&e.detail));
    r
}
