# For `FROM_SOURCE=1 tests/container/run.sh`: a Rust build image made from the
# host's own toolchain (no registry to pull rust:1-bookworm from). run.sh
# builds it from a context holding the toolchain under toolchain/ and passes
# it to the real Dockerfile as RUST_IMAGE. Crates come from the host's cargo
# cache (registry index + .crate files, under cargo/), offline: CI's network
# may not reach crates.io (or only through a proxy with its own CA).
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates; \
    apt-get clean; rm -rf /var/lib/apt/lists/*
COPY toolchain/ /usr/local/rust/
COPY cargo/ /usr/local/cargo/
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:$PATH \
    CARGO_HOME=/usr/local/cargo \
    CARGO_NET_OFFLINE=true
RUN cargo --version && rustc --version
