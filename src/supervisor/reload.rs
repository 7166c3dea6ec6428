//! Re-reading the unit files and handing them to the supervisor (`aikore
//! reload`, SIGHUP, an instance created or changed). Here, under the
//! supervisor, so the API and `instances` reach it without importing the daemon.

use std::path::PathBuf;

use super::SupervisorHandle;
use crate::clock::now_ms;
use crate::store::StoreHandle;
use crate::units::{load_dirs_with, Diagnostic, Severity};

/// Re-reads unit files and hands them to the supervisor.
pub struct Reloader {
    units_dirs: Vec<PathBuf>,
    supervisor: SupervisorHandle,
    store: StoreHandle,
    /// Template instances started by name (`aikore start echo@a`): made again
    /// at every reload, as systemd keeps a started instance loaded.
    requested: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReloadReport {
    pub units: usize,
    pub diagnostics: Vec<String>,
    pub archived: Vec<String>,
}

impl Reloader {
    pub fn new(units_dirs: Vec<PathBuf>, supervisor: SupervisorHandle, store: StoreHandle) -> Self {
        Reloader { units_dirs, supervisor, store, requested: Default::default() }
    }

    /// The units dirs, stock first and the user's (`<data>/units`) last.
    pub fn units_dirs(&self) -> &[PathBuf] {
        &self.units_dirs
    }

    /// Loads the template instance `name` (`echo@a` from `echo@.service`):
    /// a reload with it added; it stays loaded from then on.
    pub async fn instantiate(&self, name: &str) -> anyhow::Result<ReloadReport> {
        self.requested.lock().map_err(|_| anyhow::anyhow!("reloader lock poisoned"))?.insert(name.to_string());
        self.reload().await
    }

    pub async fn reload(&self) -> anyhow::Result<ReloadReport> {
        let dirs = self.units_dirs.clone();
        let requested = self.requested.lock().map_err(|_| anyhow::anyhow!("reloader lock poisoned"))?.clone();
        let loaded = tokio::task::spawn_blocking(move || load_dirs_with(&dirs, &requested)).await?;
        report_diagnostics(&loaded.diagnostics);
        let names: Vec<(String, String)> =
            loaded.units.iter().map(|u| (u.name.clone(), u.kind.as_str().to_string())).collect();
        let report = self.store.call(move |s| s.reconcile_definitions(&names, now_ms())).await??;
        let count = loaded.units.len();
        self.supervisor.set_units(loaded.units).await?;
        Ok(ReloadReport {
            units: count,
            diagnostics: loaded.diagnostics.iter().map(|d| d.to_string()).collect(),
            archived: report,
        })
    }
}

/// Unit-file diagnostics go to the daemon's log at their severity.
pub fn report_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        match d.severity {
            Severity::Error => tracing::error!("{d}"),
            Severity::Warning => tracing::warn!("{d}"),
        }
    }
}
