//! Class 2: a file tool never reads or writes an inode outside the workspace (hard links, trailing slashes, command `cwd`).

#[allow(unused_imports)]
use super::*;
