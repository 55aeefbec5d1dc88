# shellcheck shell=bash
# Installs the Debian packages the lab needs, before anything is started, so a package that
# cannot be installed stops `up` with nothing half started.

# Kubernetes, etcd and containerd are built from the Go module proxy (lib/build.sh) with
# the installed Go, which is no Debian package; runc and the CNI plugins stay Debian's.
LAB_PACKAGES=(
  jq gcc libc6-dev runc containernetworking-plugins podman
  iproute2 iptables openssl socat curl util-linux procps busybox-static
)

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

apt_update_once() {
  [ -n "${APT_UPDATED:-}" ] && return 0
  log "apt-get update"
  apt-get update -q >"$CACHE_DIR/apt-update.log" 2>&1 || die "apt-get update failed (see $CACHE_DIR/apt-update.log)"
  APT_UPDATED=1
}

install_deps() {
  mkdir -p "$CACHE_DIR"
  local missing
  # EDGEFLEET_LAB_EXTRA_PACKAGES: more Debian packages a user wants on the lab machine.
  # shellcheck disable=SC2086
  missing=$(missing_packages "${LAB_PACKAGES[@]}" ${EDGEFLEET_LAB_EXTRA_PACKAGES:-})
  # The lab uses its own kubectl (built with the server); tests and users call kubectl
  # from PATH. Machines here ship a current one; elsewhere Debian's old client is a
  # fallback for simple calls.
  command -v kubectl >/dev/null || missing="$missing kubernetes-client"
  [ -z "$missing" ] && return 0
  apt_update_once
  log "installing Debian packages: $(echo "$missing" | tr '\n' ' ')"
  # shellcheck disable=SC2086
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >"$CACHE_DIR/apt-install.log" 2>&1; then
    local p bad=""
    for p in $missing; do
      apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]' || bad="$bad $p"
    done
    tail -5 "$CACHE_DIR/apt-install.log" >&2
    die "cannot install Debian packages:${bad:- $(echo "$missing" | tr '\n' ' ')} (full log: $CACHE_DIR/apt-install.log)"
  fi
}
