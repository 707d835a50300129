//! WBEM protocol front ends over one HTTP(S) transport: CIM-XML (DMTF DSP0200/DSP0201) at
//! `/cimom` and WS-Management (DSP0226/DSP0227/DSP0230, WinRM's WMI conventions) at `/wsman`,
//! with HTTP Basic authentication, TLS and limits, turning wire requests into calls on a
//! [`cosnap_cim::CimProvider`].
//!
//! * [`request`] — decodes one request (headers + body) into a [`request::Request`]; pure,
//!   bounded, fuzzed;
//! * [`ops`] — runs it against a provider (intrinsic operations, WQL ExecQuery, extrinsic
//!   method calls typed against the class's method definition, the pull operations) and
//!   writes the response;
//! * [`response`] — the message-level CIM-XML writer (elements come from
//!   [`cosnap_cim::xml`]);
//! * [`enumerations`] — open pull enumerations (cursors waiting for the next Pull);
//! * [`context_table`] — the table of open enumeration contexts both front ends keep (owner,
//!   caps, expiry, taken out while a Pull runs);
//! * [`wql`] — the WQL subset ExecQuery accepts;
//! * [`auth`] — users in `<data-dir>/users.json` (PBKDF2-HMAC-SHA256) and Basic checks;
//! * [`tls`] — rustls configuration and the self-signed certificate;
//! * [`server`] — hyper on tokio: listeners, connection caps and timeouts, graceful
//!   shutdown;
//! * [`admission`] — per-source and total connection caps;
//! * [`body`] — response bodies, whole or streamed in chunks;
//! * [`limits`] — the server's timeouts and caps ([`ServerLimits`]);
//! * [`http`] — the protocol-neutral request gates (authentication, throttling, limits,
//!   bounded body) and dispatch by path to a [`http::Protocol`];
//! * [`cimxml`] — CIM-XML at `/cimom` as one such protocol;
//! * [`memory`] — allocator settings and trimming after bursts;
//! * [`throttle`] — per-source delays after failed logins;
//! * [`timed_io`] — the write timeout for clients that do not read;
//! * [`wsman`] — WS-Management at `/wsman` as the second protocol (Identify, Get,
//!   Enumerate/Pull/Release, Invoke, SOAP faults).

pub mod admission;
pub mod auth;
pub mod body;
pub mod cimxml;
pub mod context_table;
pub mod enumerations;
pub mod http;
pub mod limits;
pub mod memory;
pub mod ops;
pub mod request;
pub mod response;
pub mod server;
pub mod throttle;
pub mod timed_io;
pub mod tls;
pub mod wql;
pub mod wsman;

pub use request::{Call, DecodeLimits, Request, RequestError, RequestErrorKind, decode_request};
pub use server::{ServeConfig, ServeError, Server, ServerLimits};
