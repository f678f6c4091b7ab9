//! sd-placement: being built.
