//! The DMTF pull operations (DSP0200 1.4 §5.3.2.1): OpenEnumerateInstances(Paths),
//! OpenAssociatorInstances(Paths), OpenReferenceInstances(Paths), PullInstancesWithPath,
//! PullInstancePaths and CloseEnumeration, over the provider's cursors kept in
//! [`crate::enumerations`].
//!
//! Decisions on vague points:
//! * `MaxObjectCount` is honoured up to [`crate::enumerations::PullLimits::max_batch`]
//!   objects per response (DSP0200 lets a server return fewer); absent on an Open means 0.
//! * `OperationTimeout` absent means 60 s; 0 (never) or more than 600 s is refused with
//!   `CIM_ERR_INVALID_OPERATION_TIMEOUT`, because an enumeration that never expires holds
//!   server memory for a client that may be gone.
//! * A `FilterQuery` is refused with `CIM_ERR_FILTERED_ENUMERATION_NOT_SUPPORTED`,
//!   `ContinueOnError=true` with `CIM_ERR_CONTINUATION_ON_ERROR_NOT_SUPPORTED`;
//!   OpenQueryInstances, PullInstances and EnumerationCount answer `CIM_ERR_NOT_SUPPORTED`
//!   (pywbem then falls back to ExecQuery).
//! * When the end is delivered the response's `EnumerationContext` is NULL and the context
//!   is gone; a provider error during a Pull closes the enumeration.

use cosnap_cim::xml::{self, RawValue};
use cosnap_cim::{CimError, CimType, Instance, InstanceCursor, ObjectPath, Value};

use super::{Intrinsic, Result, class_for, filter_properties};
use crate::enumerations::{Enumeration, Shape, Yield};
use crate::response::write_out_param;

/// Whether `op` is one of the pull operations served here.
pub(super) fn is_pull_operation(op: &str) -> bool {
    !parameters(op).is_empty() || op == "CloseEnumeration"
}

/// The parameters each pull operation accepts.
pub(super) fn parameters(op: &str) -> &'static [&'static str] {
    match op {
        "OpenEnumerateInstances" => &[
            "ClassName",
            "DeepInheritance",
            "IncludeClassOrigin",
            "PropertyList",
            "FilterQueryLanguage",
            "FilterQuery",
            "OperationTimeout",
            "ContinueOnError",
            "MaxObjectCount",
        ],
        "OpenEnumerateInstancePaths" => &[
            "ClassName",
            "FilterQueryLanguage",
            "FilterQuery",
            "OperationTimeout",
            "ContinueOnError",
            "MaxObjectCount",
        ],
        "OpenAssociatorInstances" => &[
            "InstanceName",
            "AssocClass",
            "ResultClass",
            "Role",
            "ResultRole",
            "IncludeClassOrigin",
            "PropertyList",
            "FilterQueryLanguage",
            "FilterQuery",
            "OperationTimeout",
            "ContinueOnError",
            "MaxObjectCount",
        ],
        "OpenAssociatorInstancePaths" => &[
            "InstanceName",
            "AssocClass",
            "ResultClass",
            "Role",
            "ResultRole",
            "FilterQueryLanguage",
            "FilterQuery",
            "OperationTimeout",
            "ContinueOnError",
            "MaxObjectCount",
        ],
        "OpenReferenceInstances" => &[
            "InstanceName",
            "ResultClass",
            "Role",
            "IncludeClassOrigin",
            "PropertyList",
            "FilterQueryLanguage",
            "FilterQuery",
            "OperationTimeout",
            "ContinueOnError",
            "MaxObjectCount",
        ],
        "OpenReferenceInstancePaths" => &[
            "InstanceName",
            "ResultClass",
            "Role",
            "FilterQueryLanguage",
            "FilterQuery",
            "OperationTimeout",
            "ContinueOnError",
            "MaxObjectCount",
        ],
        "PullInstancesWithPath" | "PullInstancePaths" => &["EnumerationContext", "MaxObjectCount"],
        "CloseEnumeration" => &["EnumerationContext"],
        _ => &[],
    }
}

/// What every Open asks besides its target.
struct OpenOptions {
    timeout: std::time::Duration,
    max_objects: usize,
}

impl Intrinsic<'_> {
    /// Runs one pull operation (`op` is one [`is_pull_operation`] accepts).
    pub(super) fn run_pull(mut self, op: &str, out: &mut String) -> Result<()> {
        match op {
            "OpenEnumerateInstances" => self.open_enumerate(out, Yield::InstancesWithPath),
            "OpenEnumerateInstancePaths" => self.open_enumerate(out, Yield::Paths),
            "OpenAssociatorInstances" => self.open_association(out, true, Yield::InstancesWithPath),
            "OpenAssociatorInstancePaths" => self.open_association(out, true, Yield::Paths),
            "OpenReferenceInstances" => self.open_association(out, false, Yield::InstancesWithPath),
            "OpenReferenceInstancePaths" => self.open_association(out, false, Yield::Paths),
            "PullInstancesWithPath" => self.pull(out, Yield::InstancesWithPath),
            "PullInstancePaths" => self.pull(out, Yield::Paths),
            _ => {
                let id = self.context_name()?;
                self.enumerations.close(&id, self.user)
            }
        }
    }

    fn open_enumerate(mut self, out: &mut String, yields: Yield) -> Result<()> {
        let name = self
            .class_name("ClassName")?
            .ok_or_else(|| CimError::invalid_parameter("parameter ClassName is required"))?;
        let deep = self.boolean("DeepInheritance", true)?;
        self.boolean("IncludeClassOrigin", false)?;
        let property_list = self.property_list()?;
        let options = self.open_options()?;
        let class = class_for(self.provider, &name)?;
        self.enumerations.admit(self.user)?;
        let cursor = self.provider.enumerate_cursor(&class.name)?;
        let shape = Shape {
            property_list,
            declared_only: (!deep).then_some(class),
        };
        self.open_with(out, cursor, yields, shape, options)
    }

    fn open_association(
        mut self,
        out: &mut String,
        associators: bool,
        yields: Yield,
    ) -> Result<()> {
        let (path, filter) = self.association_target("InstanceName", associators)?;
        let property_list = self.property_list()?;
        let options = self.open_options()?;
        self.enumerations.admit(self.user)?;
        let cursor = if associators {
            self.provider.associators_cursor(&path, &filter)?
        } else {
            self.provider.references_cursor(&path, &filter)?
        };
        let shape = Shape {
            property_list,
            declared_only: None,
        };
        self.open_with(out, cursor, yields, shape, options)
    }

    /// Delivers the Open's first batch and keeps the rest as an enumeration.
    fn open_with(
        self,
        out: &mut String,
        mut cursor: Box<dyn InstanceCursor>,
        yields: Yield,
        shape: Shape,
        options: OpenOptions,
    ) -> Result<()> {
        let batch = self.next_batch(&mut *cursor, options.max_objects)?;
        self.write_batch(out, batch, yields, &shape);
        let context = if cursor.is_exhausted() {
            None
        } else {
            let enumeration = Enumeration {
                cursor,
                yields,
                shape,
                timeout: options.timeout,
            };
            Some(self.enumerations.open(self.user, enumeration)?)
        };
        write_sequence_state(out, context.as_deref());
        Ok(())
    }

    fn pull(mut self, out: &mut String, yields: Yield) -> Result<()> {
        let id = self.context_name()?;
        let max_objects = self
            .count("MaxObjectCount")?
            .ok_or_else(|| CimError::invalid_parameter("parameter MaxObjectCount is required"))?;
        let mut enumeration = self.enumerations.take(&id, self.user)?;
        if enumeration.yields != yields {
            self.enumerations.put_back(&id, enumeration);
            return Err(CimError::new(
                cosnap_cim::CimStatus::InvalidEnumerationContext,
                "this enumeration context was opened for the other kind of Pull (instances with paths, or paths)",
            ));
        }
        let batch = match self.next_batch(&mut *enumeration.cursor, max_objects) {
            Ok(batch) => batch,
            Err(e) => {
                let _ = self.enumerations.close(&id, self.user);
                return Err(e);
            }
        };
        self.write_batch(out, batch, yields, &enumeration.shape);
        if enumeration.cursor.is_exhausted() {
            let _ = self.enumerations.close(&id, self.user);
            write_sequence_state(out, None);
        } else {
            self.enumerations.put_back(&id, enumeration);
            write_sequence_state(out, Some(&id));
        }
        Ok(())
    }

    /// Up to `max` objects (capped by the server's batch limit); none when `max` is 0.
    fn next_batch(&self, cursor: &mut dyn InstanceCursor, max: usize) -> Result<Vec<Instance>> {
        let max = max.min(self.enumerations.limits().max_batch);
        if max == 0 || cursor.is_exhausted() {
            return Ok(Vec::new());
        }
        cursor.next_batch(self.provider, max)
    }

    fn write_batch(&self, out: &mut String, batch: Vec<Instance>, yields: Yield, shape: &Shape) {
        out.push_str("<IRETURNVALUE>");
        for mut inst in batch {
            let fallback = ObjectPath::new(inst.class_name.clone());
            let path = inst.path.clone().unwrap_or(fallback);
            let host = path.host.as_deref().unwrap_or(self.host_name);
            let ns = path.namespace.as_deref().unwrap_or(cosnap_cim::NAMESPACE);
            if yields == Yield::Paths {
                xml::write_instance_path(out, &path, host, ns);
                continue;
            }
            if let Some(class) = &shape.declared_only {
                inst.properties
                    .retain(|p| class.property(&p.name).is_some());
            }
            filter_properties(&mut inst, shape.property_list.as_deref());
            out.push_str("<VALUE.INSTANCEWITHPATH>");
            xml::write_instance_path(out, &path, host, ns);
            xml::write_instance(out, &inst);
            out.push_str("</VALUE.INSTANCEWITHPATH>");
        }
        out.push_str("</IRETURNVALUE>");
    }

    /// The options every Open shares; refuses what cosnap does not do.
    fn open_options(&mut self) -> Result<OpenOptions> {
        let language = self.string("FilterQueryLanguage")?;
        let query = self.string("FilterQuery")?;
        if language.is_some() || query.is_some() {
            return Err(CimError::new(
                cosnap_cim::CimStatus::FilteredEnumerationNotSupported,
                "filtered pull enumerations are not supported; use ExecQuery with WQL",
            ));
        }
        if self.boolean("ContinueOnError", false)? {
            return Err(CimError::new(
                cosnap_cim::CimStatus::ContinuationOnErrorNotSupported,
                "ContinueOnError is not supported: an enumeration ends at its first error",
            ));
        }
        let timeout = self.count("OperationTimeout")?.map(|s| s as u64);
        let timeout = self.enumerations.timeout_for(timeout)?;
        let max_objects = self.count("MaxObjectCount")?.unwrap_or(0);
        Ok(OpenOptions {
            timeout,
            max_objects,
        })
    }

    fn context_name(&mut self) -> Result<String> {
        self.string("EnumerationContext")?
            .ok_or_else(|| CimError::invalid_parameter("parameter EnumerationContext is required"))
    }

    /// A `uint32` parameter.
    fn count(&mut self, name: &str) -> Result<Option<usize>> {
        match self.take(name).map(|p| p.value) {
            None | Some(RawValue::Null) => Ok(None),
            Some(RawValue::Scalar(s)) => match xml::parse_scalar(&s, CimType::Uint32) {
                Ok(Value::Uint32(n)) => Ok(Some(n as usize)),
                _ => Err(CimError::invalid_parameter(format!(
                    "{name}: expected a uint32, got {s:?}"
                ))),
            },
            Some(_) => Err(CimError::invalid_parameter(format!(
                "{name}: expected a uint32 VALUE"
            ))),
        }
    }
}

/// The `EnumerationContext` (NULL once the end is delivered) and `EndOfSequence` out
/// parameters every Open and Pull response carries.
fn write_sequence_state(out: &mut String, context: Option<&str>) {
    let context = context.map(|c| Value::String(c.to_string()));
    write_out_param(
        out,
        "EnumerationContext",
        Some((CimType::String, false)),
        context.as_ref(),
    );
    write_out_param(
        out,
        "EndOfSequence",
        Some((CimType::Boolean, false)),
        Some(&Value::Boolean(context.is_none())),
    );
}
