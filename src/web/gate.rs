//! The login gate's fast path: a short-lived cookie NGINX verifies itself
//! (its secure_link module), so an app request from a browser that passed
//! the gate a moment ago costs no subrequest to aikore.
//!
//! aikore issues `aikore_gate=<expires>.<signature>` on every request its
//! gate lets through with the apps origin's cookie (or to a shared
//! instance), for one scope: the NGINX location the request came through
//! (`app/<name>`, or `slot` for the ComfyUI slot's paths). The signature is
//! MD5 over `<expires>|<scope>|<secret>`, base64url without padding: the
//! only keyed hash NGINX's stock modules compute (docs/security.md says why
//! that is acceptable here). The secret is random at every start, in a 0600
//! file only NGINX's master reads (`<data>/nginx/gate.conf`, crate::proxy).
//!
//! A cookie lives at most [`MAX_LIFE_SECS`]: that bounds how long a logout or
//! an unshare takes to close the fast path, and guarantees that a browser in
//! use reaches aikore's gate at least once per window per scope, which is
//! what the idle-stop rule counts (docs/operations.md).

/// The gate cookie's name. It starts with `aikore_`, so apps never see it.
pub const COOKIE: &str = "aikore_gate";

/// NGINX compares the expiry with its clock in whole seconds and accepts a
/// cookie while `now <= expires`: issued with `expires = now + 1`, a cookie
/// opens the fast path for at most 2 s (at least 1).
pub const MAX_LIFE_SECS: u64 = 2;

/// A scope NGINX can name: `slot`, or `app/<name>` with a valid instance name.
pub fn valid_scope(scope: &str) -> bool {
    scope == "slot" || scope.strip_prefix("app/").is_some_and(crate::units::is_valid_unit_name)
}

/// The cookie's Path: only the scope's own requests carry it.
pub fn cookie_path(scope: &str) -> String {
    match scope.strip_prefix("app/") {
        Some(name) => crate::urls::app_base(name) + "/",
        None => "/".to_string(),
    }
}

/// The signature NGINX recomputes: `secure_link_md5 "$secure_link_expires|$aikore_gate_scope|$aikore_gate_secret"`.
pub fn sign(secret: &str, expires: u64, scope: &str) -> String {
    base64url(&md5(format!("{expires}|{scope}|{secret}").as_bytes()))
}

/// The cookie's value for `scope`, valid until `expires` (Unix seconds).
pub fn value(secret: &str, expires: u64, scope: &str) -> String {
    format!("{expires}.{}", sign(secret, expires, scope))
}

/// The whole Set-Cookie value for `scope`, issued at `now` (Unix seconds).
pub fn set_cookie(secret: &str, now: u64, scope: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={}; Path={}; HttpOnly; SameSite=Lax; Max-Age={MAX_LIFE_SECS}{}",
        value(secret, now + MAX_LIFE_SECS - 1, scope),
        cookie_path(scope),
        if secure { "; Secure" } else { "" }
    )
}

/// Unpadded base64url (RFC 4648 §5), what NGINX's secure_link decodes.
fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// MD5 (RFC 1321), the digest NGINX's `secure_link_md5` computes.
fn md5(message: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(message).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md5_matches_rfc_1321s_test_suite() {
        for (input, want) in [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
            ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f"),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ] {
            assert_eq!(hex(&md5(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn base64url_is_unpadded_and_url_safe() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff, 0xfe]), "-__-");
        assert_eq!(base64url(&[0u8; 16]).len(), 22);
    }

    #[test]
    fn a_cookie_is_bound_to_its_scope_expiry_and_secret() {
        let v = value("s3cret", 1_700_000_000, "app/a");
        let (expires, sig) = v.split_once('.').unwrap();
        assert_eq!(expires, "1700000000");
        assert_eq!(sig.len(), 22);
        assert_eq!(sig, base64url(&md5(b"1700000000|app/a|s3cret")));
        assert_ne!(v, value("s3cret", 1_700_000_000, "app/b"));
        assert_ne!(v, value("s3cret", 1_700_000_001, "app/a"));
        assert_ne!(v, value("other", 1_700_000_000, "app/a"));
    }

    #[test]
    fn the_set_cookie_lives_two_seconds_at_most_on_its_scopes_path() {
        let c = set_cookie("k", 100, "app/demo", false);
        assert!(c.starts_with("aikore_gate=101."), "{c}");
        assert!(c.ends_with("; Path=/app/demo/; HttpOnly; SameSite=Lax; Max-Age=2"), "{c}");
        assert!(set_cookie("k", 100, "slot", true).ends_with("; Path=/; HttpOnly; SameSite=Lax; Max-Age=2; Secure"));
    }

    #[test]
    fn only_nameable_scopes_are_signed() {
        for ok in ["slot", "app/a", "app/comfy-ui_2"] {
            assert!(valid_scope(ok), "{ok}");
        }
        for bad in ["", "-", "app/", "app/A", "app/a/b", "vnc/a", "app/a;x", "slot2"] {
            assert!(!valid_scope(bad), "{bad}");
        }
    }
}
