//! What an open WS-Man enumeration reads from: the provider's cursor, the filter each
//! instance must pass (SelectorFilter, WQL), and the few instances read ahead but not yet
//! sent. Items are encoded when a Pull (or an optimized Enumerate) sends them, never
//! before, so an open enumeration holds what the provider's cursor holds (for the host's
//! big classes: paths) plus at most one read-ahead chunk.

use std::collections::VecDeque;
use std::time::Instant;

use cosnap_cim::{CimProvider, Instance, InstanceCursor, ObjectPath, Value};

use super::encode::{write_epr, write_instance};
use super::envelope::EnumerationMode;
use super::fault::{self, Fault};
use crate::wql;

/// Most instances read from the provider's cursor at once.
const READ_AHEAD: usize = 64;

/// Which instances of the cursor are sent, shaped how.
pub enum Keep {
    /// Every instance, whole.
    All,
    /// SelectorFilter: instances whose named properties equal these texts (compared
    /// case-insensitively, as Windows compares selectors; arrays and references never match).
    Selectors(Vec<(String, String)>),
    /// WQL: instances the WHERE clause accepts, projected to the SELECT list.
    Wql(Box<wql::Query>),
}

impl Keep {
    /// The instance as sent, or `None` when the filter drops it.
    fn apply(&self, mut inst: Instance) -> Result<Option<Instance>, Fault> {
        match self {
            Keep::All => Ok(Some(inst)),
            Keep::Selectors(wanted) => {
                let equal = |(name, value): &(String, String)| {
                    inst.get(name).is_some_and(|v| {
                        !matches!(v, Value::Array(_) | Value::Reference(_))
                            && cosnap_cim::xml::scalar_text(v).eq_ignore_ascii_case(value)
                    })
                };
                Ok(wanted.iter().all(equal).then_some(inst))
            }
            Keep::Wql(query) => {
                let keep = query.matches(&inst).map_err(|e| {
                    Fault::cannot_process_filter(fault::CODE_CANNOT_PROCESS_FILTER, e.to_string())
                })?;
                if keep {
                    query.project(&mut inst);
                }
                Ok(keep.then_some(inst))
            }
        }
    }
}

/// Items of one response.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    pub items: Vec<String>,
    /// Whether items remain (the context stays open).
    pub more: bool,
}

/// The rest of one enumeration.
pub struct ItemSource {
    cursor: Box<dyn InstanceCursor>,
    keep: Keep,
    mode: EnumerationMode,
    /// Instances that passed the filter, read but not yet sent.
    ahead: VecDeque<Instance>,
    /// The cursor answered an empty batch (the end, for cursors that cannot tell before).
    ended: bool,
    /// The provider or the filter failed: the enumeration cannot go on.
    failed: bool,
}

impl ItemSource {
    pub fn new(cursor: Box<dyn InstanceCursor>, keep: Keep, mode: EnumerationMode) -> Self {
        Self {
            cursor,
            keep,
            mode,
            ahead: VecDeque::new(),
            ended: false,
            failed: false,
        }
    }

    /// Whether nothing more can come: delivered to the end, or failed.
    pub fn is_spent(&self) -> bool {
        self.failed || (self.ahead.is_empty() && (self.ended || self.cursor.is_exhausted()))
    }

    /// Encodes up to `max` items (at least one) whose sizes add up to at most `budget`.
    /// An item that does not fit stays for the next Pull; one that alone exceeds `budget`
    /// faults (`w:EncodingLimit`) and stays too, so a Pull with a larger envelope can take
    /// it. Past `deadline` the items so far are sent, or `w:TimedOut` when there are none.
    pub fn next_batch(
        &mut self,
        provider: &dyn CimProvider,
        max: usize,
        budget: usize,
        deadline: Instant,
    ) -> Result<Batch, Fault> {
        let max = max.max(1);
        let mut items: Vec<String> = Vec::new();
        let mut used = 0usize;
        while items.len() < max {
            if Instant::now() > deadline {
                if items.is_empty() {
                    return Err(Fault::timed_out(
                        "the operation did not complete within the OperationTimeout",
                    ));
                }
                break;
            }

            self.read_ahead(provider, (max - items.len()).min(READ_AHEAD), deadline)?;
            let Some(inst) = self.ahead.pop_front() else {
                break;
            };

            let item = encode_item(&inst, self.mode);
            if used + item.len() > budget {
                self.ahead.push_front(inst);
                if items.is_empty() {
                    return Err(too_big(item.len()));
                }
                break;
            }
            used += item.len();
            items.push(item);
        }

        // One more read tells whether the next Pull has anything (a filter may drop the rest).
        self.read_ahead(provider, 1, deadline)?;
        Ok(Batch {
            items,
            more: !self.is_spent(),
        })
    }

    /// Reads from the cursor until an instance passes the filter, the cursor ends or the
    /// deadline passes; does nothing while instances are already waiting.
    fn read_ahead(
        &mut self,
        provider: &dyn CimProvider,
        want: usize,
        deadline: Instant,
    ) -> Result<(), Fault> {
        while self.ahead.is_empty() && !self.ended && !self.cursor.is_exhausted() {
            if Instant::now() > deadline {
                return Ok(());
            }
            let read = self
                .cursor
                .next_batch(provider, want.max(1))
                .map_err(|e| self.fail(Fault::from_cim(&e)))?;
            self.ended = read.is_empty();
            for inst in read {
                match self.keep.apply(inst) {
                    Ok(Some(kept)) => self.ahead.push_back(kept),
                    Ok(None) => {}
                    Err(f) => return Err(self.fail(f)),
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, f: Fault) -> Fault {
        self.failed = true;
        f
    }
}

/// One item as the response carries it, in the enumeration's mode.
fn encode_item(inst: &Instance, mode: EnumerationMode) -> String {
    let mut out = String::with_capacity(2048);
    let fallback = ObjectPath::new(inst.class_name.clone());
    let path = inst.path.as_ref().unwrap_or(&fallback);
    match mode {
        EnumerationMode::Objects => write_instance(&mut out, inst),
        EnumerationMode::Epr => write_epr(&mut out, path),
        EnumerationMode::ObjectAndEpr => {
            out.push_str("<wsman:Item>");
            write_instance(&mut out, inst);
            write_epr(&mut out, path);
            out.push_str("</wsman:Item>");
        }
    }
    out
}

/// A single item larger than a whole envelope may be cannot be sent at all.
fn too_big(len: usize) -> Fault {
    Fault::encoding_limit(
        fault::CODE_MAX_ENVELOPE_SIZE_EXCEEDED,
        format!("one item takes {len} bytes, more than the MaxEnvelopeSize allows"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cosnap_cim::{BuiltCursor, CimType};

    fn instances(n: usize) -> Vec<Instance> {
        (0..n)
            .map(|i| {
                let mut inst = Instance::new("C");
                inst.set("N", CimType::String, Some(Value::String(format!("n{i}"))));
                inst
            })
            .collect()
    }

    fn source(n: usize, keep: Keep) -> ItemSource {
        let cursor = Box::new(BuiltCursor::new(instances(n)));
        ItemSource::new(cursor, keep, EnumerationMode::Epr)
    }

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(30)
    }

    fn provider() -> impl CimProvider {
        crate::wsman::tests::Fake::default()
    }

    #[test]
    fn batches_until_the_end() {
        let p = provider();
        let mut s = source(5, Keep::All);
        let b = s.next_batch(&p, 2, usize::MAX, later()).unwrap();
        assert_eq!((b.items.len(), b.more), (2, true));
        let b = s.next_batch(&p, 10, usize::MAX, later()).unwrap();
        assert_eq!((b.items.len(), b.more), (3, false));
        assert!(s.is_spent());
    }

    #[test]
    fn budget_cuts_batches_and_an_item_too_big_stays() {
        let p = provider();
        let mut s = source(3, Keep::All);
        let one = s.next_batch(&p, 1, usize::MAX, later()).unwrap().items[0].len();
        let b = s.next_batch(&p, 10, one + one / 2, later()).unwrap();
        assert_eq!((b.items.len(), b.more), (1, true));
        let f = s.next_batch(&p, 10, one - 1, later()).unwrap_err();
        assert_eq!(f.subcode, "w:EncodingLimit");
        let b = s.next_batch(&p, 10, usize::MAX, later()).unwrap();
        assert_eq!(
            (b.items.len(), b.more),
            (1, false),
            "the item that did not fit stayed"
        );
    }

    #[test]
    fn a_filter_that_drops_the_rest_ends_the_sequence_now() {
        let p = provider();
        let keep = Keep::Selectors(vec![("N".into(), "N1".into())]);
        let mut s = source(50, keep);
        let b = s.next_batch(&p, 10, usize::MAX, later()).unwrap();
        assert_eq!((b.items.len(), b.more), (1, false));
    }

    #[test]
    fn past_the_deadline_nothing_is_lost() {
        let p = provider();
        let mut s = source(2, Keep::All);
        let past = Instant::now() - std::time::Duration::from_millis(1);
        assert_eq!(
            s.next_batch(&p, 1, usize::MAX, past).unwrap_err().subcode,
            "w:TimedOut"
        );
        let b = s.next_batch(&p, 10, usize::MAX, later()).unwrap();
        assert_eq!(b.items.len(), 2);
    }
}
