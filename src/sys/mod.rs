//! The OS layer's small readers and writers every other layer shares:
//! `/proc/<pid>/stat` read in one place ([`proc`]), and signals sent through
//! nix with "no such process" handled once ([`signal`]), and the boot's
//! pages given back once it settled ([`memory`]). Layer 0.

pub mod memory;
pub mod proc;
pub mod signal;
