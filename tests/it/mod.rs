mod env;
mod pipeline;
mod refusals;

pub use env::*;
