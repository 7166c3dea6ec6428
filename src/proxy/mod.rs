//! NGINX in front of everything: its base config, rendered into the data dir
//! so NGINX runs with `<data>/nginx/` as its prefix.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The template, compiled in so a bare binary has it (the repo's `nginx/nginx.conf`).
const BASE_TEMPLATE: &str = include_str!("../../nginx/nginx.conf");

/// Default public port (AIKORE_PORT).
pub const DEFAULT_PORT: u16 = 9000;

pub struct BaseConfig {
    pub listen_port: u16,
    /// Where aikore's own API listens (NGINX's upstream for `/`).
    pub upstream: SocketAddr,
    /// Workers run as this user: the data dir's owner, so files NGINX
    /// writes (temp bodies) belong to the same host user as the rest.
    pub worker_user: Option<String>,
}

impl BaseConfig {
    pub fn render(&self) -> String {
        let user = match &self.worker_user {
            Some(name) => format!("user {name};"),
            None => String::new(),
        };
        BASE_TEMPLATE
            .replace("{{USER_DIRECTIVE}}", &user)
            .replace("{{LISTEN}}", &self.listen_port.to_string())
            .replace("{{UPSTREAM}}", &self.upstream.to_string())
    }
}

/// The user owning `dir`, by name (NGINX's `user` takes names).
pub fn owner_name(dir: &Path) -> Option<String> {
    let uid = std::fs::metadata(dir).ok()?.uid();
    nix::unistd::User::from_uid(uid.into()).ok()?.map(|u| u.name)
}

/// Writes `<data>/nginx/nginx.conf` (atomically: temp, fsync, rename) and the
/// dirs NGINX expects under its prefix.
pub fn write_base_config(data_dir: &Path, config: &BaseConfig) -> std::io::Result<PathBuf> {
    let prefix = data_dir.join("nginx");
    for dir in ["routes", "tmp"] {
        std::fs::create_dir_all(prefix.join(dir))?;
    }
    let path = prefix.join("nginx.conf");
    write_atomically(&path, config.render().as_bytes())?;
    Ok(path)
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let config = BaseConfig {
            listen_port: 9123,
            upstream: "127.0.0.1:9001".parse().unwrap(),
            worker_user: Some("abc".into()),
        };
        let text = config.render();
        assert!(!text.contains("{{"), "{text}");
        assert!(text.contains("listen 9123;"));
        assert!(text.contains("proxy_pass http://127.0.0.1:9001;"));
        assert!(text.contains("user abc;"));
    }
}
