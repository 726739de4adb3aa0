//! Class 1: text from outside (model, tools, providers, definitions) never reaches a terminal raw; single-line fields stay on one line, capped; `--json` stays exact.

#[allow(unused_imports)]
use super::*;
