//! Integration tests: the real `aikore` binary with real child processes,
//! grouped by area (as Horust groups by unit-file section); `deployed` drives
//! the whole product through NGINX the way a user meets it.

mod harness;

mod api;
#[path = "attacks/mod.rs"]
mod attacks;
mod cgroup_access;
mod check;
mod dbus_type;
mod deployed;
mod environment;
mod exec;
mod failures;
mod gpus;
mod install;
mod instances;
mod layers;
mod logs;
mod metrics;
mod namespaces;
mod persistent;
mod pid1;
mod protect;
mod proxy;
mod quiesce;
mod restart;
mod seccomp;
mod service_types;
mod state;
mod systemctl;
mod systemd_keys;
mod termination;
mod units_corpus;
mod units_parse;
mod web;
