//! WS-Management front end (DMTF DSP0226/DSP0227, as Microsoft's WinRM serves WMI): the
//! same [`CimProvider`] as `/cimom`, reached through `POST /wsman`.
//!
//! * [`envelope`] — decodes a SOAP envelope into a [`envelope::WsRequest`]; pure, bounded,
//!   fuzzed;
//! * [`resource`] — resource URIs and selectors ↔ classes and object paths;
//! * [`ops`] — Get, Enumerate, Pull, Release and Invoke over the provider;
//! * [`encode`] — the response envelope, instances, EPRs and method output;
//! * [`values`] — datetimes and intervals in their xs: forms;
//! * [`cursor`] — what an open enumeration reads from: the provider's cursor and filter;
//! * [`enumeration`] — open enumeration contexts, bounded per user and expiring;
//! * [`fault`] — SOAP faults with WS-Man subcodes, WinRM codes and WMI error detail.
//!
//! [`Service::handle_body`] is transport-free: the HTTP transport authenticates, reads the body
//! under its limits and passes the user's name and the body bytes.

pub mod cursor;
pub mod encode;
pub mod enumeration;
pub mod envelope;
pub mod fault;
pub mod names;
pub mod ops;
pub mod protocol;
pub mod resource;
pub mod values;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cosnap_cim::CimProvider;
use ring::rand::{SecureRandom, SystemRandom};

use self::enumeration::{ContextLimits, ContextStore};
use self::envelope::{Body, WsRequest};
use self::fault::Fault;
use self::names::{ANONYMOUS, StandardAction};
use self::resource::Resource;
use crate::request::DecodeLimits;

/// The path WS-Management is served at.
pub const PATH: &str = "/wsman";

/// WinRM's MaxTimeoutms: the longest OperationTimeout honoured, and the default.
pub const MAX_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// WinRM's default MaxEnvelopeSizekb (500 KiB), used when a request names none.
pub const DEFAULT_MAX_ENVELOPE: u64 = 512_000;

/// An HTTP status and a SOAP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// The WS-Man service: provider, limits and open enumerations.
pub struct Service {
    provider: Arc<dyn CimProvider>,
    host_name: String,
    limits: DecodeLimits,
    contexts: ContextStore,
    rng: SystemRandom,
}

impl Service {
    pub fn new(
        provider: Arc<dyn CimProvider>,
        host_name: String,
        limits: DecodeLimits,
        context_limits: ContextLimits,
    ) -> Self {
        Self {
            provider,
            host_name,
            limits,
            contexts: ContextStore::new(context_limits),
            rng: SystemRandom::new(),
        }
    }

    /// A fresh `uuid:` identifier (random, version 4).
    pub fn new_uuid(&self) -> String {
        let mut b = [0u8; 16];
        if self.rng.fill(&mut b).is_err() {
            // The system RNG failing is not a reason to fail a request; uniqueness is
            // all a message ID needs.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            b = t.to_le_bytes();
        }
        b[6] = (b[6] & 0x0F) | 0x40;
        b[8] = (b[8] & 0x3F) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
        format!(
            "uuid:{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// Answers one request body from an authenticated `user`.
    pub fn handle_body(&self, user: &str, body: &[u8]) -> Reply {
        let req = match envelope::decode(body, &self.limits) {
            Ok(r) => r,
            Err((f, id)) => return self.fault(&f, id.as_deref()),
        };
        if req.body == Body::Identify && req.action.is_none() {
            return Reply {
                status: 200,
                body: encode::identify_envelope(env!("CARGO_PKG_VERSION")),
            };
        }
        let id = req.message_id.clone();
        let max_envelope = req.max_envelope_size.unwrap_or(DEFAULT_MAX_ENVELOPE);
        let run = AssertUnwindSafe(|| self.dispatch(user, req));
        let result = catch_unwind(run).unwrap_or_else(|_| {
            tracing::error!("a WS-Man operation panicked");
            Err(Fault::internal("internal error while running the request"))
        });
        match result {
            Ok((action, content)) => {
                let body = encode::envelope(&action, id.as_deref(), &self.new_uuid(), &content);
                if body.len() as u64 > max_envelope {
                    let f = Fault::encoding_limit(
                        fault::CODE_MAX_ENVELOPE_SIZE_EXCEEDED,
                        format!(
                            "the response takes {} bytes, more than MaxEnvelopeSize {max_envelope}",
                            body.len()
                        ),
                    );
                    return self.fault(&f, id.as_deref());
                }
                Reply { status: 200, body }
            }
            Err(f) => self.fault(&f, id.as_deref()),
        }
    }

    fn fault(&self, f: &Fault, relates_to: Option<&str>) -> Reply {
        Reply {
            status: 500,
            body: encode::fault_envelope(f, relates_to, &self.new_uuid(), &self.host_name),
        }
    }

    /// Checks the addressing headers and runs the operation; returns the response
    /// Action and body content.
    fn dispatch(&self, user: &str, req: WsRequest) -> Result<(String, String), Fault> {
        let action = req
            .action
            .clone()
            .ok_or_else(|| Fault::header_required("the wsa:Action header is missing"))?;
        if req.message_id.as_deref().is_none_or(str::is_empty) {
            return Err(Fault::header_required(
                "the wsa:MessageID header is missing",
            ));
        }
        if let Some(to) = &req.reply_to
            && to != ANONYMOUS
        {
            return Err(Fault::unsupported_feature(
                fault::CODE_SCHEMA_VALIDATION,
                format!("wsa:ReplyTo must be {ANONYMOUS}, not {to:?}"),
            )
            .with_detail("AddressingMode"));
        }
        let timeout = req
            .operation_timeout
            .unwrap_or(MAX_OPERATION_TIMEOUT)
            .min(MAX_OPERATION_TIMEOUT);
        let max_envelope = req.max_envelope_size.unwrap_or(DEFAULT_MAX_ENVELOPE) as usize;
        let cx = ops::Context {
            provider: &*self.provider,
            user,
            contexts: &self.contexts,
            deadline: Instant::now() + timeout,
            item_budget: max_envelope.saturating_sub(ops::ENVELOPE_OVERHEAD),
        };
        let content = self.run(&cx, &action, &req)?;
        Ok((format!("{action}Response"), content))
    }

    fn resource(req: &WsRequest) -> Result<Resource, Fault> {
        let uri = req.resource_uri.as_deref().ok_or_else(|| {
            Fault::destination_unreachable("the wsman:ResourceURI header is missing")
        })?;
        let hint = resource::namespace_selector(&req.selectors).or_else(|| {
            req.options
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("__cimnamespace"))
                .map(|(_, v)| v.as_str())
        });
        resource::parse(uri, hint)
    }

    fn run(&self, cx: &ops::Context, action: &str, req: &WsRequest) -> Result<String, Fault> {
        match (StandardAction::from_uri(action), &req.body) {
            (Some(StandardAction::Get), _) => ops::get(cx, &Self::resource(req)?, &req.selectors),
            (Some(StandardAction::Enumerate), Body::Enumerate(e)) => {
                ops::enumerate(cx, &Self::resource(req)?, e, || self.new_uuid())
            }
            (
                Some(StandardAction::Pull),
                Body::Pull {
                    context,
                    max_elements,
                },
            ) => ops::pull(cx, context, *max_elements),
            (Some(StandardAction::Release), Body::Release { context }) => ops::release(cx, context),
            (
                Some(
                    a
                    @ (StandardAction::Enumerate | StandardAction::Pull | StandardAction::Release),
                ),
                _,
            ) => Err(Fault::schema_validation(format!(
                "the body of {a:?} must be its wsen:{a:?} element"
            ))),
            (
                Some(a @ (StandardAction::Put | StandardAction::Create | StandardAction::Delete)),
                _,
            ) => Err(Fault::action_not_supported(format!(
                "{a:?} is not supported: cosnap's classes change only through their methods"
            ))),
            (Some(a), _) => Err(Fault::action_not_supported(format!(
                "{a:?} is not supported by cosnap"
            ))),
            (None, body) => self.invoke(cx, action, req, body),
        }
    }

    fn invoke(
        &self,
        cx: &ops::Context,
        action: &str,
        req: &WsRequest,
        body: &Body,
    ) -> Result<String, Fault> {
        let resource = Self::resource(req)?;
        let uri = req.resource_uri.as_deref().unwrap_or_default();
        let method = action
            .rsplit_once('/')
            .filter(|(base, _)| base.eq_ignore_ascii_case(uri))
            .map(|(_, m)| m)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                Fault::action_not_supported(format!(
                    "the action {action:?} is neither a WS-Transfer/WS-Enumeration action nor <ResourceURI>/<Method>"
                ))
            })?;
        if let Resource::Class(c) = &resource {
            let class = crate::ops::class_for(&*self.provider, c)?;
            if class.method(method).is_none() {
                return Err(Fault::from_cim(&cosnap_cim::CimError::new(
                    cosnap_cim::CimStatus::MethodNotFound,
                    format!("class {} has no method {method}", class.name),
                )));
            }
        }
        let params = match body {
            Body::Empty => &[][..],
            Body::Element {
                local_name, params, ..
            } if local_name.eq_ignore_ascii_case(&format!("{method}_INPUT")) => params,
            Body::Element { local_name, .. } => {
                return Err(Fault::schema_validation(format!(
                    "the body of {method} must be <{method}_INPUT>, not <{local_name}>"
                )));
            }
            _ => {
                return Err(Fault::schema_validation(
                    "unexpected body for a method call",
                ));
            }
        };
        ops::invoke(cx, &resource, method, &req.selectors, params)
    }
}

#[cfg(test)]
mod tests;
