# shellcheck shell=bash
# The base image of the container test (tests/container/run.sh) and of the
# image benchmark (benches/image.sh): a minimal bookworm debootstrapped from
# the apt mirror this machine already uses, made like the official
# debian:bookworm-slim (no docs, man pages or locales from later installs, no
# apt caches), so no registry is needed. Source it; don't run it.

# The mirror apt uses (not the security one), else deb.debian.org.
mirror_from_apt() {
  local m
  m=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '/^deb / && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# base_rootfs ROOTFS MIRROR LOG: debootstraps into ROOTFS (which must not
# exist) and slims it. Returns non-zero when debootstrap fails (its output is
# in LOG).
base_rootfs() {
  debootstrap --variant=minbase bookworm "$1" "$2" >"$3" 2>&1 || return 1
  slim_rootfs "$1"
}

# slim_rootfs ROOTFS: what makes a debootstrapped tree like bookworm-slim.
slim_rootfs() {
  local rootfs=$1 f
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  # The host's apt sources (same mirrors, snapshot pins included) when they are bookworm's.
  if grep -qs bookworm /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; then
    rm -f "$rootfs/etc/apt/sources.list"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] && cp "$f" "$rootfs$f"
    done
  fi
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  rm -rf "$rootfs"/usr/share/{man,info,groff,lintian,linda,locale}/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old
}

# base_image ROOTFS MIRROR LOG TAG PODMAN...: base_rootfs, then imports it
# with the given podman command (private store flags included) as TAG and
# removes ROOTFS.
base_image() {
  local rootfs=$1 mirror=$2 log=$3 tag=$4
  shift 4
  # The mirror is the network: one failed fetch gets one more try.
  if ! base_rootfs "$rootfs" "$mirror" "$log"; then
    tail -5 "$log"; echo "debootstrap failed; trying once more" >&2
    rm -rf "$rootfs"
    base_rootfs "$rootfs" "$mirror" "$log" || { tail -20 "$log"; return 1; }
  fi
  tar -C "$rootfs" --numeric-owner -cf - . | "$@" import --quiet --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null || return 1
  rm -rf "$rootfs"
}
