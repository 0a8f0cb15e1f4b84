//! Binary encoding of control messages (being written).
