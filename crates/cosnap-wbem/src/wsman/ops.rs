//! The WS-Man operations over a [`CimProvider`]: Get, Enumerate (plain, optimized, three
//! modes, WQL, selector and association filters), Pull, Release and Invoke. Each returns
//! the response body's content; the caller wraps it in an envelope.

use std::time::Instant;

use cosnap_cim::xml::{ParamValue as CimParam, RawValue};
use cosnap_cim::{
    AssocFilter, BuiltCursor, CimError, CimProvider, ClassDef, Instance, InstanceCursor,
    ObjectPath, Value,
};

use super::cursor::{ItemSource, Keep};
use super::encode::{self, write_instance};
use super::enumeration::ContextStore;
use super::envelope::{
    AssociationFilter, EnumerateBody, Filter, Param, ParamValue, Selector, SelectorValue,
};
use super::fault::{self, Fault};
use super::resource::{self, Resource};
use crate::ops as cim_ops;
use crate::wql;

type Result<T> = std::result::Result<T, Fault>;

/// WinRM's MaxBatchItems: the most items one Enumerate or Pull returns.
pub const MAX_BATCH_ITEMS: u64 = 32_000;

/// Bytes of a response envelope outside its items (headers, wrappers), kept free when
/// filling a batch up to MaxEnvelopeSize.
pub const ENVELOPE_OVERHEAD: usize = 2048;

impl From<CimError> for Fault {
    fn from(e: CimError) -> Self {
        Fault::from_cim(&e)
    }
}

/// What an operation needs besides its body.
pub struct Context<'a> {
    pub provider: &'a dyn CimProvider,
    pub user: &'a str,
    pub contexts: &'a ContextStore,
    pub deadline: Instant,
    /// Bytes the items of one response may take.
    pub item_budget: usize,
}

impl Context<'_> {
    fn check_deadline(&self) -> Result<()> {
        if Instant::now() > self.deadline {
            Err(Fault::timed_out(
                "the operation did not complete within the OperationTimeout",
            ))
        } else {
            Ok(())
        }
    }
}

fn class_of(provider: &dyn CimProvider, resource: &Resource) -> Result<ClassDef> {
    match resource {
        Resource::Class(c) => Ok(cim_ops::class_for(provider, c)?),
        Resource::AllClasses => Err(Fault::destination_unreachable(
            "the * resource URI can only be enumerated with a WQL or association filter",
        )),
    }
}

/// A typed instance path from a class and its selectors.
fn instance_path(
    provider: &dyn CimProvider,
    class: &ClassDef,
    selectors: &[Selector],
) -> Result<ObjectPath> {
    let path = resource::path_from_selectors(&class.name, selectors)?;
    resource::check_keys(&path, class)?;
    typed_path(provider, path, class)
}

/// Types the keys against `class` (already fetched, so not cloned again: the class
/// lookup is the dearest step of a Get) and gives the path cosnap's namespace; key
/// values that are references are resolved against their own classes.
fn typed_path(
    provider: &dyn CimProvider,
    mut path: ObjectPath,
    class: &ClassDef,
) -> Result<ObjectPath> {
    let invalid = |e: String| Fault::invalid_selectors(fault::CODE_INVALID_SELECTOR_VALUE, e);
    for (_, value) in path.keys.iter_mut() {
        if let Value::Reference(inner) = value {
            let taken = std::mem::take(inner);
            *inner = cim_ops::resolve_path(provider, taken)
                .map(|(p, _)| p)
                .map_err(|e| invalid(e.description))?;
        }
    }
    cosnap_cim::xml::type_path_keys(&mut path, class)
        .map_err(|e| invalid(format!("{}: {e}", class.name)))?;
    path.class_name = class.name.clone();
    path.namespace = Some(cosnap_cim::NAMESPACE.to_string());
    path.host = None;
    Ok(path)
}

/// Get: the instance the selectors name.
pub fn get(cx: &Context, resource: &Resource, selectors: &[Selector]) -> Result<String> {
    let class = class_of(cx.provider, resource)?;
    let path = instance_path(cx.provider, &class, selectors)?;
    let inst = cx.provider.get_instance(&path)?;
    let mut out = String::with_capacity(2048);
    write_instance(&mut out, &inst);
    Ok(out)
}

/// Enumerate: opens a cursor over the instances the resource and filter name and keeps it
/// in a new context; optimized, the response also carries the first batch read from it
/// (and opens no context when that batch is everything).
pub fn enumerate(
    cx: &Context,
    resource: &Resource,
    body: &EnumerateBody,
    new_id: impl FnOnce() -> String,
) -> Result<String> {
    if !body.optimize {
        // Refused before any work; an optimized Enumerate may need no context at all.
        cx.contexts.admit(cx.user)?;
    }
    let mut source = open_source(cx, resource, body)?;
    cx.check_deadline()?;

    let id = new_id();
    let mut out = String::from("<wsen:EnumerateResponse>");
    if !body.optimize {
        push_context(&mut out, Some(&id));
        cx.contexts.open(id, cx.user, source)?;
        out.push_str("</wsen:EnumerateResponse>");
        return Ok(out);
    }

    let batch = source.next_batch(
        cx.provider,
        batch_size(body.max_elements),
        cx.item_budget,
        cx.deadline,
    )?;
    push_context(&mut out, batch.more.then_some(id.as_str()));
    if batch.more {
        cx.contexts.open(id, cx.user, source)?;
    }
    out.push_str("<wsman:Items>");
    batch.items.iter().for_each(|i| out.push_str(i));
    out.push_str("</wsman:Items>");
    if !batch.more {
        out.push_str("<wsman:EndOfSequence/>");
    }
    out.push_str("</wsen:EnumerateResponse>");
    Ok(out)
}

/// MaxElements as a batch size: 1 when absent (WS-Enumeration), at most MaxBatchItems.
fn batch_size(max_elements: Option<u64>) -> usize {
    max_elements.unwrap_or(1).min(MAX_BATCH_ITEMS) as usize
}

/// The EnumerationContext element: the open context's id, or empty when everything was
/// sent at once. Clients read the element unconditionally (so it is always there), and
/// python-dracclient Pulls whenever it has text, even after `wsman:EndOfSequence`.
fn push_context(out: &mut String, id: Option<&str>) {
    match id {
        Some(id) => {
            out.push_str("<wsen:EnumerationContext>");
            out.push_str(id);
            out.push_str("</wsen:EnumerationContext>");
        }
        None => out.push_str("<wsen:EnumerationContext/>"),
    }
}

/// Pull: the next batch of an open enumeration, read from its cursor now.
pub fn pull(cx: &Context, context: &str, max_elements: Option<u64>) -> Result<String> {
    let max = batch_size(max_elements);
    let batch = cx.contexts.pull(context, cx.user, |source| {
        source.next_batch(cx.provider, max, cx.item_budget, cx.deadline)
    })?;
    let mut out = String::from("<wsen:PullResponse>");
    if batch.more {
        out.push_str("<wsen:EnumerationContext>");
        out.push_str(&cosnap_cim::xml::escape_text(context));
        out.push_str("</wsen:EnumerationContext>");
    }
    out.push_str("<wsen:Items>");
    batch.items.iter().for_each(|i| out.push_str(i));
    out.push_str("</wsen:Items>");
    if !batch.more {
        out.push_str("<wsen:EndOfSequence/>");
    }
    out.push_str("</wsen:PullResponse>");
    Ok(out)
}

/// Release: closes an open enumeration (empty response body).
pub fn release(cx: &Context, context: &str) -> Result<String> {
    cx.contexts.release(context, cx.user)?;
    Ok(String::new())
}

/// The cursor and filter of an Enumerate (every check that can fault is made here, before
/// a context exists).
fn open_source(cx: &Context, resource: &Resource, body: &EnumerateBody) -> Result<ItemSource> {
    let (cursor, keep) = match (resource, body.filter.as_ref()) {
        (Resource::Class(_), None) => {
            let class = class_of(cx.provider, resource)?;
            (cx.provider.enumerate_cursor(&class.name)?, Keep::All)
        }
        (Resource::Class(_), Some(Filter::Selectors(selectors))) => {
            let class = class_of(cx.provider, resource)?;
            let keep = selector_filter(&class, selectors)?;
            (cx.provider.enumerate_cursor(&class.name)?, keep)
        }
        (Resource::AllClasses, Some(Filter::Wql(query))) => wql_query(cx.provider, query)?,
        (Resource::AllClasses, Some(Filter::Association(a))) => {
            (association(cx.provider, a)?, Keep::All)
        }
        (_, Some(Filter::Unsupported(dialect))) => {
            return Err(Fault::cannot_process_filter(
                fault::CODE_CANNOT_PROCESS_FILTER,
                format!(
                    "the filter dialect {dialect:?} is not supported; use WQL, SelectorFilter or associationFilter"
                ),
            ));
        }
        (Resource::Class(c), Some(Filter::Wql(_) | Filter::Association(_))) => {
            return Err(Fault::cannot_process_filter(
                fault::CODE_WQL_ON_CLASS_URI,
                format!(
                    "WQL and association filters are sent to the …/root/virtualization/v2/* resource URI, not to the class {c}"
                ),
            ));
        }
        (Resource::AllClasses, _) => {
            return Err(Fault::destination_unreachable(
                "the * resource URI can only be enumerated with a WQL or association filter",
            ));
        }
    };
    Ok(ItemSource::new(cursor, keep, body.mode))
}

fn filter_error(e: impl std::fmt::Display) -> Fault {
    Fault::cannot_process_filter(fault::CODE_CANNOT_PROCESS_FILTER, e.to_string())
}

/// A WQL filter: a key lookup when the WHERE clause pins every key (as ExecQuery does),
/// else a cursor over the class; either way the clause is applied to what it yields.
fn wql_query(provider: &dyn CimProvider, text: &str) -> Result<(Box<dyn InstanceCursor>, Keep)> {
    let query = wql::parse(text).map_err(filter_error)?;
    let class = cim_ops::class_for(provider, &query.class_name)?;
    query.check(&class).map_err(filter_error)?;
    let cursor: Box<dyn InstanceCursor> = match cim_ops::instance_by_key(provider, &query, &class) {
        Some(found) => Box::new(BuiltCursor::new(vec![found])),
        None => provider.enumerate_cursor(&class.name)?,
    };
    Ok((cursor, Keep::Wql(Box::new(query))))
}

/// SelectorFilter: checks the selectors against the class (known properties, text values,
/// each named once); instances are compared as they are read.
fn selector_filter(class: &ClassDef, selectors: &[Selector]) -> Result<Keep> {
    let mut wanted: Vec<(String, String)> = Vec::with_capacity(selectors.len());
    for s in selectors {
        let SelectorValue::Text(v) = &s.value else {
            return Err(filter_error("SelectorFilter values must be text"));
        };
        if class.property(&s.name).is_none() {
            return Err(filter_error(format!(
                "{} has no property {}",
                class.name, s.name
            )));
        }
        if wanted.iter().any(|(n, _)| n.eq_ignore_ascii_case(&s.name)) {
            return Err(filter_error(format!("{} is given twice", s.name)));
        }
        wanted.push((s.name.clone(), v.clone()));
    }
    Ok(Keep::Selectors(wanted))
}

fn association(
    provider: &dyn CimProvider,
    a: &AssociationFilter,
) -> Result<Box<dyn InstanceCursor>> {
    let object = resource::path_from_epr(&a.object)?;
    let class = cim_ops::class_for(provider, &object.class_name)?;
    resource::check_keys(&object, &class)?;
    let object = typed_path(provider, object, &class)?;
    let known = |c: &Option<String>| -> Result<Option<String>> {
        match c {
            Some(c) => Ok(Some(cim_ops::class_for(provider, c)?.name)),
            None => Ok(None),
        }
    };
    let filter = AssocFilter {
        assoc_class: if a.associators {
            known(&a.association_class)?
        } else {
            None
        },
        result_class: known(&a.result_class)?,
        role: a.role.clone(),
        result_role: if a.associators {
            a.result_role.clone()
        } else {
            None
        },
    };
    Ok(if a.associators {
        provider.associators_cursor(&object, &filter)?
    } else {
        provider.references_cursor(&object, &filter)?
    })
}

/// Invoke: runs `<class URI>/<Method>` with the `_INPUT` parameters.
pub fn invoke(
    cx: &Context,
    resource: &Resource,
    method: &str,
    selectors: &[Selector],
    params: &[Param],
) -> Result<String> {
    let class = class_of(cx.provider, resource)?;
    let target = if selectors
        .iter()
        .all(|s| s.name.eq_ignore_ascii_case("__cimnamespace"))
    {
        ObjectPath::new(class.name.clone()).with_namespace(cosnap_cim::NAMESPACE)
    } else {
        instance_path(cx.provider, &class, selectors)?
    };
    let cim_params = group_params(params)?;
    cx.check_deadline()?;
    let call = cim_ops::prepare_call(cx.provider, target, method, cim_params)?;
    let outcome = cx
        .provider
        .invoke_method(&call.target, &call.method.name, call.params)?;
    let named: Vec<(String, Value)> = outcome
        .out_params
        .into_iter()
        .map(|(n, v)| {
            let canonical = call.method.parameter(&n).map_or(n, |d| d.name.clone());
            (canonical, v)
        })
        .collect();
    let mut out = String::with_capacity(1024);
    encode::write_method_output(
        &mut out,
        &class.name,
        &call.method.name,
        outcome.return_value,
        &named,
    );
    Ok(out)
}

/// Parameters as CIM-XML front end's untyped values: repeated names become arrays.
pub(super) fn group_params(params: &[Param]) -> Result<Vec<CimParam>> {
    let mut names: Vec<&str> = Vec::new();
    for p in params {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&p.name)) {
            names.push(&p.name);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let values: Vec<&ParamValue> = params
                .iter()
                .filter(|p| p.name.eq_ignore_ascii_case(name))
                .map(|p| &p.value)
                .collect();
            Ok(CimParam {
                name: name.to_string(),
                param_type: None,
                embedded: false,
                value: raw_value(name, &values)?,
            })
        })
        .collect()
}

fn raw_value(name: &str, values: &[&ParamValue]) -> Result<RawValue> {
    let mixed =
        || Fault::schema_validation(format!("parameter {name} mixes values of different kinds"));
    if let [single] = values {
        return Ok(match single {
            ParamValue::Nil => RawValue::Null,
            ParamValue::Text(t) | ParamValue::Datetime(t) => RawValue::Scalar(t.clone()),
            ParamValue::Epr(e) => RawValue::Reference(resource::path_from_epr(e)?),
            ParamValue::Instance {
                class_name,
                properties,
            } => RawValue::Instance(element_instance(class_name.as_deref(), properties)?),
        });
    }
    if values
        .iter()
        .all(|v| matches!(v, ParamValue::Epr(_) | ParamValue::Nil))
    {
        let mut refs = Vec::with_capacity(values.len());
        for v in values {
            refs.push(match v {
                ParamValue::Epr(e) => Some(resource::path_from_epr(e)?),
                _ => None,
            });
        }
        return Ok(RawValue::RefArray(refs));
    }
    let mut items = Vec::with_capacity(values.len());
    for v in values {
        items.push(match v {
            ParamValue::Nil => None,
            ParamValue::Text(t) | ParamValue::Datetime(t) => Some(t.clone()),
            _ => return Err(mixed()),
        });
    }
    Ok(RawValue::Array(items))
}

/// The DSP0230 element form of an embedded instance, typed against cosnap's schema when
/// the class is one of its classes.
pub(super) fn element_instance(class_name: Option<&str>, properties: &[Param]) -> Result<Instance> {
    let class_name = class_name.ok_or_else(|| {
        Fault::schema_validation("an embedded instance element needs xsi:type=\"…:<Class>_Type\"")
    })?;
    let class = cosnap_cim::schema().class(class_name);
    let mut inst = Instance::new(class.map_or(class_name, |c| c.name.as_str()));
    for p in group_params(properties)? {
        let typed = match class.and_then(|c| c.property(&p.name)) {
            Some(def) => cosnap_cim::xml::type_for_property(p.value, def, false)
                .map(|v| (def.name.clone(), def.ty, v)),
            None if class.is_some() => {
                return Err(Fault::from_cim(&CimError::invalid_parameter(format!(
                    "{class_name} has no property {}",
                    p.name
                ))));
            }
            None => cosnap_cim::xml::type_value(p.value, cosnap_cim::CimType::String, false, false)
                .map(|v| (p.name.clone(), cosnap_cim::CimType::String, v)),
        };
        let (name, ty, value) = typed.map_err(|e| Fault::from_cim(&e.into()))?;
        inst.set(&name, ty, value);
    }
    Ok(inst)
}
