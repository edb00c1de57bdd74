//! Placeholder replaced on merge.
