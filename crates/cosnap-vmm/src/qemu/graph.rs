//! Reading a VM's block graph: which node a disk path is, which node a guest device reads
//! through, and which node names are free.

use std::path::Path;

use crate::error::{Result, VmmError};
use crate::model::BlockNode;
use crate::qemu::args::{device_id, layer_node};
use crate::qmp::{NamedNode, QmpClient, QueryBlock, QueryNamedBlockNodes};

pub fn block_nodes(q: &mut QmpClient) -> Result<Vec<BlockNode>> {
    let nodes = q.execute(&QueryNamedBlockNodes { flat: true })?;
    Ok(nodes.into_iter().map(to_block_node).collect())
}

fn to_block_node(node: NamedNode) -> BlockNode {
    BlockNode {
        file: image_filename(&node.file),
        node_name: node.node_name,
        driver: node.drv,
        backing_file: node.backing_file,
        read_only: node.ro,
        bitmaps: node.dirty_bitmaps.into_iter().map(|b| b.name).collect(),
    }
}

/// QEMU reports a node with options it cannot write as a plain name as `json:{…}`; the image
/// file is then the innermost `filename`.
fn image_filename(reported: &str) -> String {
    let Some(json) = reported.strip_prefix("json:") else {
        return reported.to_string();
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return reported.to_string();
    };
    let mut cursor = &value;
    loop {
        if let Some(name) = cursor.get("filename").and_then(|f| f.as_str()) {
            return name.to_string();
        }
        match cursor.get("file") {
            Some(inner) => cursor = inner,
            None => return reported.to_string(),
        }
    }
}

/// The format (not protocol) node that opens the image at `path`.
pub fn node_of_path(q: &mut QmpClient, path: &Path) -> Result<String> {
    let wanted = path.to_string_lossy();
    block_nodes(q)?
        .into_iter()
        .find(|node| node.driver != "file" && node.file == wanted)
        .map(|node| node.node_name)
        .ok_or_else(|| VmmError::Graph {
            vm: q.vm().to_string(),
            what: format!("no block node opens {wanted}"),
        })
}

/// The node guest disk `disk` reads through now (its active layer).
pub fn active_node(q: &mut QmpClient, disk: usize) -> Result<String> {
    let device = device_id(disk);
    let prefix = format!("/machine/peripheral/{device}/");
    q.execute(&QueryBlock {})?
        .into_iter()
        .filter(|block| {
            block
                .qdev
                .as_deref()
                .is_some_and(|qdev| qdev == device || qdev.starts_with(&prefix))
        })
        .find_map(|block| block.inserted.and_then(|i| i.node_name))
        .ok_or_else(|| VmmError::Graph {
            vm: q.vm().to_string(),
            what: format!("guest disk {disk} has no medium"),
        })
}

/// A format node name for a new layer of disk `disk`, one above every layer name in use.
pub fn next_layer_node(existing: &[BlockNode], disk: usize) -> String {
    let prefix = format!("d{disk}l");
    let highest = existing
        .iter()
        .filter_map(|node| node.node_name.strip_prefix(&prefix))
        .filter_map(|rest| rest.trim_end_matches('f').parse::<usize>().ok())
        .max();
    layer_node(disk, highest.map_or(0, |h| h + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_filenames_resolve_to_the_image_file() {
        let reported = r#"json:{"backing": null, "driver": "qcow2", "file": {"driver": "file", "filename": "/d/a.qcow2"}}"#;
        assert_eq!(image_filename(reported), "/d/a.qcow2");
        assert_eq!(image_filename("/d/b.qcow2"), "/d/b.qcow2");
    }

    #[test]
    fn new_layer_names_never_reuse_a_live_one() {
        let node = |name: &str| BlockNode {
            node_name: name.into(),
            driver: "qcow2".into(),
            file: String::new(),
            backing_file: None,
            read_only: false,
            bitmaps: vec![],
        };
        let nodes = [node("d0l0"), node("d0l0f"), node("d0l3"), node("d1l0")];
        assert_eq!(next_layer_node(&nodes, 0), "d0l4");
        assert_eq!(next_layer_node(&nodes, 1), "d1l1");
        assert_eq!(next_layer_node(&nodes, 2), "d2l0");
    }
}
