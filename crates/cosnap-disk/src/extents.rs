//! The allocation vocabulary shared by the whole-image operations and the copy engine: a
//! chain's layers, merged ranges, the ranges layers hold above a depth, and the
//! whole-chain extent map. Both [`crate::ops`] and [`crate::copy`] build on it, so neither
//! needs the other.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::image::{Extent, ExtentState, Image};

/// Layers of an open chain, top first.
pub fn layers(img: &dyn Image) -> Vec<&dyn Image> {
    let mut out = Vec::new();
    let mut cur: Option<&dyn Image> = Some(img);
    while let Some(layer) = cur {
        out.push(layer);
        cur = layer.parent();
    }
    out
}

/// Sorted, merged union of ranges.
pub fn merge_ranges(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Changed ranges of an open chain above the layer at depth `stop` (exclusive): the union
/// of what layers `0..stop` hold.
pub fn changed_ranges_open(img: &dyn Image, stop: usize) -> Result<Vec<Range<u64>>> {
    let size = img.virtual_size();
    let mut ranges = Vec::new();
    for layer in layers(img).into_iter().take(stop) {
        let n = layer.virtual_size().min(size);
        for e in layer.layer_map(0, n)? {
            if e.state != ExtentState::Inherited {
                ranges.push(e.offset..e.offset + e.len);
            }
        }
        if n < size {
            // The layer ends early: everything past its end reads as zeros through it.
            ranges.push(n..size);
        }
    }
    Ok(merge_ranges(ranges))
}

/// One extent of a whole-chain map: `state` as the topmost layer holding it says, and that
/// layer's depth (0 = top). Inherited extents have `depth` = the chain length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainExtent {
    /// First guest byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the topmost layer holding the range says.
    pub state: ExtentState,
    /// That layer's depth (0 = top; the chain length when no layer holds it).
    pub depth: usize,
}

impl ChainExtent {
    fn extent(&self) -> Extent {
        Extent {
            offset: self.offset,
            len: self.len,
            state: self.state,
        }
    }
}

/// Whole-chain map of `[offset, offset + len)`: for each range, the topmost layer that
/// holds it (data or zeros); `Inherited` where no layer does (reads as zeros).
pub fn chain_map(img: &dyn Image, offset: u64, len: u64) -> Result<Vec<ChainExtent>> {
    let mut out = Vec::new();
    chain_map_into(img, offset, len, 0, &mut out)?;
    Ok(out)
}

fn chain_map_into(
    img: &dyn Image,
    offset: u64,
    len: u64,
    depth: usize,
    out: &mut Vec<ChainExtent>,
) -> Result<()> {
    let push = |out: &mut Vec<ChainExtent>, e: ChainExtent| {
        if e.len == 0 {
            return;
        }
        if let Some(last) = out.last_mut()
            && last.depth == e.depth
            && last.extent().continues_into(&e.extent())
        {
            last.len += e.len;
            return;
        }
        out.push(e);
    };
    let own_len = len.min(img.virtual_size().saturating_sub(offset));
    let chain_len = layers(img).len();
    for e in img.layer_map(offset, own_len)? {
        match (e.state, img.parent()) {
            (ExtentState::Inherited, Some(parent)) => {
                let pend = parent.virtual_size();
                let in_parent = if e.offset < pend {
                    (pend - e.offset).min(e.len)
                } else {
                    0
                };
                if in_parent > 0 {
                    chain_map_into(parent, e.offset, in_parent, depth + 1, out)?;
                }
                if in_parent < e.len {
                    push(
                        out,
                        ChainExtent {
                            offset: e.offset + in_parent,
                            len: e.len - in_parent,
                            state: ExtentState::Inherited,
                            depth: depth + chain_len,
                        },
                    );
                }
            }
            (ExtentState::Inherited, None) => push(
                out,
                ChainExtent {
                    offset: e.offset,
                    len: e.len,
                    state: e.state,
                    depth: depth + 1,
                },
            ),
            (state, _) => push(
                out,
                ChainExtent {
                    offset: e.offset,
                    len: e.len,
                    state,
                    depth,
                },
            ),
        }
    }
    if own_len < len {
        push(
            out,
            ChainExtent {
                offset: offset + own_len,
                len: len - own_len,
                state: ExtentState::Inherited,
                depth,
            },
        );
    }
    Ok(())
}
