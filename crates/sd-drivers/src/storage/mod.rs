//! Storage backends: prepare what a domain runs from, and remove it afterwards.

pub mod dir;
