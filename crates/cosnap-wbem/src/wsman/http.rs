//! The HTTP face of `/wsman`: which Content-Types are accepted and how a [`Reply`] goes
//! out. Authentication, limits and the body are the shared server's.
//!
//! Content-Type: `application/soap+xml` with charset UTF-8 or UTF-16 (WinRM's two), and a
//! missing header (python-dracclient sends none); anything else is 415. Responses are
//! `application/soap+xml;charset=UTF-8`, never compressed, with a Content-Length.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use super::Reply;

/// `None` when the request's Content-Type is acceptable, else the 415 answer.
pub fn check_content_type(headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
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
    let mut r = Response::new(Full::new(Bytes::from(
        "WS-Management requests are application/soap+xml;charset=UTF-8 (or UTF-16)\n",
    )));
    *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    Some(r)
}

/// The HTTP response for a reply.
pub fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(reply.body)));
    *r.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/soap+xml;charset=UTF-8"),
    );
    r
}
