//! Class 5: secrets in the environment never reach command tools.

#[allow(unused_imports)]
use super::*;
