//! ExecQuery: a WQL query read through its class's cursor a batch at a time, each instance
//! filtered by the WHERE clause and projected to the SELECT list, and the matches sent
//! through the streamed-list path ([`super::stream`]); a clause that pins every key is a key
//! lookup instead. The server holds one batch of the class, never the whole answer.

use cosnap_cim::{BuiltCursor, CimError, CimProvider, CimStatus, Instance, InstanceCursor};

use super::stream::{self, Items, Rest};
use super::{Intrinsic, Result, class_for, instance_by_key};
use crate::wql;

/// Instances of the class read per step while looking for matches.
const SCAN_BATCH: usize = stream::BATCH;

/// The matches of a query among a cursor's instances, projected.
struct QueryCursor {
    inner: Box<dyn InstanceCursor>,
    query: wql::Query,
}

impl InstanceCursor for QueryCursor {
    /// Reads the class until `max` matches or its end: a query matching little costs a
    /// read of the class, but holds only one batch of it at a time.
    fn next_batch(&mut self, provider: &dyn CimProvider, max: usize) -> Result<Vec<Instance>> {
        let max = max.max(1);
        let mut out = Vec::new();
        while out.len() < max && !self.inner.is_exhausted() {
            let batch = self.inner.next_batch(provider, SCAN_BATCH)?;
            if batch.is_empty() {
                break;
            }
            for mut inst in batch {
                if self.query.matches(&inst).map_err(invalid)? {
                    self.query.project(&mut inst);
                    out.push(inst);
                }
            }
        }
        Ok(out)
    }

    fn is_exhausted(&self) -> bool {
        self.inner.is_exhausted()
    }
}

fn invalid(e: wql::QueryError) -> CimError {
    CimError::new(CimStatus::InvalidQuery, e.to_string())
}

impl Intrinsic<'_> {
    pub(super) fn exec_query(mut self, out: &mut String) -> Result<Option<Rest>> {
        let lang = self
            .string("QueryLanguage")?
            .ok_or_else(|| CimError::invalid_parameter("parameter QueryLanguage is required"))?;
        let text = self
            .string("Query")?
            .ok_or_else(|| CimError::invalid_parameter("parameter Query is required"))?;
        if !lang.trim().eq_ignore_ascii_case("WQL") {
            return Err(CimError::new(
                CimStatus::QueryLanguageNotSupported,
                format!("query language {lang:?} is not supported; use WQL"),
            ));
        }

        let query = wql::parse(&text).map_err(invalid)?;
        let class = class_for(self.provider, &query.class_name)?;
        query.check(&class).map_err(invalid)?;

        let inner: Box<dyn InstanceCursor> = match instance_by_key(self.provider, &query, &class) {
            Some(found) => Box::new(BuiltCursor::new(vec![found])),
            None => self.provider.enumerate_cursor(&class.name)?,
        };
        let cursor = Box::new(QueryCursor { inner, query });
        let items = Items::ObjectsWithPath {
            property_list: None,
        };
        stream::start(self.provider, self.host_name, out, cursor, items)
    }
}
