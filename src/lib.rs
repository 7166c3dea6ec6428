//! AiKore: PID 1 of a GPU container. It supervises services and AI web-UI
//! instances defined by systemd-style unit files, keeps runtime state in SQLite,
//! and serves a JSON API, a dashboard and Prometheus metrics.
//!
//! Data flows one way: unit files -> supervisor -> processes -> events ->
//! {store, logs, web}. Only the supervisor task changes a unit's state.

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod failure;
pub mod init;
pub mod instances;
pub mod logs;
pub mod metrics;
pub mod ownership;
pub mod proxy;
pub mod safefs;
pub mod store;
pub mod supervisor;
pub mod sys;
pub mod units;
pub mod urls;
pub mod web;
