//! The HTTP(S) server: listeners, connection admission and timeouts, and graceful
//! shutdown. hyper 1 on tokio.
//!
//! Per connection: the [`ConnectionGate`] admits it or refuses it at once (over
//! [`ServerLimits::max_connections_per_source`] or [`ServerLimits::max_connections`]);
//! TLS must finish within [`ServerLimits::handshake_timeout`]; each request head (the first
//! and every keep-alive one) within [`ServerLimits::header_timeout`], at most
//! [`crate::http::MAX_HEADER_BYTES`]; writes that make no progress for
//! [`ServerLimits::write_timeout`] end the connection. Requests then go through
//! [`crate::http::handle_http`], which admits them and dispatches by path to the
//! protocols in [`routes`].
//!
//! Shutdown: when the shutdown future resolves, the listeners close, every connection is
//! told to finish its current request and close, and [`Server::run`] returns once they
//! have (or after [`ServerLimits::drain_timeout`]). The caller then deals with jobs.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use cosnap_cim::CimProvider;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::admission::{ConnectionGate, Refusal};
use crate::auth::{Authenticator, UserError};
use crate::cimxml::CimXml;
use crate::http::{MAX_HEADER_BYTES, MAX_HEADER_COUNT, Routes, Transport, handle_http};
pub use crate::limits::ServerLimits;
use crate::timed_io::WriteTimeout;
use crate::tls::{self, TlsError, TlsFiles};

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

/// The protocols this server speaks, by path. A new front end is one more line here.
pub fn routes(config: &ServeConfig, provider: &Arc<dyn CimProvider>) -> Routes {
    vec![
        (
            crate::cimxml::PATH,
            Arc::new(CimXml::new(
                provider.clone(),
                config.host_name.clone(),
                config.limits.decode,
            )),
        ),
        (
            crate::wsman::PATH,
            Arc::new(crate::wsman::Service::new(
                provider.clone(),
                config.host_name.clone(),
                config.limits.decode,
                crate::wsman::enumeration::ContextLimits::default(),
            )),
        ),
    ]
}

/// A bound, not yet running server.
pub struct Server {
    transport: Arc<Transport>,
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
        check_listeners(&config)?;
        let auth = Authenticator::new(&config.data_dir)?;
        if auth.user_count() == 0 {
            tracing::warn!(
                "no users yet: every request will be refused until `cosnap user add NAME --password-stdin`"
            );
        }
        let https = match config.https_listen {
            Some(addr) => Some((bind(addr).await?, tls_acceptor(&config)?)),
            None => None,
        };
        let http = match config.http_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let transport = Arc::new(Transport {
            routes: routes(&config, &provider),
            auth,
            limits: config.limits,
            in_flight: Semaphore::new(config.limits.max_in_flight.max(1)),
            large_bodies: Semaphore::new(config.limits.max_large_bodies.max(1)),
            answered: AtomicU64::new(0),
        });
        Ok(Server {
            transport,
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
        let limits = self.transport.limits;
        let gate = ConnectionGate::new(limits.max_connections, limits.max_connections_per_source);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let listeners = self
            .http
            .map(|l| (l, None))
            .into_iter()
            .chain(self.https.map(|(l, a)| (l, Some(a))));
        for (listener, tls) in listeners {
            tasks.spawn(accept_loop(
                listener,
                tls,
                self.transport.clone(),
                gate.clone(),
                stop_rx.clone(),
            ));
        }
        let trimmer = tokio::spawn(crate::memory::trim_after_bursts(self.transport.clone()));
        shutdown.await;
        trimmer.abort();
        tracing::info!("shutting down: no new connections; finishing running requests");
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        let deadline = tokio::time::Instant::now() + limits.drain_timeout;
        while gate.open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if gate.open() > 0 {
            tracing::warn!(
                "some connections were still open after {:?}; closing them",
                limits.drain_timeout
            );
        }
    }
}

fn check_listeners(config: &ServeConfig) -> Result<(), ServeError> {
    if config.http_listen.is_none() && config.https_listen.is_none() {
        return Err(ServeError::NoListener);
    }
    if let Some(addr) = config.http_listen
        && !addr.ip().is_loopback()
        && !config.insecure_allow_plain_http
    {
        return Err(ServeError::PlainHttpNotLoopback(addr));
    }
    Ok(())
}

/// Connections the kernel holds for us before `accept` (capped by `net.core.somaxconn`).
/// tokio's default of 128 overflows when a few hundred clients connect at once, and every
/// dropped SYN costs the client a one-second retransmit, legitimate clients included.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let err = |source| ServeError::Bind { addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

fn tls_acceptor(config: &ServeConfig) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
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
    Ok(tokio_rustls::TlsAcceptor::from(tls::server_config(&files)?))
}

/// What a plain-HTTP client refused at the door reads.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 26\r\n\r\ntoo many open connections\n";

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    transport: Arc<Transport>,
    gate: Arc<ConnectionGate>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
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
        let ticket = match gate.admit(peer.ip()) {
            Ok(t) => t,
            Err(why) => {
                refuse_connection(stream, tls.is_none(), peer, why);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let transport = transport.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ticket = ticket;
            match tls {
                None => serve_connection(stream, peer, transport, stop).await,
                Some(acceptor) => {
                    let limit = transport.limits.handshake_timeout;
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_connection(s, peer, transport, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Closes a connection over a cap at once. A plain-HTTP client gets a 503 if the socket
/// takes it without waiting (it always does on a fresh connection); TLS is just closed.
fn refuse_connection(stream: TcpStream, plain_http: bool, peer: SocketAddr, why: Refusal) {
    tracing::debug!(%peer, "connection refused: {why:?}");
    if plain_http {
        let _ = stream.try_write(REFUSED);
    }
    // A FIN after the answer, rather than a bare close, lets the client read the 503.
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = stream.shutdown().await;
    });
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    transport: Arc<Transport>,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = transport.limits;
    let service = hyper::service::service_fn(move |req| {
        let transport = transport.clone();
        async move { Ok::<_, Infallible>(handle_http(transport, peer, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADER_COUNT)
        .max_buf_size(64 * 1024);
    let io = TokioIo::new(WriteTimeout::new(stream, limits.write_timeout));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.drain_timeout, conn.as_mut()).await;
        }
    }
}
