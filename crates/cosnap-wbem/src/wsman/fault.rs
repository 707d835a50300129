//! SOAP 1.2 faults as WinRM sends them: a WS-Man subcode, a reason a person can read, a
//! `WSManFault` detail with WinRM's numeric code and, for CIM-level failures, an
//! `MSFT_WmiError` instance carrying the CIM status — always with HTTP 500.

use cosnap_cim::xml::escape_text;
use cosnap_cim::{CimError, CimStatus};

use super::names::{ACTION_ADDRESSING_FAULT, ACTION_FAULT, FAULT_DETAIL};

/// One fault, ready to be written by [`super::encode::fault_envelope`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// `s:Sender` (the request is wrong) or `s:Receiver` (cosnap failed).
    pub sender: bool,
    /// The qualified subcode, e.g. `w:InvalidSelectors` (prefixes declared on the envelope).
    pub subcode: &'static str,
    /// WinRM's error number for `WSManFault/@Code`.
    pub code: u32,
    pub reason: String,
    /// Last segment of a `…/wsman/faultDetail/` URI, when the spec names one.
    pub detail: Option<&'static str>,
    /// The CIM failure behind it, sent as `MSFT_WmiError`.
    pub cim: Option<(CimStatus, u32)>,
}

// WinRM error numbers (Windows SDK `ERROR_WSMAN_*`); WMI HRESULTs for CIM failures.
pub const CODE_INVALID_SELECTORS: u32 = 2150858843;
pub const CODE_INSUFFICIENT_SELECTORS: u32 = 2150858842;
pub const CODE_INVALID_SELECTOR_VALUE: u32 = 2150858845;
pub const CODE_INVALID_RESOURCE_URI: u32 = 2150858811;
pub const CODE_ACTION_NOT_SUPPORTED: u32 = 2150858771;
pub const CODE_CANNOT_PROCESS_FILTER: u32 = 2150858778;
pub const CODE_INVALID_ENUMERATION_CONTEXT: u32 = 2150858779;
pub const CODE_SCHEMA_VALIDATION: u32 = 2150858817;
pub const CODE_MAX_ENVELOPE_SIZE: u32 = 2150858823;
pub const CODE_MAX_ENVELOPE_SIZE_EXCEEDED: u32 = 2150858824;
pub const CODE_OPERATION_TIMEDOUT: u32 = 2150858793;
pub const CODE_QUOTA_USER: u32 = 2150859175;
pub const CODE_ENUMERATION_MODE_UNSUPPORTED: u32 = 2150858886;
pub const CODE_WQL_ON_CLASS_URI: u32 = 2150859003;

impl Fault {
    fn new(sender: bool, subcode: &'static str, code: u32, reason: impl Into<String>) -> Self {
        Self {
            sender,
            subcode,
            code,
            reason: reason.into(),
            detail: None,
            cim: None,
        }
    }

    pub fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn invalid_selectors(code: u32, reason: impl Into<String>) -> Self {
        Self::new(true, "w:InvalidSelectors", code, reason)
    }
    pub fn destination_unreachable(reason: impl Into<String>) -> Self {
        Self::new(
            true,
            "wsa:DestinationUnreachable",
            CODE_INVALID_RESOURCE_URI,
            reason,
        )
        .with_detail("InvalidResourceURI")
    }
    pub fn action_not_supported(reason: impl Into<String>) -> Self {
        Self::new(
            true,
            "wsa:ActionNotSupported",
            CODE_ACTION_NOT_SUPPORTED,
            reason,
        )
    }
    pub fn cannot_process_filter(code: u32, reason: impl Into<String>) -> Self {
        Self::new(true, "wsen:CannotProcessFilter", code, reason)
    }
    pub fn invalid_enumeration_context(reason: impl Into<String>) -> Self {
        Self::new(
            true,
            "wsen:InvalidEnumerationContext",
            CODE_INVALID_ENUMERATION_CONTEXT,
            reason,
        )
    }
    pub fn schema_validation(reason: impl Into<String>) -> Self {
        Self::new(
            true,
            "w:SchemaValidationError",
            CODE_SCHEMA_VALIDATION,
            reason,
        )
    }
    pub fn encoding_limit(code: u32, reason: impl Into<String>) -> Self {
        Self::new(true, "w:EncodingLimit", code, reason)
    }
    pub fn timed_out(reason: impl Into<String>) -> Self {
        Self::new(false, "w:TimedOut", CODE_OPERATION_TIMEDOUT, reason)
    }
    pub fn quota_limit(reason: impl Into<String>) -> Self {
        Self::new(false, "w:QuotaLimit", CODE_QUOTA_USER, reason)
    }
    pub fn unsupported_feature(code: u32, reason: impl Into<String>) -> Self {
        Self::new(true, "w:UnsupportedFeature", code, reason)
    }
    pub fn header_required(reason: impl Into<String>) -> Self {
        Self::new(
            true,
            "wsa:MessageInformationHeaderRequired",
            CODE_SCHEMA_VALIDATION,
            reason,
        )
    }
    pub fn must_understand(reason: impl Into<String>) -> Self {
        Self::new(true, "w:UnsupportedFeature", CODE_SCHEMA_VALIDATION, reason)
    }
    pub fn internal(reason: impl Into<String>) -> Self {
        Self::new(
            false,
            "w:InternalError",
            wmi_hresult(CimStatus::Failed),
            reason,
        )
    }

    /// A CIM failure from the provider or the typing of a request, as WinRM's WMI plugin
    /// reports it: a WS-Man subcode chosen by kind, the WMI HRESULT as the code and the
    /// CIM status in `MSFT_WmiError`.
    pub fn from_cim(e: &CimError) -> Self {
        let (sender, subcode) = match e.status {
            CimStatus::NotFound | CimStatus::InvalidClass | CimStatus::InvalidNamespace => {
                (true, "wsa:DestinationUnreachable")
            }
            CimStatus::InvalidParameter | CimStatus::TypeMismatch => (true, "w:InvalidParameter"),
            CimStatus::MethodNotFound | CimStatus::MethodNotAvailable => {
                (true, "wsa:ActionNotSupported")
            }
            CimStatus::InvalidQuery | CimStatus::QueryLanguageNotSupported => {
                (true, "wsen:CannotProcessFilter")
            }
            CimStatus::AccessDenied => (true, "w:AccessDenied"),
            CimStatus::NotSupported => (true, "w:UnsupportedFeature"),
            CimStatus::InvalidEnumerationContext => (true, "wsen:InvalidEnumerationContext"),
            _ => (false, "w:InternalError"),
        };
        let code = wmi_hresult(e.status);
        Self {
            sender,
            subcode,
            code,
            reason: e.description.clone(),
            detail: None,
            cim: Some((e.status, code)),
        }
    }

    /// The Action of the fault message (WS-Addressing subcodes use WS-Addressing's).
    pub fn action(&self) -> &'static str {
        if self.subcode.starts_with("wsa:") {
            ACTION_ADDRESSING_FAULT
        } else {
            ACTION_FAULT
        }
    }

    /// The `s:Body` content: `s:Fault` with code, subcode, reason and detail.
    pub fn write_body(&self, out: &mut String, machine: &str) {
        out.push_str("<s:Fault><s:Code><s:Value>");
        out.push_str(if self.sender {
            "s:Sender"
        } else {
            "s:Receiver"
        });
        out.push_str("</s:Value><s:Subcode><s:Value>");
        out.push_str(self.subcode);
        out.push_str("</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang=\"en-US\">");
        out.push_str(&escape_text(&self.reason));
        out.push_str("</s:Text></s:Reason><s:Detail>");
        if let Some(d) = self.detail {
            out.push_str("<w:FaultDetail>");
            out.push_str(FAULT_DETAIL);
            out.push_str(d);
            out.push_str("</w:FaultDetail>");
        }
        out.push_str("<f:WSManFault xmlns:f=\"http://schemas.microsoft.com/wbem/wsman/1/wsmanfault\" Code=\"");
        out.push_str(&self.code.to_string());
        out.push_str("\" Machine=\"");
        out.push_str(&cosnap_cim::xml::escape_attr(machine));
        out.push_str("\"><f:Message>");
        out.push_str(&escape_text(&self.reason));
        out.push_str("</f:Message></f:WSManFault>");
        if let Some((status, code)) = self.cim {
            self.write_wmi_error(out, status, code);
        }
        out.push_str("</s:Detail></s:Fault>");
    }

    fn write_wmi_error(&self, out: &mut String, status: CimStatus, code: u32) {
        out.push_str(concat!(
            "<p:MSFT_WmiError b:IsCIM_Error=\"true\" ",
            "xmlns:b=\"http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd\" ",
            "xmlns:p=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError\" ",
            "xsi:type=\"p:MSFT_WmiError_Type\">"
        ));
        let field = |out: &mut String, name: &str, ty: &str, value: &str| {
            out.push_str(&format!(
                "<p:{name} xsi:type=\"cim:{ty}\">{}</p:{name}>",
                escape_text(value)
            ));
        };
        field(
            out,
            "CIMStatusCode",
            "cimUnsignedInt",
            &status.code().to_string(),
        );
        field(
            out,
            "CIMStatusCodeDescription",
            "cimString",
            status.symbol(),
        );
        field(out, "Message", "cimString", &self.reason);
        field(
            out,
            "MessageID",
            "cimString",
            &format!("HRESULT 0x{code:08x}"),
        );
        field(out, "OwningEntity", "cimString", "cosnap");
        field(out, "error_Code", "cimUnsignedInt", &code.to_string());
        field(out, "error_Type", "cimString", "HRESULT");
        out.push_str("</p:MSFT_WmiError>");
    }
}

/// The WMI HRESULT (`WBEM_E_*`) WinRM reports for a CIM status.
pub fn wmi_hresult(status: CimStatus) -> u32 {
    match status {
        CimStatus::Failed => 0x8004_1001,
        CimStatus::NotFound => 0x8004_1002,
        CimStatus::AccessDenied => 0x8004_1003,
        CimStatus::InvalidParameter => 0x8004_1008,
        CimStatus::NotSupported => 0x8004_100C,
        CimStatus::InvalidNamespace => 0x8004_100E,
        CimStatus::InvalidClass => 0x8004_1010,
        CimStatus::TypeMismatch => 0x8004_1005,
        CimStatus::InvalidQuery => 0x8004_1017,
        CimStatus::QueryLanguageNotSupported => 0x8004_1018,
        CimStatus::MethodNotFound => 0x8004_1030,
        CimStatus::MethodNotAvailable => 0x8004_1055,
        _ => 0x8004_1001,
    }
}
