//! Resource URIs and selectors: which class a request names and which instance.
//!
//! * `http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/<Class>` — a class
//!   of cosnap's namespace (prefix and namespace matched case-insensitively, as WinRM does);
//! * `…/wmi/root/virtualization/v2/*` — every class, for WQL and association enumerations;
//! * `http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/<Class>` — DMTF form; the namespace
//!   comes from a `__cimnamespace` selector or option and must be cosnap's (WinRM's default
//!   for this form, root/hardware, is not served).
//!
//! Selectors are the key properties, names case-insensitive; `__cimnamespace` is accepted
//! when it names cosnap's namespace.

use cosnap_cim::{ClassDef, ObjectPath, Value};

use super::envelope::{Epr, Selector, SelectorValue};
use super::fault::{self, Fault};
use super::names::{DMTF_PREFIX, WMI_PREFIX};

/// What a resource URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Class(String),
    /// The `/*` URI.
    AllClasses,
}

const NAMESPACE_SELECTOR: &str = "__cimnamespace";

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn check_namespace(ns: &str, uri: &str) -> Result<(), Fault> {
    if cosnap_cim::normalize_namespace(ns) == cosnap_cim::NAMESPACE {
        Ok(())
    } else {
        Err(Fault::destination_unreachable(format!(
            "the resource URI {uri} names namespace {ns:?}; cosnap serves root/virtualization/v2"
        )))
    }
}

/// Parses a resource URI. `namespace_hint` is a `__cimnamespace` selector or option.
pub fn parse(uri: &str, namespace_hint: Option<&str>) -> Result<Resource, Fault> {
    let unknown = || {
        Fault::destination_unreachable(format!(
            "the resource URI {uri:?} is not one cosnap serves; use {WMI_PREFIX}root/virtualization/v2/<Class>"
        ))
    };
    let class = if let Some(rest) = strip_prefix_ci(uri, WMI_PREFIX) {
        let (ns, class) = rest.rsplit_once('/').ok_or_else(unknown)?;
        check_namespace(ns, uri)?;
        if let Some(hint) = namespace_hint {
            check_namespace(hint, uri)?;
        }
        class
    } else if let Some(class) = strip_prefix_ci(uri, DMTF_PREFIX) {
        check_namespace(namespace_hint.unwrap_or("root/hardware"), uri)?;
        class
    } else {
        return Err(unknown());
    };
    if class == "*" {
        return Ok(Resource::AllClasses);
    }
    let valid = !class.is_empty()
        && class.len() <= 256
        && class
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(Resource::Class(class.to_string()))
    } else {
        Err(unknown())
    }
}

/// The `__cimnamespace` selector's value, if any.
pub fn namespace_selector(selectors: &[Selector]) -> Option<&str> {
    selectors.iter().find_map(|s| match &s.value {
        SelectorValue::Text(t) if s.name.eq_ignore_ascii_case(NAMESPACE_SELECTOR) => {
            Some(t.as_str())
        }
        _ => None,
    })
}

/// The class URI cosnap writes for a class (the WMI form).
pub fn class_uri(class_name: &str) -> String {
    format!("{WMI_PREFIX}{}/{class_name}", cosnap_cim::NAMESPACE)
}

/// An object path from selectors, untyped: text values as strings, EPR values as
/// references (their class from their own resource URI).
pub fn path_from_selectors(class_name: &str, selectors: &[Selector]) -> Result<ObjectPath, Fault> {
    let mut path = ObjectPath::new(class_name).with_namespace(cosnap_cim::NAMESPACE);
    for s in selectors {
        if s.name.eq_ignore_ascii_case(NAMESPACE_SELECTOR) {
            continue;
        }
        if path
            .keys
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(&s.name))
        {
            return Err(Fault::invalid_selectors(
                fault::CODE_INVALID_SELECTORS,
                format!("the selector {} is given twice", s.name),
            ));
        }
        let value = match &s.value {
            SelectorValue::Text(t) => Value::String(t.clone()),
            SelectorValue::Epr(epr) => Value::Reference(path_from_epr(epr)?),
        };
        path.keys.push((s.name.clone(), value));
    }
    Ok(path)
}

/// The object path an endpoint reference names.
pub fn path_from_epr(epr: &Epr) -> Result<ObjectPath, Fault> {
    let hint = namespace_selector(&epr.selectors);
    match parse(&epr.resource_uri, hint)? {
        Resource::Class(c) => path_from_selectors(&c, &epr.selectors),
        Resource::AllClasses => Err(Fault::destination_unreachable(
            "an endpoint reference must name a class, not *",
        )),
    }
}

/// Checks that the selectors are exactly the class's keys (names case-insensitive): an
/// unknown name or a missing key is `w:InvalidSelectors`.
pub fn check_keys(path: &ObjectPath, class: &ClassDef) -> Result<(), Fault> {
    for (name, _) in &path.keys {
        let is_key = class.keys().any(|k| k.name.eq_ignore_ascii_case(name));
        if !is_key {
            return Err(Fault::invalid_selectors(
                fault::CODE_INVALID_SELECTORS,
                format!(
                    "{name} is not a key of {}; its keys are {}",
                    class.name,
                    key_list(class)
                ),
            ));
        }
    }
    let missing: Vec<&str> = class
        .keys()
        .filter(|k| path.key(&k.name).is_none())
        .map(|k| k.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Fault::invalid_selectors(
            fault::CODE_INSUFFICIENT_SELECTORS,
            format!(
                "selectors missing for key(s) {} of {}",
                missing.join(", "),
                class.name
            ),
        ));
    }
    Ok(())
}

fn key_list(class: &ClassDef) -> String {
    let keys: Vec<&str> = class.keys().map(|k| k.name.as_str()).collect();
    if keys.is_empty() {
        "none".into()
    } else {
        keys.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_uris() {
        let wmi = "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/virtualization/v2/";
        assert_eq!(
            parse(&format!("{wmi}Msvm_ConcreteJob"), None),
            Ok(Resource::Class("Msvm_ConcreteJob".into()))
        );
        assert_eq!(
            parse(&format!("{}*", wmi.to_uppercase()), None),
            Ok(Resource::AllClasses)
        );
        assert_eq!(
            parse(
                &format!("{wmi}Msvm_ConcreteJob"),
                Some("root\\virtualization\\v2")
            ),
            Ok(Resource::Class("Msvm_ConcreteJob".into()))
        );
        let dmtf = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ConcreteJob";
        assert_eq!(
            parse(dmtf, Some("root/virtualization/v2")),
            Ok(Resource::Class("CIM_ConcreteJob".into()))
        );
        for (uri, hint) in [
            (dmtf, None),
            (
                "http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/Win32_Service",
                None,
            ),
            ("http://example.com/x", None),
            (&format!("{wmi}Msvm_ConcreteJob"), Some("root/cimv2")),
            (&format!("{wmi}Msvm Job"), None),
        ] {
            let f = parse(uri, hint).unwrap_err();
            assert_eq!(f.subcode, "wsa:DestinationUnreachable", "{uri}");
        }
    }

    #[test]
    fn selectors_to_paths() {
        let sel = |n: &str, v: &str| Selector {
            name: n.into(),
            value: SelectorValue::Text(v.into()),
        };
        let p = path_from_selectors(
            "Msvm_ConcreteJob",
            &[
                sel("InstanceID", "J-1"),
                sel("__cimnamespace", "root/virtualization/v2"),
            ],
        )
        .unwrap();
        assert_eq!(
            p.keys,
            vec![("InstanceID".into(), Value::String("J-1".into()))]
        );
        let twice = path_from_selectors("C", &[sel("a", "1"), sel("A", "2")]).unwrap_err();
        assert_eq!(twice.subcode, "w:InvalidSelectors");
        let class = cosnap_cim::schema().class("Msvm_ConcreteJob").unwrap();
        let unknown =
            ObjectPath::new("Msvm_ConcreteJob").with_key("Name", Value::String("x".into()));
        assert_eq!(
            check_keys(&unknown, class).unwrap_err().code,
            fault::CODE_INVALID_SELECTORS
        );
        let none = ObjectPath::new("Msvm_ConcreteJob");
        assert_eq!(
            check_keys(&none, class).unwrap_err().code,
            fault::CODE_INSUFFICIENT_SELECTORS
        );
    }
}
