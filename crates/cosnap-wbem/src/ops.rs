//! Running one decoded [`Request`] against a [`CimProvider`] and writing the response.
//!
//! Status codes (DSP0200 §5.3 per operation): a namespace other than
//! `root/virtualization/v2` (any case, either slash) → `CIM_ERR_INVALID_NAMESPACE` 3;
//! GetClass of an unknown class → `CIM_ERR_NOT_FOUND` 6, every other operation naming an
//! unknown class → `CIM_ERR_INVALID_CLASS` 5; no such instance → 6; an unknown
//! intrinsic parameter, a parameter of the wrong type or an unknown method parameter →
//! `CIM_ERR_INVALID_PARAMETER` 4; unknown extrinsic method → `CIM_ERR_METHOD_NOT_FOUND` 17;
//! OpenQueryInstances, PullInstances, EnumerationCount, the write operations and the
//! qualifier operations → `CIM_ERR_NOT_SUPPORTED` 7; the other pull operations are served
//! by the `pull` module;
//! ExecQuery with a language other than WQL → 14, a query that does not parse → 15.
//!
//! Decisions on vague points:
//! * `LocalOnly`, `IncludeQualifiers` and `IncludeClassOrigin` are deprecated for instance
//!   operations (DSP0200 1.3); instances are always returned with every property, without
//!   qualifiers or class origins. `PropertyList` is honoured everywhere.
//! * `DeepInheritance=false` on EnumerateInstances keeps only the properties the named
//!   class declares (the instances of subclasses are still returned, as DSP0200 says).
//! * Associators/References on a class path (class-level association queries) answer
//!   `CIM_ERR_NOT_SUPPORTED`: cosnap's associations are between instances only.
//! * Out parameters that are references get this server's host and namespace, so a client
//!   can use the returned path as it is (pywbem: `conn.GetInstance(out["Job"])`).
//! * A provider that panics yields `CIM_ERR_FAILED`, never a dropped connection.

use std::panic::{AssertUnwindSafe, catch_unwind};

use cosnap_cim::xml::{self, ClassFlags, ParamValue, RawValue};
use cosnap_cim::{
    AssocFilter, CimError, CimProvider, CimStatus, CimType, ClassDef, Instance, ObjectPath, Value,
};

use crate::enumerations::Enumerations;
use crate::request::{Call, Request};
use crate::response::{self, Kind, ResponseWriter};
use crate::wql;

mod pull;
mod query;
pub mod stream;

pub use stream::Unfinished;
use stream::{Items, Rest};

type Result<T> = std::result::Result<T, CimError>;

/// Runs a request with enumerations that live only as long as this call (pull operations
/// still answer, but nothing can be pulled later) and returns the whole response body: the
/// form for tests and the fuzz target.
pub fn handle(provider: &dyn CimProvider, host_name: &str, req: Request) -> String {
    let session = Session {
        provider,
        host_name,
        enumerations: &Enumerations::default(),
        user: "",
    };
    match handle_in(&session, req) {
        Answer::Whole(body) => body,
        Answer::Streamed(unfinished) => unfinished.collect(provider),
    }
}

/// A response: whole, or begun with the rest still to produce (a large result list).
pub enum Answer {
    Whole(String),
    Streamed(Box<Unfinished>),
}

/// What a request runs against: the provider, this server's name, and the open pull
/// enumerations with the user asking (who owns the ones they open).
pub struct Session<'a> {
    pub provider: &'a dyn CimProvider,
    pub host_name: &'a str,
    pub enumerations: &'a Enumerations,
    pub user: &'a str,
}

/// Runs a request and returns the response (CIM errors travel inside a 200 response too).
/// A result list longer than one [`stream::BATCH`] comes back [`Answer::Streamed`].
pub fn handle_in(session: &Session, req: Request) -> Answer {
    let Session {
        provider,
        host_name,
        ..
    } = *session;
    let kind = match req.call {
        Call::Intrinsic { .. } => Kind::Intrinsic,
        Call::Extrinsic { .. } => Kind::Extrinsic,
    };
    let name = req.call.name().to_string();
    let id = req.message_id.clone();
    let run = || -> Result<Answer> {
        let mut w = ResponseWriter::new(&id, kind, &name);
        let mut rest = None;
        match req.call {
            Call::Intrinsic {
                name,
                namespace,
                params,
            } => {
                check_namespace(&namespace)?;
                rest = Intrinsic {
                    provider,
                    host_name,
                    params,
                    enumerations: session.enumerations,
                    user: session.user,
                }
                .run(&name, w.buf())?;
            }
            Call::Extrinsic {
                name,
                target,
                params,
            } => {
                check_namespace(target.namespace.as_deref().unwrap_or_default())?;
                invoke(provider, host_name, target, &name, params, w.buf())?;
            }
        }
        Ok(match rest {
            None => Answer::Whole(w.finish()),
            Some(rest) => {
                let (head, tail) = w.into_head_and_tail();
                Answer::Streamed(Box::new(Unfinished::new(head, rest, tail)))
            }
        })
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Answer::Whole(response::error_response(&id, kind, &name, &e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(method = %name, "provider panicked: {what}");
            Answer::Whole(response::error_response(
                &id,
                kind,
                &name,
                &CimError::failed(format!("internal error while running {name}")),
            ))
        }
    }
}

pub(crate) fn check_namespace(ns: &str) -> Result<()> {
    if cosnap_cim::normalize_namespace(ns) == cosnap_cim::NAMESPACE {
        Ok(())
    } else {
        Err(CimError::new(
            CimStatus::InvalidNamespace,
            format!(
                "namespace {ns:?} is not served; cosnap serves {}",
                cosnap_cim::NAMESPACE
            ),
        ))
    }
}

/// A class that must exist for an operation other than GetClass.
pub(crate) fn class_for(provider: &dyn CimProvider, name: &str) -> Result<ClassDef> {
    provider.get_class(name).map_err(|e| match e.status {
        CimStatus::NotFound | CimStatus::InvalidClass => CimError::new(
            CimStatus::InvalidClass,
            format!("class {name} does not exist in {}", cosnap_cim::NAMESPACE),
        ),
        _ => e,
    })
}

/// Gives a path this server's namespace and types its keys against its class.
pub(crate) fn resolve_path(
    provider: &dyn CimProvider,
    mut path: ObjectPath,
) -> Result<(ObjectPath, ClassDef)> {
    if let Some(ns) = &path.namespace {
        check_namespace(ns)?;
    }
    let class = class_for(provider, &path.class_name)?;
    xml::type_path_keys(&mut path, &class)
        .map_err(|e| CimError::invalid_parameter(format!("{}: {e}", path.class_name)))?;
    path.class_name = class.name.clone();
    path.namespace = Some(cosnap_cim::NAMESPACE.to_string());
    path.host = None;
    Ok((path, class))
}

struct Intrinsic<'a> {
    provider: &'a dyn CimProvider,
    host_name: &'a str,
    params: Vec<ParamValue>,
    enumerations: &'a Enumerations,
    user: &'a str,
}

const NOT_SUPPORTED_OPS: &[&str] = &[
    "OpenQueryInstances",
    "PullInstances",
    "EnumerationCount",
    "CreateInstance",
    "ModifyInstance",
    "DeleteInstance",
    "CreateClass",
    "ModifyClass",
    "DeleteClass",
    "GetProperty",
    "SetProperty",
    "GetQualifier",
    "SetQualifier",
    "DeleteQualifier",
    "EnumerateQualifiers",
];

impl Intrinsic<'_> {
    /// Runs `op`; a result list too long for one batch leaves its [`Rest`] to stream.
    fn run(self, op: &str, out: &mut String) -> Result<Option<Rest>> {
        let allowed = allowed_parameters(op)?;
        self.check_parameters(op, allowed)?;
        match op {
            "EnumerateInstances" => self.enumerate_instances(out, false),
            "EnumerateInstanceNames" => self.enumerate_instances(out, true),
            "Associators" => self.associators(out, true, false),
            "AssociatorNames" => self.associators(out, true, true),
            "References" => self.associators(out, false, false),
            "ReferenceNames" => self.associators(out, false, true),
            "ExecQuery" => self.exec_query(out),
            _ => self.run_whole(op, out).map(|()| None),
        }
    }

    fn run_whole(self, op: &str, out: &mut String) -> Result<()> {
        match op {
            "GetClass" => self.get_class(out),
            "EnumerateClasses" => self.enumerate_classes(out, false),
            "EnumerateClassNames" => self.enumerate_classes(out, true),
            "GetInstance" => self.get_instance(out),
            _ => self.run_pull(op, out),
        }
    }

    fn check_parameters(&self, op: &str, allowed: &[&str]) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&p.name)) {
                return Err(CimError::invalid_parameter(format!(
                    "{op} has no parameter {}",
                    p.name
                )));
            }
            if self.params[..i]
                .iter()
                .any(|q| q.name.eq_ignore_ascii_case(&p.name))
            {
                return Err(CimError::invalid_parameter(format!(
                    "parameter {} given twice",
                    p.name
                )));
            }
        }
        Ok(())
    }
}

/// The parameters an intrinsic operation accepts, or why it is not served.
fn allowed_parameters(op: &str) -> Result<&'static [&'static str]> {
    let allowed: &[&str] = match op {
        "GetClass" => &[
            "ClassName",
            "LocalOnly",
            "IncludeQualifiers",
            "IncludeClassOrigin",
            "PropertyList",
        ],
        "EnumerateClasses" => &[
            "ClassName",
            "DeepInheritance",
            "LocalOnly",
            "IncludeQualifiers",
            "IncludeClassOrigin",
        ],
        "EnumerateClassNames" => &["ClassName", "DeepInheritance"],
        "GetInstance" => &[
            "InstanceName",
            "LocalOnly",
            "IncludeQualifiers",
            "IncludeClassOrigin",
            "PropertyList",
        ],
        "EnumerateInstances" => &[
            "ClassName",
            "LocalOnly",
            "DeepInheritance",
            "IncludeQualifiers",
            "IncludeClassOrigin",
            "PropertyList",
        ],
        "EnumerateInstanceNames" => &["ClassName"],
        "ExecQuery" => &["QueryLanguage", "Query"],
        "Associators" => &[
            "ObjectName",
            "AssocClass",
            "ResultClass",
            "Role",
            "ResultRole",
            "IncludeQualifiers",
            "IncludeClassOrigin",
            "PropertyList",
        ],
        "AssociatorNames" => &[
            "ObjectName",
            "AssocClass",
            "ResultClass",
            "Role",
            "ResultRole",
        ],
        "References" => &[
            "ObjectName",
            "ResultClass",
            "Role",
            "IncludeQualifiers",
            "IncludeClassOrigin",
            "PropertyList",
        ],
        "ReferenceNames" => &["ObjectName", "ResultClass", "Role"],
        _ if pull::is_pull_operation(op) => pull::parameters(op),
        _ if NOT_SUPPORTED_OPS.iter().any(|n| n.eq_ignore_ascii_case(op)) => {
            return Err(CimError::not_supported(format!(
                "{op} is not supported by cosnap"
            )));
        }
        _ => {
            return Err(CimError::not_supported(format!(
                "{op} is not an intrinsic method cosnap knows"
            )));
        }
    };
    Ok(allowed)
}

impl Intrinsic<'_> {
    fn take(&mut self, name: &str) -> Option<ParamValue> {
        let i = self
            .params
            .iter()
            .position(|p| p.name.eq_ignore_ascii_case(name))?;
        Some(self.params.swap_remove(i))
    }

    fn boolean(&mut self, name: &str, default: bool) -> Result<bool> {
        match self.take(name).map(|p| p.value) {
            None | Some(RawValue::Null) => Ok(default),
            Some(RawValue::Scalar(s)) => match xml::parse_scalar(&s, CimType::Boolean) {
                Ok(Value::Boolean(b)) => Ok(b),
                _ => Err(CimError::invalid_parameter(format!(
                    "{name}: expected TRUE or FALSE, got {s:?}"
                ))),
            },
            Some(_) => Err(CimError::invalid_parameter(format!(
                "{name}: expected a boolean VALUE"
            ))),
        }
    }

    fn string(&mut self, name: &str) -> Result<Option<String>> {
        match self.take(name).map(|p| p.value) {
            None | Some(RawValue::Null) => Ok(None),
            Some(RawValue::Scalar(s)) => Ok(Some(s)),
            Some(_) => Err(CimError::invalid_parameter(format!(
                "{name}: expected a string VALUE"
            ))),
        }
    }

    /// A CLASSNAME parameter (a plain VALUE with the name is accepted too).
    fn class_name(&mut self, name: &str) -> Result<Option<String>> {
        match self.take(name).map(|p| p.value) {
            None | Some(RawValue::Null) => Ok(None),
            Some(RawValue::Reference(p)) if p.keys.is_empty() => Ok(Some(p.class_name)),
            Some(RawValue::Scalar(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Some(_) => Err(CimError::invalid_parameter(format!(
                "{name}: expected a CLASSNAME"
            ))),
        }
    }

    /// An object name: an INSTANCENAME, or a CLASSNAME (keys empty).
    fn object_name(&mut self, name: &str) -> Result<ObjectPath> {
        match self.take(name).map(|p| p.value) {
            Some(RawValue::Reference(p)) => Ok(p),
            None | Some(RawValue::Null) => Err(CimError::invalid_parameter(format!(
                "parameter {name} is required"
            ))),
            Some(_) => Err(CimError::invalid_parameter(format!(
                "{name}: expected an INSTANCENAME or CLASSNAME"
            ))),
        }
    }

    fn property_list(&mut self) -> Result<Option<Vec<String>>> {
        match self.take("PropertyList").map(|p| p.value) {
            None | Some(RawValue::Null) => Ok(None),
            Some(RawValue::Array(items)) => Ok(Some(items.into_iter().flatten().collect())),
            Some(RawValue::Scalar(s)) => Ok(Some(vec![s])),
            Some(_) => Err(CimError::invalid_parameter(
                "PropertyList: expected a VALUE.ARRAY of property names",
            )),
        }
    }

    fn get_class(mut self, out: &mut String) -> Result<()> {
        let name = self
            .class_name("ClassName")?
            .ok_or_else(|| CimError::invalid_parameter("parameter ClassName is required"))?;
        let flags = ClassFlags {
            local_only: self.boolean("LocalOnly", true)?,
            include_qualifiers: self.boolean("IncludeQualifiers", true)?,
            include_class_origin: self.boolean("IncludeClassOrigin", false)?,
        };
        let props = self.property_list()?;
        let mut class = self.provider.get_class(&name).map_err(|e| match e.status {
            CimStatus::NotFound | CimStatus::InvalidClass => CimError::not_found(format!(
                "class {name} does not exist in {}",
                cosnap_cim::NAMESPACE
            )),
            _ => e,
        })?;
        if let Some(props) = props {
            class
                .properties
                .retain(|p| props.iter().any(|n| n.eq_ignore_ascii_case(&p.name)));
        }
        out.push_str("<IRETURNVALUE>");
        xml::write_class(out, &class, flags);
        out.push_str("</IRETURNVALUE>");
        Ok(())
    }

    fn enumerate_classes(mut self, out: &mut String, names_only: bool) -> Result<()> {
        let root = self.class_name("ClassName")?;
        let deep = self.boolean("DeepInheritance", false)?;
        let flags = ClassFlags {
            local_only: self.boolean("LocalOnly", true)?,
            include_qualifiers: self.boolean("IncludeQualifiers", true)?,
            include_class_origin: self.boolean("IncludeClassOrigin", false)?,
        };
        let root = match root {
            Some(r) => Some(class_for(self.provider, &r)?.name),
            None => None,
        };
        let classes: Vec<ClassDef> = self
            .provider
            .class_names()
            .iter()
            .filter_map(|n| self.provider.get_class(n).ok())
            .collect();
        let parent_of = |c: &ClassDef| c.superclass.clone();
        let is_descendant = |c: &ClassDef, root: &str| {
            let mut cur = parent_of(c);
            let mut hops = 0;
            while let Some(p) = cur {
                if p.eq_ignore_ascii_case(root) {
                    return true;
                }
                hops += 1;
                if hops > 64 {
                    break;
                }
                cur = classes
                    .iter()
                    .find(|x| x.name.eq_ignore_ascii_case(&p))
                    .and_then(parent_of);
            }
            false
        };
        out.push_str("<IRETURNVALUE>");
        for c in &classes {
            let selected = match (&root, deep) {
                (None, true) => true,
                (None, false) => c.superclass.is_none(),
                (Some(r), false) => c
                    .superclass
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(r)),
                (Some(r), true) => is_descendant(c, r),
            };
            if !selected {
                continue;
            }
            if names_only {
                out.push_str("<CLASSNAME NAME=\"");
                out.push_str(&xml::escape_attr(&c.name));
                out.push_str("\"/>");
            } else {
                xml::write_class(out, c, flags);
            }
        }
        out.push_str("</IRETURNVALUE>");
        Ok(())
    }

    fn get_instance(mut self, out: &mut String) -> Result<()> {
        let path = self.object_name("InstanceName")?;
        if path.keys.is_empty() {
            return Err(CimError::invalid_parameter(
                "InstanceName: expected an INSTANCENAME with keys",
            ));
        }
        for flag in ["LocalOnly", "IncludeQualifiers", "IncludeClassOrigin"] {
            self.boolean(flag, false)?;
        }
        let props = self.property_list()?;
        let (path, _) = resolve_path(self.provider, path)?;
        let mut inst = self.provider.get_instance(&path)?;
        filter_properties(&mut inst, props.as_deref());
        out.push_str("<IRETURNVALUE>");
        xml::write_instance(out, &inst);
        out.push_str("</IRETURNVALUE>");
        Ok(())
    }

    fn enumerate_instances(mut self, out: &mut String, names_only: bool) -> Result<Option<Rest>> {
        let name = self
            .class_name("ClassName")?
            .ok_or_else(|| CimError::invalid_parameter("parameter ClassName is required"))?;
        let deep = self.boolean("DeepInheritance", true)?;
        for flag in ["LocalOnly", "IncludeQualifiers", "IncludeClassOrigin"] {
            self.boolean(flag, false)?;
        }
        let property_list = self.property_list()?;
        let class = class_for(self.provider, &name)?;
        let cursor = self.provider.enumerate_cursor(&class.name)?;
        let items = if names_only {
            Items::InstanceNames
        } else {
            Items::NamedInstances {
                declared_only: (!deep).then_some(class),
                property_list,
            }
        };
        stream::start(self.provider, self.host_name, out, cursor, items)
    }

    fn associators(
        mut self,
        out: &mut String,
        associators: bool,
        names_only: bool,
    ) -> Result<Option<Rest>> {
        let (path, filter) = self.association_target("ObjectName", associators)?;
        let property_list = self.property_list()?;
        let cursor = if associators {
            self.provider.associators_cursor(&path, &filter)?
        } else {
            self.provider.references_cursor(&path, &filter)?
        };
        let items = if names_only {
            Items::ObjectPaths
        } else {
            Items::ObjectsWithPath { property_list }
        };
        stream::start(self.provider, self.host_name, out, cursor, items)
    }
}

impl Intrinsic<'_> {
    /// The instance and filters of an association operation (the object named by
    /// `object_param`), checked: filter classes exist, the object is an instance path of
    /// this namespace. Consumes the flags the operations accept and ignore.
    fn association_target(
        &mut self,
        object_param: &str,
        associators: bool,
    ) -> Result<(ObjectPath, AssocFilter)> {
        let object = self.object_name(object_param)?;
        let mut filter = AssocFilter {
            assoc_class: if associators {
                self.class_name("AssocClass")?
            } else {
                None
            },
            result_class: self.class_name("ResultClass")?,
            role: self.string("Role")?,
            result_role: if associators {
                self.string("ResultRole")?
            } else {
                None
            },
        };
        for flag in ["IncludeQualifiers", "IncludeClassOrigin"] {
            self.boolean(flag, false)?;
        }
        if object.keys.is_empty() {
            // Validate the class first so that a typo gets the right code.
            class_for(self.provider, &object.class_name)?;
            return Err(CimError::not_supported(
                "association operations on classes are not supported; name an instance",
            ));
        }
        for c in [&mut filter.assoc_class, &mut filter.result_class]
            .into_iter()
            .flatten()
        {
            *c = class_for(self.provider, c)
                .map_err(|_| CimError::invalid_parameter(format!("class {c} does not exist")))?
                .name;
        }
        let (path, _) = resolve_path(self.provider, object)?;
        Ok((path, filter))
    }
}

fn filter_properties(inst: &mut Instance, props: Option<&[String]>) {
    if let Some(props) = props {
        inst.properties
            .retain(|p| props.iter().any(|n| n.eq_ignore_ascii_case(&p.name)));
    }
}

/// Gives a reference this server's host and namespace when it has none.
pub(crate) fn qualify(v: &mut Value, host: &str) {
    match v {
        Value::Reference(p) => {
            if p.namespace.is_none() {
                p.namespace = Some(cosnap_cim::NAMESPACE.to_string());
            }
            if p.host.is_none() {
                p.host = Some(host.to_string());
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| qualify(i, host)),
        _ => {}
    }
}

/// Deepest element nesting accepted inside an embedded-instance string (an INSTANCE with
/// properties is 3 levels; instances embedded in instances add 3 each).
const EMBEDDED_MAX_DEPTH: usize = 32;

/// The codec parses embedded-instance text with roxmltree, whose tokenizer recurses per
/// nesting level; refuse deep text before it gets there.
fn embedded_too_deep(raw: &RawValue) -> bool {
    match raw {
        RawValue::Scalar(s) => crate::request::nesting_exceeds(s, EMBEDDED_MAX_DEPTH),
        RawValue::Array(items) => items
            .iter()
            .flatten()
            .any(|s| crate::request::nesting_exceeds(s, EMBEDDED_MAX_DEPTH)),
        _ => false,
    }
}

fn invoke(
    provider: &dyn CimProvider,
    host_name: &str,
    target: ObjectPath,
    method_name: &str,
    params: Vec<ParamValue>,
    out: &mut String,
) -> Result<()> {
    let call = prepare_call(provider, target, method_name, params)?;
    let method = call.method;
    let outcome = provider.invoke_method(&call.target, &method.name, call.params)?;
    response::write_return_value(out, method.return_type, outcome.return_value);
    for (name, mut value) in outcome.out_params {
        qualify(&mut value, host_name);
        let def = method.parameter(&name);
        let declared = def.map(|d| (d.ty, d.is_array));
        let name = def.map_or(name.as_str(), |d| d.name.as_str());
        response::write_out_param(out, name, declared, Some(&value));
    }
    Ok(())
}

/// An extrinsic call checked and typed against its class, ready for the provider.
pub(crate) struct PreparedCall {
    pub target: ObjectPath,
    pub method: cosnap_cim::MethodDef,
    pub params: Vec<(String, Value)>,
}

/// Resolves the target, finds the method and types every in-parameter against its
/// definition (shared by the CIM-XML and WS-Man front ends).
pub(crate) fn prepare_call(
    provider: &dyn CimProvider,
    target: ObjectPath,
    method_name: &str,
    params: Vec<ParamValue>,
) -> Result<PreparedCall> {
    let (target, class) = resolve_path(provider, target)?;
    let method = class
        .method(method_name)
        .ok_or_else(|| {
            CimError::new(
                CimStatus::MethodNotFound,
                format!("class {} has no method {method_name}", class.name),
            )
        })?
        .clone();
    let mut typed: Vec<(String, Value)> = Vec::with_capacity(params.len());
    let mut seen: Vec<String> = Vec::with_capacity(params.len());
    for pv in params {
        let def = method.parameter(&pv.name).ok_or_else(|| {
            CimError::invalid_parameter(format!(
                "method {}.{} has no parameter {}",
                class.name, method.name, pv.name
            ))
        })?;
        if seen.iter().any(|s| s.eq_ignore_ascii_case(&def.name)) {
            return Err(CimError::invalid_parameter(format!(
                "parameter {} given twice",
                def.name
            )));
        }
        seen.push(def.name.clone());
        let is_in = def
            .qualifier("In")
            .is_none_or(|q| q.value != Some(Value::Boolean(false)));
        if !is_in {
            return Err(CimError::invalid_parameter(format!(
                "parameter {} is an output parameter only",
                def.name
            )));
        }
        let embedded = def.ty == CimType::String
            && (pv.embedded || def.qualifier("EmbeddedInstance").is_some());
        if embedded && embedded_too_deep(&pv.value) {
            return Err(CimError::invalid_parameter(format!(
                "{}: the embedded instance is nested deeper than {EMBEDDED_MAX_DEPTH} levels",
                def.name
            )));
        }
        if let Some(v) = pv
            .typed(Some(def))
            .map_err(|e| CimError::invalid_parameter(e.to_string()))?
        {
            if let Value::Reference(p) = &v
                && let Some(ns) = &p.namespace
            {
                check_namespace(ns).map_err(|_| {
                    CimError::invalid_parameter(format!(
                        "{}: reference into namespace {ns:?}",
                        def.name
                    ))
                })?;
            }
            typed.push((def.name.clone(), v));
        }
    }
    Ok(PreparedCall {
        target,
        method,
        params: typed,
    })
}

/// A WHERE clause that names every key of a class without subclasses is a key lookup,
/// not a scan: the instance it names, or `None` when the caller must scan. A miss (the key
/// spelled in another case than stored, say) also answers `None`: the scan compares as
/// WQL does.
pub(crate) fn instance_by_key(
    provider: &dyn CimProvider,
    query: &wql::Query,
    class: &ClassDef,
) -> Option<Instance> {
    let path = query.key_path(class)?;
    let has_subclasses = provider.class_names().iter().any(|n| {
        provider
            .get_class(n)
            .ok()
            .and_then(|c| c.superclass)
            .is_some_and(|s| s.eq_ignore_ascii_case(&class.name))
    });
    if has_subclasses {
        return None;
    }
    let (path, _) = resolve_path(provider, path).ok()?;
    provider.get_instance(&path).ok()
}
