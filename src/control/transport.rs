//! SEQPACKET transport with SCM_RIGHTS (being written).
