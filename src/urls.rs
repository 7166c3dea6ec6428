//! The public paths of instances, in one place for the route renderer
//! (`proxy`), the API's links (`instances`, `web`) and the auth gate: an
//! instance's app at `/app/<name>/`, its display at `/vnc/<name>/`, the
//! ComfyUI slot at `/comfyui/`, and how an instance is reached (its
//! [`ProxyMode`]). Layer 0: plain strings, no I/O.

/// Where every instance's app lives behind NGINX.
pub const APP_PREFIX: &str = "/app/";
/// Where a persistent instance's display (noVNC) lives.
pub const VNC_PREFIX: &str = "/vnc/";
/// The only slot there is (docs/proxy.md, "The ComfyUI slot"): the instance behind [`COMFYUI_PATH`].
pub const SLOT_COMFYUI: &str = "comfyui";
/// A slot an instance can hold, parsed once where it enters (the API, an
/// instance file); [`SLOT_COMFYUI`] is the only one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Slot {
    ComfyUi,
}

impl Slot {
    pub fn parse(text: &str) -> Result<Slot, String> {
        match text {
            SLOT_COMFYUI => Ok(Slot::ComfyUi),
            other => Err(format!("unknown active slot {other:?}: the only slot is \"{SLOT_COMFYUI}\"")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::ComfyUi => SLOT_COMFYUI,
        }
    }
}

impl TryFrom<String> for Slot {
    type Error = String;
    fn try_from(text: String) -> Result<Slot, String> {
        Slot::parse(&text)
    }
}

impl From<Slot> for String {
    fn from(slot: Slot) -> String {
        slot.as_str().to_string()
    }
}

/// The slot holder's fixed address.
pub const COMFYUI_PATH: &str = "/comfyui/";

/// How an instance is reached, from its blueprint's `# aikore.proxy = ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// Behind NGINX at `/app/<name>/` (the default).
    Subpath,
    /// On its own pool port, where NGINX listens with the apps origin's
    /// login in front (the app itself on a loopback port behind it);
    /// `/app/<name>/` redirects there.
    Port,
}

impl ProxyMode {
    pub fn parse(text: &str) -> ProxyMode {
        match text.trim() {
            "port" => ProxyMode::Port,
            _ => ProxyMode::Subpath,
        }
    }
}

/// `/app/<name>`: the instance's public path without the trailing slash (as
/// Gradio's root_path and NGINX's exact-match location want it).
pub fn app_base(name: &str) -> String {
    format!("{}{name}", APP_PREFIX)
}

/// `/app/<name>/`: the instance's app behind NGINX.
pub fn app_path(name: &str) -> String {
    format!("{APP_PREFIX}{name}/")
}

/// `/vnc/<name>`: a persistent instance's display prefix, no trailing slash.
pub fn vnc_base(name: &str) -> String {
    format!("{}{name}", VNC_PREFIX)
}

/// noVNC's page on a persistent instance's display, with the WebSocket path
/// under the same prefix (websockify answers the upgrade on any path) and
/// remote resize, so the display takes the size of the viewer's window.
pub fn vnc_view(name: &str) -> String {
    format!("{VNC_PREFIX}{name}/vnc.html?path=vnc/{name}/websockify&resize=remote&autoconnect=true&reconnect=true")
}

/// The instance name an original request target addresses when it is under
/// `/app/<name>`, before any check of the name or the rest.
pub fn app_name_in(uri: &str) -> Option<&str> {
    uri.strip_prefix(APP_PREFIX)?.split(['/', '?']).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_one_instance_agree() {
        assert_eq!(app_base("a-1"), "/app/a-1");
        assert_eq!(app_path("a-1"), "/app/a-1/");
        assert_eq!(vnc_base("a-1"), "/vnc/a-1");
        assert!(vnc_view("a-1").starts_with("/vnc/a-1/vnc.html?path=vnc/a-1/websockify"));
        assert_eq!(app_name_in("/app/a-1/x.js?y"), Some("a-1"));
        assert_eq!(app_name_in("/app/a-1"), Some("a-1"));
        assert_eq!(app_name_in("/vnc/a-1/"), None);
        assert_eq!(ProxyMode::parse(" port "), ProxyMode::Port);
        assert_eq!(ProxyMode::parse("anything"), ProxyMode::Subpath);
    }
}
