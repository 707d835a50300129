//! What a structural check found, in every format's words.

use serde::{Deserialize, Serialize};

/// Outcome of a structural check, like `qemu-img check`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckReport {
    /// Structural errors (exit 2 like qemu-img).
    pub corruptions: Vec<String>,
    /// Leaked host space (exit 3 like qemu-img).
    pub leaks: Vec<String>,
}
