//! Import of export packages (owned by the export engineer). Placeholder until that work lands.
