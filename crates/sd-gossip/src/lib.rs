//! sd-gossip: being built.
