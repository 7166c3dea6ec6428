#!/usr/bin/env bash
# Persistent mode (PersistentMode=yes in an instance unit). Not a blueprint:
# aikore runs `bash persistent-run.sh COMMAND...` as the unit's main process,
# COMMAND being the instance's launch.sh (or its ExecStart=). Everything
# below is started from here, so it lives in the unit's cgroup (or carries
# its AIKORE_UNIT marker) and the supervisor's stop takes all of it down.
#
#   Xvnc :N          the virtual display, VNC on 127.0.0.1 only, no password:
#                    only websockify (loopback) reaches it
#   window manager   matchbox-window-manager when installed: keeps Firefox
#                    full screen when the viewer resizes the display
#   websockify       noVNC's files and WebSocket on 127.0.0.1; NGINX serves
#                    it at /vnc/<name>/ behind the dashboard's login
#   COMMAND          the app, with DISPLAY=:N (a GUI app draws there)
#   firefox-esr      web apps only: kiosk mode on the display, pointed at
#                    http://127.0.0.1:$WEBUI_PORT/ once the app answers there;
#                    its own profile in the instance dir; restarted if it exits
#
# From aikore: DISPLAY, PERSISTENT_DISPLAY (N), PERSISTENT_VNC_PORT (5900+N),
# PERSISTENT_WS_PORT, PERSISTENT_BROWSER (yes|no), WEBUI_PORT,
# INSTANCE_CONF_DIR. Knobs (Environment= in the unit):
#   PERSISTENT_GEOMETRY   the display's size before a viewer resizes it (1280x800)
#   PERSISTENT_NOVNC_DIR  noVNC's files (/usr/share/novnc, Debian's novnc)
#
# The run ends with the app: its exit status is this script's. Xvnc or
# websockify dying ends it too (status 1), so Restart= applies.
set -uo pipefail

display=${PERSISTENT_DISPLAY:?persistent-run: PERSISTENT_DISPLAY is not set}
vnc_port=${PERSISTENT_VNC_PORT:?persistent-run: PERSISTENT_VNC_PORT is not set}
ws_port=${PERSISTENT_WS_PORT:?persistent-run: PERSISTENT_WS_PORT is not set}
browser=${PERSISTENT_BROWSER:-yes}
geometry=${PERSISTENT_GEOMETRY:-1280x800}
novnc=${PERSISTENT_NOVNC_DIR:-/usr/share/novnc}
conf_dir=${INSTANCE_CONF_DIR:-$PWD}
export DISPLAY=":$display"

say() { echo "persistent-run: $*"; }

if [[ $# -eq 0 ]]; then
    say "usage: persistent-run.sh COMMAND [ARG...]" >&2
    exit 2
fi

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        say "$1 is not installed (Debian package: $2)" >&2
        exit 1
    fi
}
need Xvnc tigervnc-standalone-server
need websockify websockify
if [[ ! -f "$novnc/vnc.html" ]]; then
    say "noVNC is not in $novnc (Debian package: novnc)" >&2
    exit 1
fi
if [[ "$browser" == yes ]]; then
    need firefox-esr firefox-esr
fi

children=()

stop_all() {
    if [[ ${#children[@]} -gt 0 ]]; then
        kill -TERM "${children[@]}" 2>/dev/null
    fi
}

# shellcheck disable=SC2317  # invoked by the traps below
on_signal() {
    say "stopping (signal $1)"
    stop_all
    wait
    exit $((128 + $1))
}
trap 'on_signal 15' TERM
trap 'on_signal 2' INT
trap 'on_signal 1' HUP

# ------------------------------------------------------------------ display
say "display :$display, VNC 127.0.0.1:$vnc_port, noVNC 127.0.0.1:$ws_port"
Xvnc ":$display" -rfbport "$vnc_port" -localhost -SecurityTypes None \
    -geometry "$geometry" -depth 24 -desktop "${INSTANCE_NAME:-aikore}" -AlwaysShared &
xvnc_pid=$!
children+=("$xvnc_pid")

# The server is up once its socket exists (it creates it after the lock).
for _ in $(seq 200); do
    [[ -S "/tmp/.X11-unix/X$display" ]] && break
    if ! kill -0 "$xvnc_pid" 2>/dev/null; then
        wait "$xvnc_pid"
        say "Xvnc exited with status $? before the display came up" >&2
        exit 1
    fi
    sleep 0.05
done
if [[ ! -S "/tmp/.X11-unix/X$display" ]]; then
    say "display :$display did not come up in 10 s" >&2
    stop_all
    wait
    exit 1
fi

if command -v matchbox-window-manager >/dev/null 2>&1; then
    matchbox-window-manager -use_titlebar no &
    children+=("$!")
else
    say "no matchbox-window-manager: windows keep their first size when the viewer resizes"
fi

websockify --web "$novnc" "127.0.0.1:$ws_port" "127.0.0.1:$vnc_port" &
ws_pid=$!
children+=("$ws_pid")

# ------------------------------------------------------------------ the app
"$@" &
app_pid=$!
children+=("$app_pid")

# ------------------------------------------------------------------ browser
# Whether the app answers HTTP (any status) on its port, in plain bash.
app_answers() {
    local reply=""
    { printf 'HEAD / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && IFS= read -r -t 5 reply <&3; } \
        3<>"/dev/tcp/127.0.0.1/${WEBUI_PORT:-0}" 2>/dev/null
    [[ "$reply" == HTTP/* ]]
}

write_prefs() {
    # Rewritten each start: a kiosk that never asks anything, never phones
    # home, and comes back on its page after a crash without safe-mode prompts.
    # One content process and no optional helper processes: it shows one
    # local page, and each helper costs tens of MB (benches/persistent.sh).
    cat >"$1/user.js" <<'PREFS'
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("browser.aboutwelcome.enabled", false);
user_pref("browser.startup.homepage_override.mstone", "ignore");
user_pref("startup.homepage_welcome_url", "");
user_pref("startup.homepage_welcome_url.additional", "");
user_pref("browser.sessionstore.resume_from_crash", false);
user_pref("browser.tabs.warnOnClose", false);
user_pref("toolkit.startup.max_resumed_crashes", -1);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("datareporting.healthreport.uploadEnabled", false);
user_pref("toolkit.telemetry.enabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.normandy.enabled", false);
user_pref("app.update.auto", false);
user_pref("extensions.update.enabled", false);
user_pref("extensions.pocket.enabled", false);
user_pref("browser.safebrowsing.malware.enabled", false);
user_pref("browser.safebrowsing.phishing.enabled", false);
user_pref("browser.safebrowsing.downloads.enabled", false);
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
user_pref("browser.translations.automaticallyPopup", false);
user_pref("fission.autostart", false);
user_pref("dom.ipc.processCount", 1);
user_pref("dom.ipc.processPrelaunch.enabled", false);
user_pref("dom.ipc.forkserver.enable", false);
user_pref("browser.tabs.remote.separatePrivilegedContentProcess", false);
user_pref("browser.tabs.remote.separatePrivilegedMozillaWebContentProcess", false);
user_pref("extensions.webextensions.remote", false);
user_pref("network.process.enabled", false);
user_pref("media.rdd-process.enabled", false);
user_pref("media.utility-process.enabled", false);
PREFS
}

run_browser() {
    local profile="$conf_dir/.firefox-profile" home="$conf_dir/.firefox-home" ff=""
    trap '[[ -n "$ff" ]] && kill -TERM "$ff" 2>/dev/null; wait; exit 0' TERM INT HUP
    until app_answers; do
        kill -0 "$app_pid" 2>/dev/null || exit 0
        sleep 0.5
    done
    mkdir -p "$profile" "$home"
    while true; do
        write_prefs "$profile"
        # Only this unit runs Firefox on this profile: a lock left by a
        # killed one (or another container's host name) must not block it.
        rm -f "$profile/lock" "$profile/.parentlock"
        say "starting Firefox on :$display at http://127.0.0.1:$WEBUI_PORT/"
        HOME="$home" XDG_CACHE_HOME="$home/.cache" MOZ_CRASHREPORTER_DISABLE=1 \
            firefox-esr --kiosk --no-remote --profile "$profile" "http://127.0.0.1:$WEBUI_PORT/" &
        ff=$!
        wait "$ff"
        say "Firefox exited with status $?; restarting it in 2 s"
        ff=""
        sleep 2
    done
}

if [[ "$browser" == yes ]]; then
    run_browser &
    children+=("$!")
fi

# ------------------------------------------------------------------ wait
# The first of the app, Xvnc and websockify to exit ends the run.
wait -n -p ended "$app_pid" "$xvnc_pid" "$ws_pid"
status=$?
if [[ "${ended:-}" == "$app_pid" ]]; then
    say "the app exited with status $status"
else
    [[ "${ended:-}" == "$xvnc_pid" ]] && what=Xvnc || what=websockify
    say "$what exited with status $status; stopping the instance" >&2
    status=1
fi
stop_all
wait
exit "$status"
