//! Durable committed offsets: a pure frame codec and the store around it.

pub(crate) mod codec;
pub(crate) mod store;
