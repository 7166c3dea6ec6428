# AiKore container image: `aikore serve` is PID 1 (no shell, no tini, no s6).
#
# Two ways to get the binary (see docs/container.md):
#   docker build -t aikore .                        # compiles it in a Rust stage
#   cargo build --release --locked && \
#   docker build --build-arg PREBUILT=1 -t aikore . # copies target/release/aikore
# AIKORE_BINARY names another prebuilt path inside the context
# (e.g. when CARGO_TARGET_DIR points elsewhere and the binary was copied in).
# RUST_IMAGE / DEBIAN_IMAGE let an offline builder use locally built bases.
# PERSISTENT=0 leaves out persistent mode (Xvnc, noVNC, Firefox: most of the
# image); instances then cannot use PersistentMode= (docs/container.md).

ARG PREBUILT=0
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
ARG NODE_IMAGE=docker.io/library/node:20-bookworm-slim

# ---- binary, compiled from source (PREBUILT=0) -----------------------------
# Without the symbol table in the image (2.7 of 15 MiB): the release profile
# already drops debug info; PREBUILT=1 copies what it is given (docs/container.md).
FROM ${RUST_IMAGE} AS build-0
WORKDIR /src
COPY . .
RUN CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked \
 && install -D -m 0755 target/release/aikore /out/aikore \
 && mkdir -p blueprints

# ---- binary, built beforehand on a glibc >= 2.36 host (PREBUILT=1) ---------
FROM ${DEBIAN_IMAGE} AS build-1
ARG AIKORE_BINARY=target/release/aikore
WORKDIR /src
COPY . .
RUN test -x "${AIKORE_BINARY}" \
      || { echo "PREBUILT=1 needs ${AIKORE_BINARY} in the build context (cargo build --release --locked)" >&2; exit 1; } \
 && install -D -m 0755 "${AIKORE_BINARY}" /out/aikore \
 && mkdir -p blueprints

# One name for whichever stage was chosen; the other is never built.
FROM build-${PREBUILT} AS build

# ---- dashboard assets: hand-written static files + xterm.js from npm --------
# PREBUILT=0 installs the lockfile's runtime packages; PREBUILT=1 takes
# web/node_modules from the context (`npm ci --prefix web` beforehand).
# Only what the dashboard serves goes on: the packages' TypeScript sources,
# typings and source maps were 2.2 of their 2.7 MiB.
FROM ${NODE_IMAGE} AS web-0
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund \
 && rm -rf node_modules/@xterm/*/src node_modules/@xterm/*/typings node_modules/@xterm/*/README.md \
 && find node_modules -name '*.map' -delete
COPY web/static ./static

FROM ${DEBIAN_IMAGE} AS web-1
COPY web/ /web/
RUN rm -rf /web/tests /web/bench \
           /web/node_modules/@xterm/*/src /web/node_modules/@xterm/*/typings /web/node_modules/@xterm/*/README.md \
 && find /web/node_modules -name '*.map' -delete

FROM web-${PREBUILT} AS web

# ---- runtime ----------------------------------------------------------------
FROM ${DEBIAN_IMAGE}

# The user that owns /config and runs instances. PUID/PGID at run time say
# which host user that is; the image's defaults match the usual first user.
ARG PUID=1000
ARG PGID=1000

# What blueprints need to install and run web UIs: git, python3 + venv,
# curl, ca-certificates; procps for ps/pkill in scripts; tzdata for TZ.
# policy-rc.d keeps Debian's nginx postinst from starting a daemon.
# Documentation, man pages and translations are not installed (dpkg
# path-exclude): nobody reads them in this container, and they were tens of
# MiB across these packages; copyright files stay. Then, as in the official
# python:slim images, no byte-code caches (__pycache__: 14 MiB here, 32 in
# persistent mode's layer; Python compiles what it imports), and files that are the
# same bytes under two names become one file (git installs /usr/bin/git,
# git-shell and scalar twice: 8 MiB). benches/image.sh shows what each
# layer and package costs.
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
        'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
        > /etc/dpkg/dpkg.cfg.d/01-aikore-slim; \
    touch /tmp/.layer-start; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx bash git python3 python3-venv ca-certificates curl procps tzdata; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log \
           /var/cache/debconf/*-old /var/lib/dpkg/*-old /usr/sbin/policy-rc.d /etc/nginx/sites-enabled/default; \
    find /usr -xdev -name __pycache__ -type d -prune -exec rm -rf {} +; \
    find /usr -xdev -type f -cnewer /tmp/.layer-start -size +8k -print0 | xargs -0r hardlink -q -t; \
    rm /tmp/.layer-start; \
    groupadd --gid "${PGID}" aikore; \
    useradd --uid "${PUID}" --gid "${PGID}" --home-dir /home/aikore --create-home --no-log-init \
            --shell /bin/bash aikore; \
    mkdir -p /config /etc/aikore /opt/aikore

# Persistent mode (PersistentMode=, README.md "Persistent mode"): Xvnc, websockify
# with noVNC's files, Firefox ESR, a window manager; PERSISTENT=0 leaves it
# out (the slim image: the layers above plus aikore's own files). Its own
# layer, after the common one, so both variants share that one.
# - dbus-x11 gives GTK's settings service the session bus it asks for;
#   otherwise apt picks dbus-user-session, which brings all of systemd.
# - noVNC: only its web files (/usr/share/novnc) from Debian's package,
#   unpacked by hand: the package itself depends on Node.js and on
#   OpenStack's nova console proxy, 150 MiB that websockify never runs.
# - No software OpenGL: Xvnc depends on Mesa's drivers (160 MiB with the
#   LLVM and Z3 libraries they load), dpkg is told not to unpack them
#   (02-aikore-no-gl); Xvnc then runs without GLX and Firefox draws in
#   software as it would anyway. A GUI app that needs OpenGL on the display:
#   rm that file, apt-get install --reinstall libgl1-mesa-dri libllvm15 libz3-4.
ARG PERSISTENT=1
RUN set -eux; \
    if [ "${PERSISTENT}" != 1 ]; then exit 0; fi; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
    printf '%s\n' 'path-exclude /usr/lib/*/dri/*' 'path-exclude /usr/lib/*/libLLVM-*' 'path-exclude /usr/lib/*/libz3.so*' \
        > /etc/dpkg/dpkg.cfg.d/02-aikore-no-gl; \
    touch /tmp/.layer-start; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        tigervnc-standalone-server websockify firefox-esr matchbox-window-manager dbus-x11; \
    mkdir /tmp/novnc; chown _apt /tmp/novnc; cd /tmp/novnc; \
    apt-get download novnc; \
    dpkg-deb -x novnc_*.deb root; \
    test -f root/usr/share/novnc/vnc.html; \
    cp -a root/usr/share/novnc /usr/share/novnc; \
    install -D -m 0644 root/usr/share/doc/novnc/copyright /usr/share/doc/novnc/copyright; \
    cd /; rm -rf /tmp/novnc; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log \
           /var/cache/debconf/*-old /var/lib/dpkg/*-old /usr/sbin/policy-rc.d; \
    find /usr -xdev -name __pycache__ -type d -prune -exec rm -rf {} +; \
    find /usr -xdev -type f -cnewer /tmp/.layer-start -size +8k -print0 | xargs -0r hardlink -q -t; \
    rm /tmp/.layer-start

COPY --from=build /out/aikore /usr/local/bin/aikore
COPY --from=build /src/units/ /etc/aikore/units/
COPY --from=build /src/nginx/ /etc/aikore/nginx/
# blueprints/ may be absent from the context: the build stages create it.
COPY --from=build /src/blueprints/ /opt/aikore/blueprints/
COPY --from=web /web/ /opt/aikore/web/

ENV AIKORE_DATA_DIR=/config \
    AIKORE_UNITS_DIR=/etc/aikore/units \
    AIKORE_BLUEPRINTS_DIR=/opt/aikore/blueprints \
    AIKORE_WEB_DIR=/opt/aikore/web \
    AIKORE_PORT=9000 \
    AIKORE_BIND=0.0.0.0 \
    AIKORE_APPS_PORT=9100 \
    PUID=${PUID} \
    PGID=${PGID} \
    TZ=Etc/UTC

# 9000: NGINX, the dashboard and API. 9100: NGINX, the apps origin
# (/app/<name>/, /comfyui/, /vnc/<name>/), another origin so an app's pages
# cannot act on the dashboard (docs/security.md). 19001-19999: instance ports
# (AIKORE_PORT_RANGE), published only for direct access to an instance.
EXPOSE 9000 9100 19001-19999
VOLUME /config
WORKDIR /config

# Through NGINX, so an unhealthy container means the user cannot reach it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD curl -fsS --max-time 4 "http://127.0.0.1:${AIKORE_PORT:-9000}/healthz" || exit 1

# aikore's ordered shutdown (AIKORE_SHUTDOWN_TIMEOUT, 30s by default) starts
# on SIGTERM; give `docker stop` more than that (-t 40, stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/aikore", "serve"]

LABEL org.opencontainers.image.title="AiKore" \
      org.opencontainers.image.description="AI web-UI supervisor: one Rust binary as PID 1, NGINX in front" \
      io.aikore.persistent="${PERSISTENT}"
