//! The classes cosnap serves, parsed once from `schema/cosnap.mof` with inherited members
//! flattened in, so GetClass serves exactly what the MOF says.
//!
//! Resolution rules (DSP0004, as pywbem's MOF compiler applies them):
//! * a subclass inherits every property and method; one it redeclares (same name, any
//!   case) replaces the inherited one in place but keeps the `class_origin` of the first
//!   declaration (what pywbem reports, so it is also `PROPAGATED` in GetClass);
//! * members keep every inherited qualifier (pywbem ignores the Restricted flavor for
//!   member qualifiers), a redeclared member's own qualifiers win;
//! * class qualifiers are not inherited: pywbem's MOF compiler (the oracle GetClass is
//!   checked against) keeps only the ones a class declares itself, so subclasses of
//!   associations repeat `Association`.
//!
//! [`Schema::is_propagated_qualifier`] tells the CIM-XML writer which qualifiers of a
//! flattened class came from a superclass (`PROPAGATED="true"`).

use std::collections::HashMap;
use std::sync::OnceLock;

pub use crate::class::QualifiedMember;
use crate::class::{ClassDef, MethodDef, ParameterDef, PropertyDef, Qualifier};
use crate::mof::{self, Flavor, MofError, MofQualifier, QualifierDecl};
use crate::value::{CimType, Value};

/// The MOF text compiled into the crate.
pub const COSNAP_MOF: &str = include_str!("../../../schema/cosnap.mof");

/// A resolved schema.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    classes: Vec<ClassDef>,
    local: Vec<ClassDef>,
    by_name: HashMap<String, usize>,
    qualifiers: HashMap<String, QualifierDecl>,
}

/// cosnap's schema (parsed on first use). The MOF is part of the build and tested, so a
/// failure here is a build defect: it panics with the MOF error.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::from_mof(COSNAP_MOF).unwrap_or_else(|e| panic!("schema/cosnap.mof: {e}"))
    })
}

impl Schema {
    /// Parses and resolves MOF text.
    pub fn from_mof(text: &str) -> Result<Schema, MofError> {
        let file = mof::parse(text)?;
        let mut s = Schema::default();
        for q in file.qualifiers {
            s.qualifiers.insert(q.name.to_ascii_lowercase(), q);
        }
        let err = |name: &str, message: String| MofError {
            line: 0,
            message: format!("class {name}: {message}"),
        };
        for mc in &file.classes {
            let key = mc.name.to_ascii_lowercase();
            if s.by_name.contains_key(&key) {
                return Err(err(&mc.name, "declared twice".into()));
            }
            let parent = match &mc.superclass {
                Some(sup) => Some(
                    s.by_name
                        .get(&sup.to_ascii_lowercase())
                        .map(|&i| s.classes[i].clone())
                        .ok_or_else(|| {
                            err(
                                &mc.name,
                                format!("superclass {sup} is not declared before it"),
                            )
                        })?,
                ),
                None => None,
            };
            let local = s.local_class_def(mc).map_err(|m| err(&mc.name, m))?;
            let flat = s.flatten(&local, parent.as_ref());
            s.by_name.insert(key, s.classes.len());
            s.classes.push(flat);
            s.local.push(local);
        }
        Ok(s)
    }

    fn qualifiers_of(&self, qs: &[MofQualifier]) -> Result<Vec<Qualifier>, String> {
        qs.iter()
            .map(|q| {
                let decl = self
                    .qualifiers
                    .get(&q.name.to_ascii_lowercase())
                    .ok_or_else(|| format!("qualifier {} is not declared", q.name))?;
                let value = match &q.value {
                    // A bare boolean qualifier means true.
                    None if decl.ty == CimType::Boolean => Some(Value::Boolean(true)),
                    None => decl
                        .default
                        .as_ref()
                        .map(|d| mof::to_value(d, decl.ty, decl.is_array))
                        .transpose()?
                        .flatten(),
                    Some(v) => mof::to_value(v, decl.ty, decl.is_array)
                        .map_err(|e| format!("qualifier {}: {e}", q.name))?,
                };
                Ok(Qualifier {
                    name: decl.name.clone(),
                    ty: decl.ty,
                    value,
                })
            })
            .collect()
    }

    fn local_class_def(&self, mc: &mof::MofClass) -> Result<ClassDef, String> {
        let mut class = ClassDef {
            name: mc.name.clone(),
            superclass: mc.superclass.clone(),
            qualifiers: self.qualifiers_of(&mc.qualifiers)?,
            properties: Vec::new(),
            methods: Vec::new(),
        };
        for p in &mc.properties {
            let default = match &p.default {
                Some(d) => mof::to_value(d, p.ty, p.is_array)
                    .map_err(|e| format!("property {}: {e}", p.name))?,
                None => None,
            };
            class.properties.push(PropertyDef {
                name: p.name.clone(),
                ty: p.ty,
                is_array: p.is_array,
                reference_class: p.reference_class.clone(),
                qualifiers: self
                    .qualifiers_of(&p.qualifiers)
                    .map_err(|e| format!("property {}: {e}", p.name))?,
                class_origin: mc.name.clone(),
                default,
            });
        }
        for m in &mc.methods {
            let mut parameters = Vec::new();
            for p in &m.parameters {
                parameters.push(ParameterDef {
                    name: p.name.clone(),
                    ty: p.ty,
                    is_array: p.is_array,
                    reference_class: p.reference_class.clone(),
                    qualifiers: self
                        .qualifiers_of(&p.qualifiers)
                        .map_err(|e| format!("method {}: {e}", m.name))?,
                });
            }
            class.methods.push(MethodDef {
                name: m.name.clone(),
                return_type: m.return_type,
                parameters,
                qualifiers: self
                    .qualifiers_of(&m.qualifiers)
                    .map_err(|e| format!("method {}: {e}", m.name))?,
                class_origin: mc.name.clone(),
            });
        }
        Ok(class)
    }

    /// The qualifiers a subclass's member inherits: all of them, flavor or not. pywbem's
    /// MOF compiler does so (even `Override`, which is Restricted), and GetClass is checked
    /// against it.
    fn inherited(&self, qs: &[Qualifier]) -> Vec<Qualifier> {
        qs.to_vec()
    }

    fn merge_qualifiers(&self, inherited: &[Qualifier], own: &[Qualifier]) -> Vec<Qualifier> {
        let mut out = self.inherited(inherited);
        for q in own {
            match out
                .iter_mut()
                .find(|o| o.name.eq_ignore_ascii_case(&q.name))
            {
                Some(o) => *o = q.clone(),
                None => out.push(q.clone()),
            }
        }
        out
    }

    fn flatten(&self, local: &ClassDef, parent: Option<&ClassDef>) -> ClassDef {
        let Some(parent) = parent else {
            return local.clone();
        };
        let mut flat = ClassDef {
            name: local.name.clone(),
            superclass: local.superclass.clone(),
            qualifiers: local.qualifiers.clone(),
            properties: parent
                .properties
                .iter()
                .map(|p| PropertyDef {
                    qualifiers: self.inherited(&p.qualifiers),
                    ..p.clone()
                })
                .collect(),
            methods: parent
                .methods
                .iter()
                .map(|m| MethodDef {
                    qualifiers: self.inherited(&m.qualifiers),
                    parameters: m
                        .parameters
                        .iter()
                        .map(|p| ParameterDef {
                            qualifiers: self.inherited(&p.qualifiers),
                            ..p.clone()
                        })
                        .collect(),
                    ..m.clone()
                })
                .collect(),
        };
        for p in &local.properties {
            match flat
                .properties
                .iter_mut()
                .find(|o| o.name.eq_ignore_ascii_case(&p.name))
            {
                Some(o) => {
                    let qualifiers = self.merge_qualifiers(&o.qualifiers, &p.qualifiers);
                    let class_origin = o.class_origin.clone();
                    *o = PropertyDef {
                        qualifiers,
                        class_origin,
                        ..p.clone()
                    };
                }
                None => flat.properties.push(p.clone()),
            }
        }
        for m in &local.methods {
            match flat
                .methods
                .iter_mut()
                .find(|o| o.name.eq_ignore_ascii_case(&m.name))
            {
                Some(o) => {
                    let qualifiers = self.merge_qualifiers(&o.qualifiers, &m.qualifiers);
                    let class_origin = o.class_origin.clone();
                    *o = MethodDef {
                        qualifiers,
                        class_origin,
                        ..m.clone()
                    };
                }
                None => flat.methods.push(m.clone()),
            }
        }
        flat
    }

    /// A class with inherited members flattened in (case-insensitive name).
    pub fn class(&self, name: &str) -> Option<&ClassDef> {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.classes[i])
    }

    /// A class as the MOF declares it (local members and qualifiers only).
    pub fn local_class(&self, name: &str) -> Option<&ClassDef> {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.local[i])
    }

    /// Every class name, in MOF order (superclasses before subclasses).
    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.clone()).collect()
    }

    /// Every class, flattened, in MOF order.
    pub fn classes(&self) -> &[ClassDef] {
        &self.classes
    }

    /// True when `sub` is `sup` or derives from it (case-insensitive).
    pub fn is_subclass(&self, sub: &str, sup: &str) -> bool {
        let mut cur = self.class(sub);
        let mut hops = 0;
        while let Some(c) = cur {
            if c.name.eq_ignore_ascii_case(sup) {
                return true;
            }
            hops += 1;
            if hops > 64 {
                return false;
            }
            cur = c.superclass.as_deref().and_then(|s| self.class(s));
        }
        false
    }

    /// Every class deriving (directly or not) from `name`, excluding `name` itself.
    pub fn subclasses(&self, name: &str) -> Vec<&ClassDef> {
        self.classes
            .iter()
            .filter(|c| !c.name.eq_ignore_ascii_case(name) && self.is_subclass(&c.name, name))
            .collect()
    }

    /// Direct subclasses of `name`, or the root classes when `name` is `None`
    /// (EnumerateClassNames with DeepInheritance=false).
    pub fn direct_subclasses(&self, name: Option<&str>) -> Vec<&ClassDef> {
        self.classes
            .iter()
            .filter(|c| match (name, &c.superclass) {
                (None, None) => true,
                (Some(n), Some(s)) => s.eq_ignore_ascii_case(n),
                _ => false,
            })
            .collect()
    }

    /// True when qualifier `qualifier` of member `member` (a property, or a method when
    /// `parameter` is `None` and `method` is true; a method parameter otherwise) of class
    /// `class` was inherited rather than written in the class's own declaration. Members
    /// the class does not declare itself have only inherited qualifiers. Unknown classes:
    /// false.
    pub fn is_propagated_qualifier(
        &self,
        class: &str,
        member: QualifiedMember<'_>,
        qualifier: &str,
    ) -> bool {
        let Some(local) = self.local_class(class) else {
            return false;
        };
        let declared = |qs: &[Qualifier]| qs.iter().any(|q| q.name.eq_ignore_ascii_case(qualifier));
        // A DisableOverride qualifier a subclass repeats is still the inherited one.
        let fixed = !self.qualifier_flavor(qualifier).overridable;
        let parent = local.superclass.as_deref().and_then(|s| self.class(s));
        match member {
            QualifiedMember::Class => false,
            QualifiedMember::Property(p) => match local.property(p) {
                None => true,
                Some(lp) => {
                    !declared(&lp.qualifiers)
                        || (fixed
                            && parent
                                .and_then(|c| c.property(p))
                                .is_some_and(|pp| declared(&pp.qualifiers)))
                }
            },
            QualifiedMember::Method(m) => match local.method(m) {
                None => true,
                Some(lm) => {
                    !declared(&lm.qualifiers)
                        || (fixed
                            && parent
                                .and_then(|c| c.method(m))
                                .is_some_and(|pm| declared(&pm.qualifiers)))
                }
            },
            // pywbem never marks parameter qualifiers as propagated.
            QualifiedMember::Parameter(..) => false,
        }
    }

    /// A qualifier's declaration.
    pub fn qualifier_decl(&self, name: &str) -> Option<&QualifierDecl> {
        self.qualifiers.get(&name.to_ascii_lowercase())
    }

    /// All qualifier declarations.
    pub fn qualifier_decls(&self) -> impl Iterator<Item = &QualifierDecl> {
        self.qualifiers.values()
    }

    /// A qualifier's flavor (defaults for undeclared names).
    pub fn qualifier_flavor(&self, name: &str) -> Flavor {
        self.qualifier_decl(name)
            .map(|d| d.flavor)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
