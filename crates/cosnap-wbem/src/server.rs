//! The HTTP(S) server: hyper 1 on tokio, `POST /cimom`, Basic authentication, limits and
//! graceful shutdown.
//!
//! Order of checks per request: authentication (401 + `WWW-Authenticate: Basic
//! realm="cosnap"`), path (`/cimom`, else 404), method (`POST` or `M-POST`, else 405),
//! declared length (413), body read under the request timeout (413 when it grows past the
//! limit, 408 when too slow), then the CIM decoding in [`crate::request`] and the
//! operation in [`crate::ops`] on the blocking pool, at most
//! [`ServerLimits::max_in_flight`] at a time.
//!
//! Shutdown: when the shutdown future resolves, the listeners close, every connection is
//! told to finish its current request and close, and [`Server::run`] returns once they
//! have (or after [`ServerLimits::drain_timeout`]). The caller then deals with jobs.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cosnap_cim::CimProvider;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::auth::{AuthResult, Authenticator, UserError};
use crate::request::{DecodeLimits, RequestError, RequestErrorKind, decode_request};
use crate::tls::{self, TlsError, TlsFiles};

/// Resource limits of the server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub decode: DecodeLimits,
    /// Time to receive a request's headers.
    pub header_timeout: Duration,
    /// Time to receive a request's body.
    pub body_timeout: Duration,
    /// Time to complete a TLS handshake.
    pub handshake_timeout: Duration,
    /// Open connections at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Requests being decoded or run at once.
    pub max_in_flight: usize,
    /// How long shutdown waits for running requests.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            decode: DecodeLimits::default(),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(15),
            max_connections: 512,
            max_in_flight: 32,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// What `cosnap serve` configures.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub http_listen: Option<SocketAddr>,
    pub https_listen: Option<SocketAddr>,
    /// Certificate and key; generated into `<data-dir>/tls/` when `None`.
    pub tls_files: Option<TlsFiles>,
    /// Allow plain HTTP on an address that is not loopback.
    pub insecure_allow_plain_http: bool,
    pub data_dir: PathBuf,
    /// The host name written into paths the server returns.
    pub host_name: String,
    pub limits: ServerLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing plain HTTP on {0}, which is not a loopback address: Basic credentials would cross the network in clear text; use --https-listen, or --insecure-allow-plain-http to force it"
    )]
    PlainHttpNotLoopback(SocketAddr),
    #[error("nothing to listen on: give --listen or --https-listen")]
    NoListener,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Users(#[from] UserError),
}

struct Shared {
    provider: Arc<dyn CimProvider>,
    auth: Authenticator,
    host_name: String,
    limits: ServerLimits,
    in_flight: Semaphore,
    wsman: crate::wsman::Service,
}

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    http: Option<TcpListener>,
    https: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
}

impl Server {
    /// Checks the configuration, prepares TLS and binds the listeners (the port accepts
    /// connections once this returns).
    pub async fn bind(
        config: ServeConfig,
        provider: Arc<dyn CimProvider>,
    ) -> Result<Server, ServeError> {
        if config.http_listen.is_none() && config.https_listen.is_none() {
            return Err(ServeError::NoListener);
        }
        if let Some(addr) = config.http_listen
            && !addr.ip().is_loopback()
            && !config.insecure_allow_plain_http
        {
            return Err(ServeError::PlainHttpNotLoopback(addr));
        }
        let auth = Authenticator::new(&config.data_dir)?;
        if auth.user_count() == 0 {
            tracing::warn!(
                "no users yet: every request will be refused until `cosnap user add NAME --password-stdin`"
            );
        }
        let https = match config.https_listen {
            Some(addr) => {
                let files = match &config.tls_files {
                    Some(f) => f.clone(),
                    None => {
                        let f = TlsFiles::in_data_dir(&config.data_dir);
                        if tls::ensure_self_signed(&f, std::slice::from_ref(&config.host_name))? {
                            tracing::info!(
                                "generated a self-signed certificate at {}",
                                f.cert.display()
                            );
                        }
                        f
                    }
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&files)?);
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?;
                Some((l, acceptor))
            }
            None => None,
        };
        let http = match config.http_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let wsman = crate::wsman::Service::new(
            provider.clone(),
            config.host_name.clone(),
            config.limits.decode,
            crate::wsman::enumeration::ContextLimits::default(),
        );
        let shared = Arc::new(Shared {
            provider,
            auth,
            wsman,
            host_name: config.host_name,
            limits: config.limits,
            in_flight: Semaphore::new(config.limits.max_in_flight.max(1)),
        });
        Ok(Server {
            shared,
            http,
            https,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound HTTPS address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains open connections.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limits = self.shared.limits;
        let conns = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(l) = self.http {
            tasks.spawn(accept_loop(
                l,
                None,
                self.shared.clone(),
                conns.clone(),
                stop_rx.clone(),
            ));
        }
        if let Some((l, acceptor)) = self.https {
            tasks.spawn(accept_loop(
                l,
                Some(acceptor),
                self.shared.clone(),
                conns.clone(),
                stop_rx.clone(),
            ));
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections; finishing running requests");
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        // Every connection holds one permit; having them all back means all are closed.
        let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
        if tokio::time::timeout(limits.drain_timeout, conns.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                "some connections were still open after {:?}; closing them",
                limits.drain_timeout
            );
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    conns: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => return,
            p = conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, shared, stop).await,
                Some(acceptor) => {
                    let limit = shared.limits.handshake_timeout;
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_connection(s, shared, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>, mut stop: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(handle_http(shared, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_timeout)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection ended: {e}");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(shared.limits.drain_timeout, conn.as_mut()).await;
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn plain(status: StatusCode, text: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A header value that is always valid: visible ASCII only, shortened.
fn header_text(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(300)
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

fn request_error(e: &RequestError) -> Resp {
    let status = StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = plain(status, &e.detail);
    r.headers_mut().insert(
        "CIMError",
        HeaderValue::from_static(e.kind.cim_error_header()),
    );
    r.headers_mut()
        .insert("CIMErrorDetails", header_text(&e.detail));
    r
}

/// Most bytes read and thrown away after deciding on 413, and how long to wait for each
/// piece: closing a socket with unread input makes the kernel send a reset, which can
/// destroy the 413 before the client reads it; a client that keeps sending past this is
/// cut off anyway.
const DRAIN_MAX: usize = 16 * 1024 * 1024;
const DRAIN_WAIT: Duration = Duration::from_millis(200);

async fn drain(body: &mut Incoming) {
    let mut seen = 0usize;
    while seen < DRAIN_MAX {
        match tokio::time::timeout(DRAIN_WAIT, body.frame()).await {
            Ok(Some(Ok(frame))) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
}

fn too_large(limit: usize) -> Resp {
    let e = RequestError {
        kind: RequestErrorKind::TooLarge,
        detail: format!("the body is larger than {limit} bytes"),
    };
    let mut r = request_error(&e);
    // The rest of the body is not read, so the connection cannot be reused.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn handle_http(shared: Arc<Shared>, req: HttpRequest<Incoming>) -> Resp {
    let user = match shared
        .auth
        .check(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes),
        )
        .await
    {
        AuthResult::Allowed(user) => user,
        AuthResult::Denied => {
            let mut r = plain(StatusCode::UNAUTHORIZED, "authentication required");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"cosnap\""),
            );
            return r;
        }
    };
    let path = req.uri().path();
    if path != "/cimom" && path != "/wsman" {
        return plain(
            StatusCode::NOT_FOUND,
            "CIM-XML is served at /cimom, WS-Management at /wsman",
        );
    }
    let wsman = path == "/wsman";
    if req.method() != Method::POST && (wsman || req.method().as_str() != "M-POST") {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if wsman && let Some(r) = crate::wsman::http::check_content_type(req.headers()) {
        return r;
    }
    let (parts, body) = match read_body(&shared, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Ok(_permit) = shared.in_flight.acquire().await else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    if wsman {
        let work = shared.clone();
        let reply = tokio::task::spawn_blocking(move || work.wsman.handle(&user, &body)).await;
        return match reply {
            Ok(reply) => crate::wsman::http::response(reply),
            Err(e) => {
                tracing::error!("request task failed: {e}");
                plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        };
    }
    let work = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()));
        let req = decode_request(headers, &body, &work.limits.decode)?;
        Ok::<_, RequestError>(crate::ops::handle(&*work.provider, &work.host_name, req))
    })
    .await;
    match result {
        Ok(Ok(xml)) => {
            let mut r = Response::new(Full::new(Bytes::from(xml)));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml; charset=\"utf-8\""),
            );
            h.insert("CIMOperation", HeaderValue::from_static("MethodResponse"));
            r
        }
        Ok(Err(e)) => request_error(&e),
        Err(e) => {
            tracing::error!("request task failed: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// Reads the whole body under the size limit (413, from the declared length or as it
/// grows) and the body timeout (408).
async fn read_body(
    shared: &Shared,
    req: HttpRequest<Incoming>,
) -> Result<(hyper::http::request::Parts, Bytes), Resp> {
    let max = shared.limits.decode.max_body;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (parts, mut body) = req.into_parts();
    if declared.is_some_and(|n| n > max as u64) {
        drain(&mut body).await;
        return Err(too_large(max));
    }
    let collected = tokio::time::timeout(shared.limits.body_timeout, async {
        let mut buf: Vec<u8> = Vec::with_capacity(declared.map_or(8192, |n| n as usize));
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
        Err(_) => Err(plain(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )),
        Ok(Err(e)) => Err(plain(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
        )),
        Ok(Ok(None)) => {
            drain(&mut body).await;
            Err(too_large(max))
        }
        Ok(Ok(Some(b))) => Ok((parts, b)),
    }
}
