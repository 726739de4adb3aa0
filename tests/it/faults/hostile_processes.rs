//! Class 8: a tool never outlives its worker, and a worker stops at once.

#[allow(unused_imports)]
use super::*;
