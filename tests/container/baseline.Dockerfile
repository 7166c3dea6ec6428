# Reference point for tests/container/run.sh: the same base image plus
# Debian's NGINX and nothing else, started the usual way (shell + nginx).
# Its size and cold start are printed beside AiKore's.
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/sbin/policy-rc.d /etc/nginx/sites-enabled/default
COPY baseline-nginx.conf /etc/nginx/baseline.conf
ENV PORT=9000
STOPSIGNAL SIGQUIT
CMD ["/bin/sh", "-c", "sed -i \"s/@PORT@/$PORT/\" /etc/nginx/baseline.conf && exec nginx -c /etc/nginx/baseline.conf"]
