//! sd-net: being built.
