//! XML namespaces, action URIs and resource-URI prefixes of WS-Management as WinRM speaks it.

pub const SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const WSA: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
pub const WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
pub const WSEN: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";
pub const WSMID: &str = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd";
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
pub const CIM: &str = "http://schemas.dmtf.org/wbem/wscim/1/common";
pub const CIMBINDING: &str = "http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd";
pub const WSMANFAULT: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault";
/// Microsoft's WS-Man extension namespace (`wsmv:`/`p:` headers: DataLocale, SessionId, …).
pub const MS_WSMAN: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd";

pub const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";

const TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/";
const ENUMERATION: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/";
pub const ACTION_FAULT: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault";
pub const ACTION_ADDRESSING_FAULT: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault";
pub const FAULT_DETAIL: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/";

/// `…/wmi/` + namespace + `/` + class.
pub const WMI_PREFIX: &str = "http://schemas.microsoft.com/wbem/wsman/1/wmi/";
/// `…/cim-schema/2/` + class (DMTF form, namespace in `__cimnamespace`).
pub const DMTF_PREFIX: &str = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/";

pub const DIALECT_WQL: &str = "http://schemas.microsoft.com/wbem/wsman/1/WQL";
pub const DIALECT_SELECTOR: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman/SelectorFilter";
pub const DIALECT_ASSOCIATION: &str =
    "http://schemas.dmtf.org/wbem/wsman/1/cimbinding/associationFilter";

/// The WS-Transfer and WS-Enumeration operations cosnap recognises by Action URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandardAction {
    Get,
    Put,
    Create,
    Delete,
    Enumerate,
    Pull,
    Release,
    Renew,
    GetStatus,
}

impl StandardAction {
    pub fn from_uri(uri: &str) -> Option<Self> {
        if let Some(op) = uri.strip_prefix(TRANSFER) {
            return match op {
                "Get" => Some(Self::Get),
                "Put" => Some(Self::Put),
                "Create" => Some(Self::Create),
                "Delete" => Some(Self::Delete),
                _ => None,
            };
        }
        match uri.strip_prefix(ENUMERATION)? {
            "Enumerate" => Some(Self::Enumerate),
            "Pull" => Some(Self::Pull),
            "Release" => Some(Self::Release),
            "Renew" => Some(Self::Renew),
            "GetStatus" => Some(Self::GetStatus),
            _ => None,
        }
    }
}
