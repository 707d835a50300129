//! The protocol-neutral HTTP layer: request admission, then dispatch by path.
//!
//! Every request passes the same gates before any protocol code sees it, cheapest first:
//! 1. headers at most [`MAX_HEADER_BYTES`] (hyper answers `431` before we run);
//! 2. authentication (`401`), or `429` + `Retry-After` while the source is throttled for
//!    wrong passwords (see [`crate::auth`]);
//! 3. path (`404`), method (`405`), declared length (`413`);
//! 4. a concurrency permit ([`crate::ServerLimits::max_in_flight`]; `503` + `Retry-After`
//!    after [`crate::ServerLimits::queue_timeout`]), and before it, for a body larger than
//!    [`SMALL_BODY`] or of unknown length, one of
//!    [`crate::ServerLimits::max_large_bodies`] large-body permits: memory for bodies is
//!    bounded by `max_large_bodies × max_body + max_in_flight × SMALL_BODY`, and ordinary
//!    small requests never queue behind clients pushing large bodies;
//! 5. the body, read into one bounded buffer under the body timeout (`413`, `408`).
//!
//! Only then is the request handed, with its body and user, to the [`Protocol`] registered
//! for its path, on the blocking pool. The body is never polled before step 5, so a client
//! that sent `Expect: 100-continue` gets no `100 Continue` for a body that is refused, and an
//! unauthenticated body is never read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::admission::Source;
use crate::auth::{AuthResult, Authenticator};
use crate::body::Body;
use crate::limits::ServerLimits;

/// Largest request head (request line + headers) accepted; larger gets `431`.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields in one request; more gets `431`.
pub const MAX_HEADER_COUNT: usize = 64;
/// Bodies up to this size need only a concurrency permit; larger ones a large-body one too.
pub const SMALL_BODY: usize = 256 * 1024;
/// Most bytes of a refused body read and thrown away, so that the answer reaches the
/// client instead of being destroyed by the reset a close with unread input causes:
/// a little for strangers, more for an authenticated client; a body larger than that is
/// not read at all and the connection is closed.
const DISCARD_UNAUTHENTICATED: usize = 64 * 1024;
const DISCARD_AUTHENTICATED: usize = 16 * 1024 * 1024;
const DISCARD_WAIT: Duration = Duration::from_millis(200);

/// Every response the transport and the protocols produce.
pub type HttpResponse = Response<Body>;

/// An authenticated request, admitted under the concurrency limit, with its whole body.
pub struct Admitted {
    pub parts: Parts,
    pub body: Bytes,
    /// The authenticated user.
    pub user: String,
    pub peer: SocketAddr,
}

/// A protocol served at one path. [`Protocol::handle`] runs on the blocking pool while the
/// request holds a concurrency permit.
pub trait Protocol: Send + Sync + 'static {
    /// Methods accepted; the first is advertised in `Allow` on a `405`.
    fn methods(&self) -> &'static [&'static str] {
        &["POST"]
    }

    /// Largest body accepted, in bytes.
    fn max_body(&self) -> usize;

    /// Answers one admitted request.
    fn handle(&self, request: Admitted) -> HttpResponse;
}

/// Path → protocol.
pub type Routes = Vec<(&'static str, Arc<dyn Protocol>)>;

/// What every request on every connection shares.
pub struct Transport {
    pub routes: Routes,
    pub auth: Authenticator,
    pub limits: ServerLimits,
    pub in_flight: Semaphore,
    pub large_bodies: Semaphore,
    /// Requests answered so far (the memory trimmer looks for activity).
    pub answered: AtomicU64,
}

/// A plain-text answer.
pub fn plain(status: StatusCode, text: &str) -> HttpResponse {
    let mut r = Response::new(Body::whole(format!("{text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A header value that is always valid: visible ASCII only, shortened.
pub fn header_text(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(300)
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

fn closing(mut r: HttpResponse) -> HttpResponse {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn retry_after(mut r: HttpResponse, wait: Duration) -> HttpResponse {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

fn expects_continue(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn declared_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Answers without using the body. A body the client is already sending is read and
/// dropped, up to `discard_max` bytes, so the answer is not lost to a reset; a body the
/// client waits to be invited for (`Expect: 100-continue`) is never read, nor one
/// declared larger than `discard_max`, and the connection is closed.
async fn refuse(
    parts: &Parts,
    mut body: Incoming,
    answer: HttpResponse,
    discard_max: usize,
) -> HttpResponse {
    let declared = declared_length(parts);
    if declared == Some(0) {
        return answer;
    }
    if expects_continue(parts) || declared.is_some_and(|n| n > discard_max as u64) {
        return closing(answer);
    }
    discard(&mut body, discard_max).await;
    closing(answer)
}

async fn discard(body: &mut Incoming, discard_max: usize) {
    let mut seen = 0usize;
    while seen <= discard_max {
        match tokio::time::timeout(DISCARD_WAIT, body.frame()).await {
            Ok(Some(Ok(frame))) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
}

fn unauthorized() -> HttpResponse {
    let mut r = plain(StatusCode::UNAUTHORIZED, "authentication required");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"cosnap\""),
    );
    r
}

fn throttled(wait: Duration) -> HttpResponse {
    let text = format!(
        "too many failed logins from this address; try again in {} s",
        wait.as_secs().max(1)
    );
    retry_after(plain(StatusCode::TOO_MANY_REQUESTS, &text), wait)
}

fn too_large(limit: usize) -> HttpResponse {
    plain(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is larger than {limit} bytes"),
    )
}

/// Admits one request through the gates in the module doc and dispatches it.
pub async fn handle_http(
    transport: Arc<Transport>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> HttpResponse {
    let (parts, body) = req.into_parts();
    let user = match authenticate(&transport, peer, &parts).await {
        Ok(user) => user,
        Err(answer) => return refuse(&parts, body, answer, DISCARD_UNAUTHENTICATED).await,
    };

    let protocol = match select_protocol(&transport.routes, &parts) {
        Ok(protocol) => protocol,
        Err(answer) => return refuse(&parts, body, *answer, DISCARD_AUTHENTICATED).await,
    };

    let large = declared_length(&parts).is_none_or(|n| n > SMALL_BODY as u64);
    let Some(_permits) = admit(&transport, large).await else {
        let busy = plain(StatusCode::SERVICE_UNAVAILABLE, "the server is busy");
        let busy = retry_after(busy, Duration::from_secs(1));
        return refuse(&parts, body, busy, DISCARD_AUTHENTICATED).await;
    };

    let max = protocol.max_body();
    let body = match read_body(&parts, body, max, transport.limits.body_timeout).await {
        Ok(bytes) => bytes,
        Err(answer) => return answer,
    };
    let admitted = Admitted {
        parts,
        body,
        user,
        peer,
    };
    dispatch(&transport, protocol, admitted).await
}

/// The user, or the `401` / `429` to answer.
async fn authenticate(
    transport: &Transport,
    peer: SocketAddr,
    parts: &Parts,
) -> Result<String, HttpResponse> {
    let credentials = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let source = Source::of(peer.ip());
    match transport.auth.check_from(source, credentials).await {
        AuthResult::Allowed(user) => Ok(user),
        AuthResult::Denied => Err(unauthorized()),
        AuthResult::Throttled(wait) => Err(throttled(wait)),
    }
}

/// The protocol for the request's path, or the `404` / `405` / `413` to answer.
fn select_protocol(routes: &Routes, parts: &Parts) -> Result<Arc<dyn Protocol>, Box<HttpResponse>> {
    let protocol = route(routes, parts.uri.path()).ok_or_else(|| Box::new(not_found(routes)))?;
    if !protocol.methods().contains(&parts.method.as_str()) {
        return Err(Box::new(method_not_allowed(protocol.methods())));
    }
    let max = protocol.max_body();
    if declared_length(parts).is_some_and(|n| n > max as u64) {
        return Err(Box::new(too_large(max)));
    }
    Ok(protocol)
}

/// Runs the protocol on the blocking pool.
async fn dispatch(
    transport: &Transport,
    protocol: Arc<dyn Protocol>,
    admitted: Admitted,
) -> HttpResponse {
    let answer = tokio::task::spawn_blocking(move || protocol.handle(admitted)).await;
    transport.answered.fetch_add(1, Ordering::Relaxed);
    answer.unwrap_or_else(|e| {
        tracing::error!("request task failed: {e}");
        plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })
}

/// The permits a request needs before its body is read, or `None` after the queue timeout.
async fn admit(
    transport: &Transport,
    large: bool,
) -> Option<(Option<SemaphorePermit<'_>>, SemaphorePermit<'_>)> {
    let wait = transport.limits.queue_timeout;
    let deadline = tokio::time::Instant::now() + wait;
    let large_permit = if large {
        let permit = tokio::time::timeout_at(deadline, transport.large_bodies.acquire()).await;
        Some(permit.ok()?.ok()?)
    } else {
        None
    };
    let permit = tokio::time::timeout_at(deadline, transport.in_flight.acquire()).await;
    Some((large_permit, permit.ok()?.ok()?))
}

fn route(routes: &Routes, path: &str) -> Option<Arc<dyn Protocol>> {
    routes
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, protocol)| protocol.clone())
}

fn not_found(routes: &Routes) -> HttpResponse {
    let paths: Vec<&str> = routes.iter().map(|(p, _)| *p).collect();
    plain(
        StatusCode::NOT_FOUND,
        &format!("nothing here; this server answers at {}", paths.join(", ")),
    )
}

fn method_not_allowed(methods: &[&str]) -> HttpResponse {
    let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    r.headers_mut().insert(
        header::ALLOW,
        header_text(methods.first().unwrap_or(&"POST")),
    );
    r
}

/// Reads the whole body into one buffer of at most `max` bytes within `timeout`.
async fn read_body(
    parts: &Parts,
    mut body: Incoming,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, HttpResponse> {
    let initial = declared_length(parts).map_or(8192, |n| n as usize).min(max);
    let collected = tokio::time::timeout(timeout, async {
        let body = &mut body;
        let mut buf: Vec<u8> = Vec::with_capacity(initial);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Some(data) = frame.data_ref() {
                if buf.len() + data.len() > max {
                    return Ok(None);
                }
                buf.extend_from_slice(data);
            }
        }
        Ok::<_, String>(Some(Bytes::from(buf)))
    })
    .await;
    match collected {
        Ok(Ok(Some(bytes))) => Ok(bytes),
        Ok(Ok(None)) => {
            discard(&mut body, DISCARD_AUTHENTICATED).await;
            Err(closing(too_large(max)))
        }
        Ok(Err(e)) => Err(plain(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
        )),
        Err(_) => Err(closing(plain(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        ))),
    }
}
