//! Class 4: exit codes tell cron and CI the truth (`worker --once`, definitions that cannot run, closed or full output, a home that is not one).

#[allow(unused_imports)]
use super::*;
