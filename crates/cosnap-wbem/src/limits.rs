//! The server's resource limits: timeouts, connection caps and request caps, shared by the
//! listener ([`crate::server`]) and the request gates ([`crate::http`]).

use std::time::Duration;

use crate::request::DecodeLimits;

/// Resource limits of the server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub decode: DecodeLimits,
    /// Time to receive a request's headers; also how long an idle keep-alive connection
    /// stays open.
    pub header_timeout: Duration,
    /// Time to receive a request's body.
    pub body_timeout: Duration,
    /// Time to complete a TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a write may make no progress (a client that does not read its answer).
    pub write_timeout: Duration,
    /// Open connections at once; more are refused at once (503 on plain HTTP).
    pub max_connections: usize,
    /// Open connections from one source (IPv4 address or IPv6 /64); more are refused.
    pub max_connections_per_source: usize,
    /// Requests reading their body or running at once.
    pub max_in_flight: usize,
    /// Of those, requests with a body over [`crate::http::SMALL_BODY`] (or of unknown
    /// length) at once.
    pub max_large_bodies: usize,
    /// How long an admitted request waits for one of those places before `503`.
    pub queue_timeout: Duration,
    /// How long shutdown waits for running requests.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            decode: DecodeLimits::default(),
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections: 512,
            max_connections_per_source: 64,
            max_in_flight: 16,
            max_large_bodies: 4,
            queue_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(30),
        }
    }
}
