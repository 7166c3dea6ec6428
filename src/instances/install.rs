//! Install as a job (docs/operations.md): a blueprint's install phase
//! (`run_install` in blueprints/functions.sh) says what it does in
//! `[aikore-install]` lines of the instance's log; this reads them, and pip's
//! and git's progress lines between them, into the state the API and the
//! dashboard show (`installing`, step i of n). Pure: `instances::quiesce`
//! feeds it the log lines of each run.

/// What aikore knows of an instance's install, from its current or last run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct InstallView {
    /// `installing`, `done`, `skipped` (stamp unchanged), `failed` (the run
    /// ended during it) or `interrupted` (stopped during it).
    pub state: &'static str,
    /// The step running (or last run), 1-based; 0 before the first.
    pub step: u32,
    pub steps: u32,
    /// The step's name, as the blueprint gave it.
    pub name: String,
    /// The last pip or git progress line of the step ("Downloading x.whl (2.1 MB)").
    pub activity: Option<String>,
    /// The app version (release tag or pinned ref) being or last installed.
    pub version: Option<String>,
}

const MARK: &str = "[aikore-install] ";
/// A progress line shown is cut to this many characters.
const MAX_ACTIVITY: usize = 160;

/// The version a `skipped:`/`done:` line names: its first word, without
/// control characters (the line is the app's text and reaches terminals).
fn printable_version(text: &str) -> Option<String> {
    let word = text.split_whitespace().next()?.trim_end_matches(',');
    let clean: String = word.chars().filter(|c| !c.is_control()).take(MAX_ACTIVITY).collect();
    (!clean.is_empty()).then_some(clean)
}

impl InstallView {
    /// Takes one log line; true when it changed what is shown.
    pub fn take(&mut self, line: &str) -> bool {
        if let Some(rest) = line.strip_prefix(MARK) {
            return self.marker(rest.trim());
        }
        if self.state != "installing" {
            return false;
        }
        // git writes its progress with \r between updates: the last one counts.
        let last = line.rsplit('\r').find(|s| !s.trim().is_empty()).unwrap_or("").trim();
        let progress = [
            "Collecting ",
            "Downloading ",
            "Processing ",
            "Installing collected packages",
            "Successfully installed",
            "Obtaining ",
            "Building wheel",
        ]
        .iter()
        .any(|p| last.starts_with(p))
            || ["Receiving objects:", "Resolving deltas:", "Cloning into", "remote: Counting objects:"]
                .iter()
                .any(|p| last.contains(p));
        if !progress {
            return false;
        }
        let text: String = last.chars().filter(|c| !c.is_control()).take(MAX_ACTIVITY).collect();
        self.activity = Some(text);
        true
    }

    fn marker(&mut self, rest: &str) -> bool {
        if let Some(begin) = rest.strip_prefix("begin ") {
            // `begin N steps: VERSION`
            let (count, version) = begin.split_once(" steps:").unwrap_or((begin, ""));
            *self = InstallView {
                state: "installing",
                steps: count.trim().parse().unwrap_or(0),
                version: Some(version.trim().to_string()).filter(|v| !v.is_empty()).or(self.version.take()),
                ..InstallView::default()
            };
        } else if let Some(step) = rest.strip_prefix("step ") {
            // `step i/N: NAME`
            let (numbers, name) = step.split_once(':').unwrap_or((step, ""));
            let (i, n) = numbers.split_once('/').unwrap_or((numbers, ""));
            self.state = "installing";
            self.step = i.trim().parse().unwrap_or(self.step + 1);
            self.steps = n.trim().parse().unwrap_or(self.steps).max(self.step);
            self.name = name.trim().chars().filter(|c| !c.is_control()).take(MAX_ACTIVITY).collect();
            self.activity = None;
        } else if let Some(version) = rest.strip_prefix("skipped: ") {
            self.state = "skipped";
            self.activity = None;
            self.version = printable_version(version);
        } else if let Some(version) = rest.strip_prefix("done: ") {
            self.state = "done";
            self.step = self.steps.max(self.step);
            self.activity = None;
            self.version = printable_version(version);
        } else {
            return false;
        }
        true
    }

    /// The install phase is over for this run (the app starts now).
    pub fn finished(&self) -> bool {
        matches!(self.state, "done" | "skipped")
    }

    /// "step 2 of 3: requirements · Downloading x.whl (2.1 MB)".
    pub fn describe(&self) -> String {
        let mut out = if self.step == 0 {
            format!("preparing {} steps", self.steps)
        } else {
            format!("step {} of {}: {}", self.step, self.steps, self.name)
        };
        if let Some(version) = &self.version {
            out = format!("{version}: {out}");
        }
        if let Some(activity) = &self.activity {
            out.push_str(" · ");
            out.push_str(activity);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_and_progress_lines_make_the_state() {
        let mut v = InstallView::default();
        assert!(!v.take("Collecting torch"), "progress outside an install is not shown");
        assert!(v.take("[aikore-install] begin 3 steps: v1.2.0"));
        assert_eq!((v.state, v.steps, v.version.as_deref()), ("installing", 3, Some("v1.2.0")));
        assert!(v.take("[aikore-install] step 1/3: checkout v1.2.0"));
        assert!(v.take("Receiving objects:  12% (1/8)\rReceiving objects:  50% (4/8)\r"));
        assert_eq!(v.activity.as_deref(), Some("Receiving objects:  50% (4/8)"));
        assert!(v.take("[aikore-install] step 2/3: requirements"));
        assert_eq!(v.activity, None);
        assert!(v.take("Downloading demo-1.0-py3-none-any.whl (2.1 kB)"));
        assert!(!v.take("some other line"));
        assert_eq!(v.describe(), "v1.2.0: step 2 of 3: requirements · Downloading demo-1.0-py3-none-any.whl (2.1 kB)");
        assert!(v.take("[aikore-install] done: v1.2.0"));
        assert!(v.finished());
        assert_eq!(v.step, 3);
        let mut s = InstallView::default();
        assert!(s.take("[aikore-install] skipped: v1.1.0 installed, nothing changed"));
        assert_eq!((s.state, s.version.as_deref()), ("skipped", Some("v1.1.0")));
        // The app's own text: an escape sequence never reaches a terminal through the view.
        let mut e = InstallView::default();
        assert!(e.take("[aikore-install] step 1/2: de\u{1b}[2Jps"));
        assert_eq!(e.name, "de[2Jps");
        assert!(e.take("[aikore-install] done: v2\u{1b}]0;x\u{7}"));
        assert_eq!(e.version.as_deref(), Some("v2]0;x"));
    }
}
