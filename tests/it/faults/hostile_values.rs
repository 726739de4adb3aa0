//! Class 6: values that cannot work are refused with the key, the value and the valid range.

#[allow(unused_imports)]
use super::*;
