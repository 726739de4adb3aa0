//! Classes 7 and 9: counters, messages and README promises that must agree with what happens.

#[allow(unused_imports)]
use super::*;
