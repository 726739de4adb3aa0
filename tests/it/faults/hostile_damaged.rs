//! Class 3: a damaged session neither harms the others nor wedges for good; every I/O error names its path.

#[allow(unused_imports)]
use super::*;
