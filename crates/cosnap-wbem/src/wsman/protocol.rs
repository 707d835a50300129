//! The HTTP face of `/wsman`, as a [`Protocol`] of the shared transport (which has already
//! authenticated the user and read the body under its limits): which Content-Types are
//! accepted and how a [`Reply`] goes out.
//!
//! Content-Type: `application/soap+xml` (also `application/xml`, `text/xml`) with charset
//! UTF-8 or UTF-16 (WinRM's two), or no header at all (python-dracclient sends none);
//! anything else is 415. Responses are `application/soap+xml;charset=UTF-8`, never
//! compressed.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use super::{Reply, Service};
use crate::http::{Admitted, HttpResponse, Protocol, plain};

impl Protocol for Service {
    fn max_body(&self) -> usize {
        self.limits.max_body
    }

    fn handle(&self, request: Admitted) -> HttpResponse {
        if let Some(refusal) = check_content_type(&request.parts.headers) {
            return refusal;
        }
        response(self.handle_body(&request.user, &request.body))
    }
}

/// `None` when the request's Content-Type is acceptable, else the 415 answer.
pub fn check_content_type(headers: &HeaderMap) -> Option<HttpResponse> {
    let ct = headers.get(header::CONTENT_TYPE)?;
    let text = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let mut parts = text.split(';');
    let media = parts.next().unwrap_or("").trim();
    let media_ok = matches!(
        media,
        "application/soap+xml" | "application/xml" | "text/xml"
    );
    let charset_ok = parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim() == "charset" => {
            matches!(v.trim().trim_matches('"'), "utf-8" | "utf8" | "utf-16")
        }
        _ => true,
    });
    if media_ok && charset_ok {
        return None;
    }
    Some(plain(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "WS-Management requests are application/soap+xml;charset=UTF-8 (or UTF-16)",
    ))
}

/// The HTTP response for a reply.
pub fn response(reply: Reply) -> HttpResponse {
    let mut r = Response::new(crate::body::Body::whole(reply.body));
    *r.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/soap+xml;charset=UTF-8"),
    );
    r
}
