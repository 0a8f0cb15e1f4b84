//! stack (being written).
