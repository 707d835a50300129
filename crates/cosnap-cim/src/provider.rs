//! The interface between protocol front ends (CIM-XML, WS-Man, the CLI) and the model.

use std::collections::VecDeque;

use crate::class::ClassDef;
use crate::error::CimError;
use crate::path::ObjectPath;
use crate::value::{Instance, Value};

/// Filters of the association operations (Associators, References and their Names forms).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssocFilter {
    /// AssocClass: only associations of this class (or its subclasses).
    pub assoc_class: Option<String>,
    /// ResultClass: only associated objects of this class (or its subclasses).
    pub result_class: Option<String>,
    /// Role: the role the source object plays in the association.
    pub role: Option<String>,
    /// ResultRole: the role the associated object plays in the association.
    pub result_role: Option<String>,
}

/// The result of an extrinsic method that ran: its return code (0 done, 4096 job started,
/// or a documented error code) and its out parameters (e.g. `Job`, a reference).
#[derive(Debug, Clone, PartialEq)]
pub struct MethodOutcome {
    /// The method's return code (`ReturnValue`).
    pub return_value: u32,
    /// The out parameters by name, in the order the method declares them.
    pub out_params: Vec<(String, Value)>,
}

/// What a CIM server serves. Paths passed in carry the keys clients sent; instances
/// returned carry their own path in [`Instance::path`]. Namespaces have already been
/// checked by the caller.
pub trait CimProvider: Send + Sync {
    /// A class with inherited members flattened in, or `CIM_ERR_NOT_FOUND`.
    fn get_class(&self, class_name: &str) -> Result<ClassDef, CimError>;
    /// The names of every class served.
    fn class_names(&self) -> Vec<String>;
    /// Instances of a class and (deep) of its subclasses.
    fn enumerate_instances(&self, class_name: &str) -> Result<Vec<Instance>, CimError>;
    /// The instance `path` names, or `CIM_ERR_NOT_FOUND`.
    fn get_instance(&self, path: &ObjectPath) -> Result<Instance, CimError>;
    /// Objects associated with `path` through association instances matching `filter`.
    fn associators(
        &self,
        path: &ObjectPath,
        filter: &AssocFilter,
    ) -> Result<Vec<Instance>, CimError>;
    /// Association instances that refer to `path`.
    fn references(
        &self,
        path: &ObjectPath,
        filter: &AssocFilter,
    ) -> Result<Vec<Instance>, CimError>;
    /// [`CimProvider::enumerate_instances`] as a cursor, for results handed out a batch at
    /// a time (pull operations, streamed responses). The default wraps the built list; a
    /// provider with cheap key lookups returns a [`PathCursor`] so that an open
    /// enumeration holds paths, not instances.
    fn enumerate_cursor(&self, class_name: &str) -> Result<Box<dyn InstanceCursor>, CimError> {
        let found = self.enumerate_instances(class_name)?;
        Ok(Box::new(BuiltCursor::new(found)))
    }
    /// [`CimProvider::associators`] as a cursor (see [`CimProvider::enumerate_cursor`]).
    fn associators_cursor(
        &self,
        path: &ObjectPath,
        filter: &AssocFilter,
    ) -> Result<Box<dyn InstanceCursor>, CimError> {
        let found = self.associators(path, filter)?;
        Ok(Box::new(BuiltCursor::new(found)))
    }
    /// [`CimProvider::references`] as a cursor (see [`CimProvider::enumerate_cursor`]).
    fn references_cursor(
        &self,
        path: &ObjectPath,
        filter: &AssocFilter,
    ) -> Result<Box<dyn InstanceCursor>, CimError> {
        let found = self.references(path, filter)?;
        Ok(Box::new(BuiltCursor::new(found)))
    }
    /// Runs an extrinsic method. Parameters have been typed against the class's method
    /// definition; embedded instances arrive as [`Value::Instance`].
    fn invoke_method(
        &self,
        target: &ObjectPath,
        method: &str,
        params: Vec<(String, Value)>,
    ) -> Result<MethodOutcome, CimError>;
}

/// The rest of an enumeration, handed out a batch at a time. A cursor outlives the request
/// that opened it (a pull enumeration waits for the client's next Pull), so it owns what
/// it needs and is given the provider again for each batch.
pub trait InstanceCursor: Send {
    /// Up to `max` (at least one) more instances; an empty batch means the end.
    fn next_batch(
        &mut self,
        provider: &dyn CimProvider,
        max: usize,
    ) -> Result<Vec<Instance>, CimError>;

    /// Whether nothing is left to deliver (a cursor that cannot tell cheaply says `false`
    /// and ends with an empty batch later).
    fn is_exhausted(&self) -> bool;
}

/// A cursor over instances already built: the default, wrapping the list forms.
pub struct BuiltCursor(VecDeque<Instance>);

impl BuiltCursor {
    /// A cursor handing out `instances` in order.
    pub fn new(instances: Vec<Instance>) -> Self {
        Self(instances.into())
    }
}

impl InstanceCursor for BuiltCursor {
    fn next_batch(&mut self, _: &dyn CimProvider, max: usize) -> Result<Vec<Instance>, CimError> {
        let n = max.max(1).min(self.0.len());
        Ok(self.0.drain(..n).collect())
    }

    fn is_exhausted(&self) -> bool {
        self.0.is_empty()
    }
}

/// A cursor holding only the paths still to deliver; each batch reads its instances with
/// [`CimProvider::get_instance`]. Instances removed since the enumeration opened are
/// skipped, as a client walking the paths one by one would find them gone.
pub struct PathCursor(VecDeque<ObjectPath>);

impl PathCursor {
    /// A cursor reading the instances at `paths`, in order.
    pub fn new(paths: Vec<ObjectPath>) -> Self {
        Self(paths.into())
    }
}

impl InstanceCursor for PathCursor {
    fn next_batch(
        &mut self,
        provider: &dyn CimProvider,
        max: usize,
    ) -> Result<Vec<Instance>, CimError> {
        let mut out = Vec::with_capacity(max.max(1).min(self.0.len()));
        while out.len() < max.max(1) {
            let Some(path) = self.0.pop_front() else {
                break;
            };
            match provider.get_instance(&path) {
                Ok(inst) => out.push(inst),
                Err(e) if e.status == crate::CimStatus::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn is_exhausted(&self) -> bool {
        self.0.is_empty()
    }
}
