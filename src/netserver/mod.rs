//! netserver (being written).
