//! Per-unit log capture: file with rotation, ring buffer of the tail, followers.
