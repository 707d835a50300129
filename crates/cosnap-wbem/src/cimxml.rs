//! CIM-XML over HTTP (DSP0200) as a [`Protocol`] of the transport, served at `/cimom`:
//! decodes the admitted request ([`crate::request`]), runs it ([`crate::ops`]) and answers
//! with the `CIMOperation` / `CIMError` headers DSP0200 asks for.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cosnap_cim::CimProvider;
use hyper::Response;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};

use crate::body::Body;
use crate::enumerations::Enumerations;
use crate::http::{Admitted, HttpResponse, Protocol, header_text, plain};
use crate::ops::{Answer, Unfinished};
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
                match crate::ops::handle_in(&session, req) {
                    Answer::Whole(xml) => method_response(Body::whole(xml)),
                    Answer::Streamed(unfinished) => self.stream(unfinished),
                }
            }
            Err(e) => request_error(&e),
        }
    }
}

impl CimXml {
    /// Answers with the head now and the rest of the list produced on the blocking pool
    /// while the client reads (see [`crate::body`]).
    fn stream(&self, mut unfinished: Box<Unfinished>) -> HttpResponse {
        let (body, tx) = Body::streamed();
        let provider = self.provider.clone();
        let head = std::mem::take(&mut unfinished.head);
        let produce = move || {
            let send = |text: String| tx.blocking_send(Ok(Bytes::from(text))).is_ok();
            if !send(head) {
                return;
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| unfinished.produce(&*provider, send)));
            let failure = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the provider panicked".to_string(),
            };
            tracing::error!("a streamed response was cut short: {failure}");
            let _ = tx.blocking_send(Err(std::io::Error::other(failure)));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(produce)),
            Err(_) => drop(std::thread::spawn(produce)),
        }
        method_response(body)
    }
}

fn method_response(body: Body) -> HttpResponse {
    let mut r = Response::new(body);
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
