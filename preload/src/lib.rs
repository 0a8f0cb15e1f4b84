//! libmsock.so (being written).
