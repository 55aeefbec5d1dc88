# shellcheck shell=bash
# Builds the Kubernetes 1.20.2 server binaries from Debian's `kubernetes` source package
# with Debian's Go, and the pause image, caching both outside the repo keyed by version so
# a second `up` rebuilds nothing.

K8S_SRC_VERSION="1.20.5+really1.20.2"
K8S_VERSION="1.20.2"
# Bump the suffix whenever the build recipe (patches, flags) changes: it keys the cache.
K8S_BUILD_KEY="${K8S_VERSION}-go1.19-reflect2-1.0.2-r1"
K8S_BIN_DIR="$CACHE_DIR/k8s-$K8S_BUILD_KEY/bin"
K8S_COMPONENTS=(kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy)
PAUSE_IMAGE="k8s.gcr.io/pause:3.2"
PAUSE_TAR="$CACHE_DIR/k8s-$K8S_BUILD_KEY/pause-3.2.tar"

k8s_binaries_cached() {
  local c
  for c in "${K8S_COMPONENTS[@]}"; do
    [ -x "$K8S_BIN_DIR/$c" ] || return 1
  done
  [ -s "$PAUSE_TAR" ]
}

# build_k8s: builds into a scratch tree, then moves the results into the cache only when
# every binary came out, so an interrupted build never leaves a half-filled cache.
build_k8s() {
  if k8s_binaries_cached; then
    log "Kubernetes $K8S_VERSION binaries cached in $K8S_BIN_DIR"
    return 0
  fi
  local work="$CACHE_DIR/build-$K8S_BUILD_KEY"
  local src="$CACHE_DIR/src"
  rm -rf "$work"
  mkdir -p "$work" "$src"
  if [ ! -s "$src/kubernetes_${K8S_SRC_VERSION}.orig.tar.gz" ]; then
    log "downloading Debian source package kubernetes ($K8S_SRC_VERSION)"
    (cd "$src" && apt-get source --download-only "kubernetes=${K8S_SRC_VERSION}-1.1+deb12u1" >"$work/download.log" 2>&1 ||
      apt-get source --download-only kubernetes >>"$work/download.log" 2>&1) ||
      die "cannot download the kubernetes source package (see $work/download.log); are deb-src lines enabled?"
  fi
  log "unpacking Kubernetes $K8S_VERSION source"
  tar -xzf "$src/kubernetes_${K8S_SRC_VERSION}.orig.tar.gz" -C "$work"
  local tree="$work/kubernetes-$K8S_VERSION"
  [ -d "$tree" ] || die "unexpected layout of the kubernetes source tarball in $work"

  # Kubernetes 1.20 vendors reflect2 1.0.1, which crashes kube-apiserver on Go >= 1.18 at
  # the first custom-resource write; Debian ships the fixed 1.0.2.
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -d "$r2" ] || die "missing $r2 (package golang-github-modern-go-reflect2-dev)"
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
  find "$r2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
    -exec cp {} "$tree/vendor/github.com/modern-go/reflect2/" \;

  mkdir -p "$tree/.go/src/k8s.io" "$work/home"
  ln -s ../../.. "$tree/.go/src/k8s.io/kubernetes"
  local what="" c
  for c in "${K8S_COMPONENTS[@]}"; do what="$what cmd/$c"; done
  log "building$what with Go 1.19 (about 5 minutes on 2 cores; log: $work/build.log)"
  (
    cd "$tree" &&
      GOPATH="$tree/.go" PATH="/usr/lib/go-1.19/bin:$PATH" CGO_ENABLED=0 HOME="$work/home" \
        GOFLAGS=-mod=vendor GO111MODULE=off make WHAT="${what# }"
  ) >"$work/build.log" 2>&1 &
  local pid=$! start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    local done_n=0
    for c in "${K8S_COMPONENTS[@]}"; do [ -x "$tree/_output/bin/$c" ] && done_n=$((done_n + 1)); done
    progress "building Kubernetes: $((SECONDS - start))s, $done_n of ${#K8S_COMPONENTS[@]} binaries done"
    sleep 5
  done
  wait "$pid" || { progress_done; tail -20 "$work/build.log" >&2; die "Kubernetes build failed (log: $work/build.log)"; }
  progress_done

  log "building the pause image"
  gcc -static -O2 -DVERSION=3.2 -o "$work/pause" "$tree/build/pause/linux/pause.c" ||
    die "cannot compile pause.c"
  build_pause_image "$work"

  mkdir -p "$K8S_BIN_DIR.tmp"
  for c in "${K8S_COMPONENTS[@]}"; do
    cp "$tree/_output/bin/$c" "$K8S_BIN_DIR.tmp/$c" || die "build produced no $c"
  done
  rm -rf "$K8S_BIN_DIR"
  mv "$K8S_BIN_DIR.tmp" "$K8S_BIN_DIR"
  rm -rf "$work"
  log "cached Kubernetes $K8S_VERSION binaries in $K8S_BIN_DIR"
}

# build_pause_image: a FROM-scratch image holding the static pause binary, saved as a
# docker-archive that every node imports (no registry is reachable).
build_pause_image() {
  local work=$1
  mkdir -p "$work/pause-ctx"
  cp "$work/pause" "$work/pause-ctx/pause"
  printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' >"$work/pause-ctx/Containerfile"
  podman build -q -t "$PAUSE_IMAGE" -f "$work/pause-ctx/Containerfile" "$work/pause-ctx" >"$work/pause-build.log" 2>&1 ||
    die "podman build of the pause image failed (log: $work/pause-build.log)"
  mkdir -p "$(dirname "$PAUSE_TAR")"
  rm -f "$PAUSE_TAR.tmp"
  podman save --format docker-archive -o "$PAUSE_TAR.tmp" "$PAUSE_IMAGE" >/dev/null 2>&1 ||
    die "podman save of the pause image failed"
  mv "$PAUSE_TAR.tmp" "$PAUSE_TAR"
}

# The lab's test image: Debian's static busybox in a FROM-scratch image, so tests have a
# shell, sleep and echo on every node without any registry.
BUSYBOX_IMAGE="localhost/edgefleet-lab/busybox:1"

# busybox_tar: the cached image's path, keyed by the installed busybox-static version. A
# function, not a variable set at load time: before `up` has installed the package there
# is no version to read, and every lab command (help included) must still work.
busybox_tar() {
  local version
  version=$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null) ||
    die "busybox-static is not installed (e2e/lab up installs it)"
  printf '%s/images/busybox-%s.tar\n' "$CACHE_DIR" "$(printf '%s' "$version" | tr -c 'A-Za-z0-9.+-' _)"
}

build_busybox_image() {
  local tar
  tar=$(busybox_tar)
  [ -s "$tar" ] && return 0
  local ctx
  ctx=$(mktemp -d)
  mkdir -p "$ctx/bin" "$(dirname "$tar")"
  cp /bin/busybox "$ctx/bin/busybox"
  local applet
  for applet in sh echo sleep cat ls ps kill date true false env id hostname; do
    ln -s busybox "$ctx/bin/$applet"
  done
  printf 'FROM scratch\nCOPY bin /bin\nENV PATH=/bin\nCMD ["/bin/sh"]\n' >"$ctx/Containerfile"
  podman build -q -t "$BUSYBOX_IMAGE" -f "$ctx/Containerfile" "$ctx" >"$ctx/build.log" 2>&1 ||
    die "podman build of the busybox image failed: $(tail -3 "$ctx/build.log")"
  podman save --format docker-archive -o "$tar.tmp" "$BUSYBOX_IMAGE" >/dev/null 2>&1 ||
    die "podman save of the busybox image failed"
  mv "$tar.tmp" "$tar"
  rm -rf "$ctx"
}
