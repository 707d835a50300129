//! Enumerations a page at a time: the repository's rows that own a class's instances (VMs,
//! snapshots, reference points, collections, jobs) read in pages by an indexed keyset
//! query, and the cursor that turns each page into instances. An open enumeration holds one
//! page, never the class's whole list, whatever the host's size.

use std::collections::VecDeque;

use cosnap_cim::{CimError, CimProvider, Instance, InstanceCursor};

use super::classes::{CONCRETE, Owners, is_a, owners_of};
use crate::error::HostError;
use crate::host::Host;

/// Rows read per page (a page's instances are built together); tiny under test so that
/// the tests cross page boundaries.
const PAGE_ROWS: usize = if cfg!(test) { 2 } else { 64 };

/// Where an enumeration of one concrete class stands: the owner tables left and the last
/// row read of the first.
struct Position {
    class: &'static str,
    tables: VecDeque<Owners>,
    after: i64,
}

impl Host {
    /// Up to `limit` owner rows of `table` after `after`, as (seq, id).
    fn owner_page(
        &self,
        table: Owners,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, HostError> {
        let Some(sql) = table.page_sql() else {
            return Ok(if after < 1 {
                vec![(1, String::new())]
            } else {
                Vec::new()
            });
        };

        let conn = self.db();
        let mut stmt = conn.prepare_cached(sql)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(rusqlite::params![after, limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Every owner id of `table`, page by page (for the list forms).
    pub(super) fn all_owners(&self, table: Owners) -> Result<Vec<String>, HostError> {
        let mut out = Vec::new();
        let mut after = i64::MIN;
        loop {
            let page = self.owner_page(table, after, PAGE_ROWS)?;
            let Some((last, _)) = page.last() else {
                return Ok(out);
            };
            after = *last;
            out.extend(page.into_iter().map(|(_, id)| id));
        }
    }
}

/// The instances of a class (and its subclasses) read a page of owner rows at a time.
pub(super) struct PagedCursor {
    host: Host,
    classes: VecDeque<Position>,
    ready: VecDeque<Instance>,
}

impl PagedCursor {
    /// A cursor over every instance of `class` and its subclasses, in the order the list
    /// forms give them. Expired jobs are purged first, as the list form does.
    pub(super) fn new(host: &Host, class: &str) -> Result<Self, HostError> {
        let classes: VecDeque<Position> = CONCRETE
            .iter()
            .filter(|c| is_a(c, class))
            .map(|c| Position {
                class: c,
                tables: owners_of(c).iter().copied().collect(),
                after: i64::MIN,
            })
            .collect();
        if classes.iter().any(|p| p.tables.contains(&Owners::Jobs)) {
            crate::jobs::purge_expired(&host.db())?;
        }
        Ok(Self {
            host: host.clone(),
            classes,
            ready: VecDeque::new(),
        })
    }

    /// Reads the next page of at most `wanted` owner rows (64 at most) into `ready`; false
    /// at the end. Reading no further ahead than asked keeps instances fresh: a row removed
    /// before its page is read is skipped, as a client walking paths would find it gone.
    fn read_page(&mut self, wanted: usize) -> Result<bool, HostError> {
        let limit = wanted.clamp(1, PAGE_ROWS);
        while let Some(pos) = self.classes.front_mut() {
            let Some(table) = pos.tables.front().copied() else {
                self.classes.pop_front();
                continue;
            };
            let page = self.host.owner_page(table, pos.after, limit)?;
            let class = pos.class;
            if let Some((last, _)) = page.last() {
                pos.after = *last;
            }
            if page.len() < limit {
                // A short page is the table's last: the cursor knows its end without
                // another query.
                pos.tables.pop_front();
                pos.after = i64::MIN;
                if pos.tables.is_empty() {
                    self.classes.pop_front();
                }
            }
            if page.is_empty() {
                continue;
            }
            for (_, id) in &page {
                self.ready
                    .extend(self.host.instances_from(class, table, id)?);
            }
            return Ok(true);
        }
        Ok(false)
    }
}

impl InstanceCursor for PagedCursor {
    fn next_batch(&mut self, _: &dyn CimProvider, max: usize) -> Result<Vec<Instance>, CimError> {
        let max = max.max(1);
        while self.ready.len() < max {
            let wanted = max - self.ready.len();
            if !self.read_page(wanted).map_err(|e| e.to_cim())? {
                break;
            }
        }
        let n = max.min(self.ready.len());
        Ok(self.ready.drain(..n).collect())
    }

    fn is_exhausted(&self) -> bool {
        self.ready.is_empty() && self.classes.is_empty()
    }
}
