mod env;
mod pipeline;

pub use env::*;
