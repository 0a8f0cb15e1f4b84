//! testnet (being written).
