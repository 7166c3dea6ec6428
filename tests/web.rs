//! The web gate and the dashboard's HTML: login required, CSRF refused,
//! bearer accepted, /healthz open, and user text escaped in rendered pages.

use std::time::Duration;

use crate::harness::{Daemon, Options};

const PASSWORD: &str = "a long test password";

/// A client that sends no bearer and follows no redirect: a browser's view.
fn browser() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

struct Reply {
    status: u16,
    location: String,
    set_cookie: String,
    csp: String,
    body: String,
}

fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = result.expect("request");
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (location, set_cookie, csp) = (header("location"), header("set-cookie"), header("content-security-policy"));
    Reply {
        status: r.status().as_u16(),
        location,
        set_cookie,
        csp,
        body: r.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn with_password() -> Options {
    let mut options = Options::default();
    options.env.push(("AIKORE_PASSWORD".into(), PASSWORD.into()));
    options
}

/// Logs in through the form; returns (Cookie header value, CSRF token from the page).
fn login(d: &Daemon) -> (String, String) {
    let agent = browser();
    let r = reply(
        agent
            .post(&format!("{}/login", d.url))
            .content_type("application/x-www-form-urlencoded")
            .send(format!("password={}", PASSWORD.replace(' ', "+"))),
    );
    assert_eq!(r.status, 303, "login: {}", r.body);
    assert!(r.set_cookie.contains("HttpOnly") && r.set_cookie.contains("SameSite=Strict"), "{}", r.set_cookie);
    let cookie = r.set_cookie.split(';').next().unwrap().to_string();
    let page = reply(agent.get(&format!("{}/", d.url)).header("Cookie", &cookie).call());
    assert_eq!(page.status, 200);
    let csrf = page.body.split("name=\"csrf-token\" content=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    (cookie, csrf)
}

#[test]
fn pages_and_api_require_login_but_healthz_is_open() {
    let d = Daemon::start_with(&[], with_password());
    let agent = browser();
    let r = reply(agent.get(&format!("{}/", d.url)).call());
    assert_eq!((r.status, r.location.as_str()), (303, "/login"));
    let r = reply(agent.get(&format!("{}/api/v1/units", d.url)).call());
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("\"error\""));
    let r = reply(agent.get(&format!("{}/healthz", d.url)).call());
    assert_eq!(r.status, 200);
    let r = reply(agent.get(&format!("{}/login", d.url)).call());
    assert_eq!(r.status, 200);
    assert!(r.body.contains("type=\"password\""));
    // A wrong password gets the page again, and no cookie.
    let r = reply(
        agent.post(&format!("{}/login", d.url)).content_type("application/x-www-form-urlencoded").send("password=nope"),
    );
    assert_eq!(r.status, 401);
    assert!(r.set_cookie.is_empty());
}

#[test]
fn bearer_tokens_pass_without_cookie_or_csrf() {
    let d = Daemon::start_with(&[("one.service", "[Service]\nExecStart=/bin/sleep 1000\n")], with_password());
    // The harness sends the daemon's AIKORE_API_TOKEN as a bearer.
    assert_eq!(d.get("/api/v1/units").0, 200);
    assert_eq!(d.post("/api/v1/units/one/stop").0, 200);
    let agent = browser();
    let r = reply(agent.get(&format!("{}/api/v1/units", d.url)).header("Authorization", "Bearer wrong").call());
    assert_eq!(r.status, 401);
    // NGINX's auth_request target.
    let check = format!("{}/api/v1/auth/check", d.url);
    assert_eq!(reply(agent.get(&check).call()).status, 401);
    let bearer = format!("Bearer {}", d.token);
    assert_eq!(reply(agent.get(&check).header("Authorization", &bearer).call()).status, 204);
}

#[test]
fn state_changes_with_a_session_need_the_csrf_token() {
    let d = Daemon::start_with(&[("one.service", "[Service]\nExecStart=/bin/sleep 1000\n")], with_password());
    d.wait_status("one", "started");
    let (cookie, csrf) = login(&d);
    let agent = browser();
    let stop = format!("{}/api/v1/units/one/stop", d.url);
    let r = reply(agent.post(&stop).header("Cookie", &cookie).send_empty());
    assert_eq!(r.status, 403, "{}", r.body);
    let r = reply(agent.post(&stop).header("Cookie", &cookie).header("X-CSRF-Token", "forged").send_empty());
    assert_eq!(r.status, 403);
    assert_eq!(d.unit("one")["status"], "started");
    // A plain form without the hidden field is refused; with it, it goes through.
    let form = format!("{}/instances/one/stop", d.url);
    let r = reply(
        agent.post(&form).header("Cookie", &cookie).content_type("application/x-www-form-urlencoded").send("x=1"),
    );
    assert_eq!(r.status, 403);
    let r = reply(agent.post(&stop).header("Cookie", &cookie).header("X-CSRF-Token", &csrf).send_empty());
    assert_eq!(r.status, 200, "{}", r.body);
    d.wait_status("one", "stopped");
    // Reads need no token; logging out ends the session.
    assert_eq!(reply(agent.get(&format!("{}/api/v1/units", d.url)).header("Cookie", &cookie).call()).status, 200);
    let r = reply(
        agent
            .post(&format!("{}/logout", d.url))
            .header("Cookie", &cookie)
            .content_type("application/x-www-form-urlencoded")
            .send(format!("_csrf={csrf}")),
    );
    assert_eq!((r.status, r.location.as_str()), (303, "/login"));
    assert_eq!(reply(agent.get(&format!("{}/api/v1/units", d.url)).header("Cookie", &cookie).call()).status, 401);
}

#[test]
fn first_run_asks_for_a_password_once() {
    let d = Daemon::start(&[]);
    let agent = browser();
    let r = reply(agent.get(&format!("{}/", d.url)).call());
    assert_eq!((r.status, r.location.as_str()), (303, "/setup"));
    let setup = format!("{}/setup", d.url);
    let r = reply(
        agent.post(&setup).content_type("application/x-www-form-urlencoded").send("password=short&confirm=short"),
    );
    assert_eq!(r.status, 400);
    let r = reply(
        agent
            .post(&setup)
            .content_type("application/x-www-form-urlencoded")
            .send("password=first-password&confirm=first-password"),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.set_cookie.starts_with("aikore_session="));
    // Now the setup page is closed and the stored (argon2) password logs in.
    let r = reply(
        agent
            .post(&setup)
            .content_type("application/x-www-form-urlencoded")
            .send("password=second-password&confirm=second-password"),
    );
    assert_eq!(r.status, 409);
    let r = reply(
        agent
            .post(&format!("{}/login", d.url))
            .content_type("application/x-www-form-urlencoded")
            .send("password=first-password"),
    );
    assert_eq!(r.status, 303);
}

#[test]
fn user_text_is_escaped_in_the_dashboard() {
    let d = Daemon::start_with(&[], with_password());
    let (code, body) = d.post_json(
        "/api/v1/instances",
        serde_json::json!({ "name": "<img src=x onerror=alert(1)>", "blueprint": "test-http" }),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = d.post_json(
        "/api/v1/instances",
        serde_json::json!({ "name": "safe", "blueprint": "test-http", "description": "<script>alert(1)</script>\" onmouseover=\"x" }),
    );
    assert_eq!(code, 201, "{body}");
    let (cookie, _) = login(&d);
    let agent = browser();
    let page = reply(agent.get(&format!("{}/?error=%3Cimg%20src%3Dx%3E", d.url)).header("Cookie", &cookie).call());
    assert_eq!(page.status, 200);
    assert!(page.body.contains("data-name=\"safe\""));
    assert!(!page.body.contains("<script>alert"), "unescaped description");
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot; onmouseover=&quot;x"));
    assert!(!page.body.contains("<img src=x>") && page.body.contains("&lt;img src=x&gt;"), "unescaped flash");
    // Scripts only from files: no inline script, and a CSP that says so.
    assert!(!page.body.contains("<script>"));
    let script_src = page.csp.split(';').find(|d| d.trim().starts_with("script-src")).unwrap();
    assert_eq!(script_src.trim(), "script-src 'self'");
}

#[test]
fn the_trash_cans_plain_form_purges_for_good() {
    let d = Daemon::start_with(&[], with_password());
    let (code, body) =
        d.post_json("/api/v1/instances", serde_json::json!({ "name": "gone", "blueprint": "test-http" }));
    assert_eq!(code, 201, "{body}");
    let (code, trashed) = d.delete("/api/v1/instances/gone");
    assert_eq!(code, 200, "{trashed}");
    let id = trashed["trashed"]["id"].as_str().expect("trash id").to_string();
    let (cookie, csrf) = login(&d);
    // The dashboard lists it with both buttons.
    let page = reply(browser().get(&format!("{}/partials/trash", d.url)).header("Cookie", &cookie).call());
    assert!(page.body.contains(&format!("/trashcan/{id}/purge")), "{}", page.body);
    let r = reply(
        browser()
            .post(&format!("{}/trashcan/{id}/purge", d.url))
            .header("Cookie", &cookie)
            .content_type("application/x-www-form-urlencoded")
            .send(format!("_csrf={csrf}")),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.location.contains("notice="), "{}", r.location);
    assert_eq!(d.get("/api/v1/trashcan").1.as_array().map(Vec::len), Some(0));
}
