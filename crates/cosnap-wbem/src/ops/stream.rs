//! Result lists written a batch at a time: EnumerateInstances, EnumerateInstanceNames,
//! ExecQuery, Associators, AssociatorNames, References and ReferenceNames read the
//! provider's cursor in batches of [`BATCH`]. A list that ends within the first batch is answered whole (with
//! a `Content-Length`, as before); a longer one leaves an [`Unfinished`] response whose rest
//! the server streams as chunks (see [`crate::body`]), so the server never holds the whole
//! response, and, with a provider whose cursors hold paths, never the whole result.

use cosnap_cim::{CimError, CimProvider, ClassDef, Instance, InstanceCursor, ObjectPath, xml};

use super::{Result, filter_properties};

/// Instances per batch (one chunk of a streamed response).
pub const BATCH: usize = 100;

/// How each instance of the list is written.
pub enum Items {
    /// `VALUE.NAMEDINSTANCE` (EnumerateInstances).
    NamedInstances {
        /// `DeepInheritance=false`: only the properties this class declares.
        declared_only: Option<ClassDef>,
        property_list: Option<Vec<String>>,
    },
    /// `INSTANCENAME` (EnumerateInstanceNames).
    InstanceNames,
    /// `VALUE.OBJECTWITHPATH` (Associators, References).
    ObjectsWithPath { property_list: Option<Vec<String>> },
    /// `OBJECTPATH` (AssociatorNames, ReferenceNames).
    ObjectPaths,
}

/// The part of a result list not written yet.
pub struct Rest {
    cursor: Box<dyn InstanceCursor>,
    items: Items,
    host_name: String,
}

/// A response whose head (envelope and the first batch) is written and whose rest is not.
pub struct Unfinished {
    pub head: String,
    rest: Rest,
    /// The closing tags after the list.
    tail: String,
}

impl Unfinished {
    pub(crate) fn new(head: String, rest: Rest, tail: String) -> Self {
        Self { head, rest, tail }
    }

    /// Produces the rest, handing each chunk to `emit` (which returns `false` when the
    /// client is gone, ending the work early). The head is not emitted again.
    pub fn produce(
        self,
        provider: &dyn CimProvider,
        mut emit: impl FnMut(String) -> bool,
    ) -> std::result::Result<(), CimError> {
        let Unfinished { rest, tail, .. } = self;
        let Rest {
            mut cursor,
            items,
            host_name,
        } = rest;
        while !cursor.is_exhausted() {
            let batch = cursor.next_batch(provider, BATCH)?;
            if batch.is_empty() {
                break;
            }
            let mut chunk = String::with_capacity(batch.len() * 1024);
            write_items(&mut chunk, batch, &items, &host_name);
            if !emit(chunk) {
                return Ok(());
            }
        }
        emit(format!("</IRETURNVALUE>{tail}"));
        Ok(())
    }

    /// The whole response as one string (tests and the fuzz target). A failure part way
    /// leaves the text cut short, as a client of the streamed form would see it.
    pub fn collect(self, provider: &dyn CimProvider) -> String {
        let mut all = self.head.clone();
        let _ = self.produce(provider, |chunk| {
            all.push_str(&chunk);
            true
        });
        all
    }
}

/// Opens the list and writes the first batch; returns the rest when there is more.
pub(super) fn start(
    provider: &dyn CimProvider,
    host_name: &str,
    out: &mut String,
    mut cursor: Box<dyn InstanceCursor>,
    items: Items,
) -> Result<Option<Rest>> {
    out.push_str("<IRETURNVALUE>");
    if !cursor.is_exhausted() {
        let batch = cursor.next_batch(provider, BATCH)?;
        let ended = batch.is_empty();
        write_items(out, batch, &items, host_name);
        if !ended && !cursor.is_exhausted() {
            return Ok(Some(Rest {
                cursor,
                items,
                host_name: host_name.to_string(),
            }));
        }
    }
    out.push_str("</IRETURNVALUE>");
    Ok(None)
}

fn write_items(out: &mut String, batch: Vec<Instance>, items: &Items, host_name: &str) {
    for mut inst in batch {
        let fallback = ObjectPath::new(inst.class_name.clone());
        match items {
            Items::NamedInstances {
                declared_only,
                property_list,
            } => {
                if let Some(class) = declared_only {
                    inst.properties
                        .retain(|p| class.property(&p.name).is_some());
                }
                filter_properties(&mut inst, property_list.as_deref());
                xml::write_named_instance(out, &inst);
            }
            Items::InstanceNames => {
                let p = inst.path.as_ref().unwrap_or(&fallback);
                let local = ObjectPath {
                    host: None,
                    namespace: None,
                    ..p.clone()
                };
                xml::write_instance_name(out, &local);
            }
            Items::ObjectsWithPath { property_list } => {
                filter_properties(&mut inst, property_list.as_deref());
                xml::write_object_with_path(out, &inst, host_name, cosnap_cim::NAMESPACE);
            }
            Items::ObjectPaths => {
                let p = inst.path.as_ref().unwrap_or(&fallback);
                out.push_str("<OBJECTPATH>");
                xml::write_instance_path(
                    out,
                    p,
                    p.host.as_deref().unwrap_or(host_name),
                    p.namespace.as_deref().unwrap_or(cosnap_cim::NAMESPACE),
                );
                out.push_str("</OBJECTPATH>");
            }
        }
    }
}
