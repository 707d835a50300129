//! Collections (of VMs, or of collections) and their members: define, look up, rename,
//! destroy, add and remove members.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::error::{HostError, Result};
use crate::host::Host;
use crate::model::*;
use crate::rows::{ids, load_collection, resolve};
use crate::util::{new_guid, norm_id, now_ms, rfc3339};

impl Host {
    /// DefineCollection. `id` = caller-chosen CollectionID (a GUID; `None` = fresh);
    /// `kind` 0 = VM collection, 1 = collection of collections.
    pub fn define_collection(&self, name: &str, id: Option<&str>, kind: u16) -> Result<Collection> {
        if name.trim().is_empty() {
            return Err(HostError::invalid("a collection needs a non-empty name"));
        }
        if kind > COLLECTION_OF_COLLECTIONS {
            return Err(HostError::invalid(format!(
                "collection Type {kind} is not 0 (VMs) or 1 (collections)"
            )));
        }
        let id = match id.map(str::trim).filter(|s| !s.is_empty()) {
            Some(id) => {
                uuid::Uuid::parse_str(id.trim_matches(['{', '}'])).map_err(|_| {
                    HostError::invalid(format!("collection Id '{id}' is not a GUID"))
                })?;
                norm_id(id)
            }
            None => new_guid(),
        };
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for table in ["collections", "snapshots", "refpoints", "vms"] {
            if tx
                .query_row(
                    &format!("SELECT 1 FROM {table} WHERE id = ?1"),
                    [&id],
                    |_| Ok(()),
                )
                .optional()?
                .is_some()
            {
                return Err(HostError::AlreadyExists(format!(
                    "an object with id {id} exists"
                )));
            }
        }
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM collections",
            [],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO collections (id, name, kind, created, seq) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, name, kind, rfc3339(now_ms()), seq],
        )?;
        tx.commit()?;
        load_collection(&conn, &id)
    }

    pub fn collection(&self, id_or_name: &str) -> Result<Collection> {
        let conn = self.db();
        let id = resolve(&conn, "collections", id_or_name, "collection")?;
        load_collection(&conn, &id)
    }

    pub fn collections(&self) -> Result<Vec<Collection>> {
        let conn = self.db();
        let ids = ids(&conn, "SELECT id FROM collections ORDER BY seq")?;
        ids.iter().map(|id| load_collection(&conn, id)).collect()
    }

    pub fn rename_collection(&self, id_or_name: &str, new_name: &str) -> Result<Collection> {
        if new_name.trim().is_empty() {
            return Err(HostError::invalid("NewName must not be empty"));
        }
        let conn = self.db();
        let id = resolve(&conn, "collections", id_or_name, "collection")?;
        conn.execute(
            "UPDATE collections SET name = ?2 WHERE id = ?1",
            params![id, new_name],
        )?;
        load_collection(&conn, &id)
    }

    /// DestroyCollection. Refused (invalid state) while snapshot collections or reference
    /// points of it exist: destroying them is a separate, explicit step. Memberships of the
    /// collection in collections of collections are removed.
    pub fn destroy_collection(&self, id_or_name: &str) -> Result<()> {
        let mut conn = self.db();
        let id = resolve(&conn, "collections", id_or_name, "collection")?;
        let n: i64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM snapshots WHERE collection_id = ?1) + (SELECT COUNT(*) FROM refpoints WHERE collection_id = ?1)",
            [&id],
            |r| r.get(0),
        )?;
        if n > 0 {
            return Err(HostError::state(format!(
                "collection {id} has {n} snapshot(s)/reference point(s); destroy them first"
            )));
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM collection_members WHERE collection_id = ?1 OR member_id = ?1",
            [&id],
        )?;
        tx.execute("DELETE FROM collections WHERE id = ?1", [&id])?;
        tx.commit()?;
        Ok(())
    }

    /// AddMember: a VM into a VM collection, or a collection into a collection of
    /// collections. Adding a member twice is an error (already exists).
    pub fn add_member(&self, collection: &str, member: &str) -> Result<Collection> {
        let mut conn = self.db();
        let cid = resolve(&conn, "collections", collection, "collection")?;
        let coll = load_collection(&conn, &cid)?;
        let mid = if coll.kind == COLLECTION_OF_VMS {
            resolve(&conn, "vms", member, "VM")?
        } else {
            let mid = resolve(&conn, "collections", member, "collection")?;
            if mid == cid {
                return Err(HostError::invalid("a collection cannot contain itself"));
            }
            mid
        };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if tx
            .query_row(
                "SELECT 1 FROM collection_members WHERE collection_id = ?1 AND member_id = ?2",
                [&cid, &mid],
                |_| Ok(()),
            )
            .optional()?
            .is_some()
        {
            return Err(HostError::AlreadyExists(format!(
                "{mid} is already a member of collection {cid}"
            )));
        }
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM collection_members",
            [],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO collection_members (collection_id, member_id, seq) VALUES (?1, ?2, ?3)",
            params![cid, mid, seq],
        )?;
        tx.commit()?;
        load_collection(&conn, &cid)
    }

    /// RemoveMember: removing something that is not a member is an error (not found).
    pub fn remove_member(&self, collection: &str, member: &str) -> Result<Collection> {
        let conn = self.db();
        let cid = resolve(&conn, "collections", collection, "collection")?;
        let mid = resolve(&conn, "vms", member, "VM")
            .or_else(|_| resolve(&conn, "collections", member, "member"))?;
        let n = conn.execute(
            "DELETE FROM collection_members WHERE collection_id = ?1 AND member_id = ?2",
            [&cid, &mid],
        )?;
        if n == 0 {
            return Err(HostError::not_found(format!(
                "{mid} is not a member of collection {cid}"
            )));
        }
        load_collection(&conn, &cid)
    }

    /// RemoveMemberById: succeeds when no collection with that id exists (documented
    /// idempotent cleanup); when the collection exists, the member must be in it.
    pub fn remove_member_by_id(&self, member: &str, collection_id: &str) -> Result<()> {
        let conn = self.db();
        let cid = norm_id(collection_id);
        if conn
            .query_row(
                "SELECT 1 FROM collections WHERE id = ?1",
                [&cid],
                |_| Ok(()),
            )
            .optional()?
            .is_none()
        {
            return Ok(());
        }
        drop(conn);
        self.remove_member(&cid, member).map(|_| ())
    }
}
