//! The interface between protocol front ends (CIM-XML, WS-Man, the CLI) and the model.

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
    /// Runs an extrinsic method. Parameters have been typed against the class's method
    /// definition; embedded instances arrive as [`Value::Instance`].
    fn invoke_method(
        &self,
        target: &ObjectPath,
        method: &str,
        params: Vec<(String, Value)>,
    ) -> Result<MethodOutcome, CimError>;
}
