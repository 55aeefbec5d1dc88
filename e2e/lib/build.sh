# shellcheck shell=bash
# Builds the lab's Kubernetes, etcd and containerd from the Go module proxy with the
# installed Go, and the pause image, caching all of it outside the repo keyed by version
# and recipe so a second `up` rebuilds nothing.
#
# Each program is built from a small wrapper module generated in a scratch directory under
# $CACHE_DIR (never in the repo) that requires the released module and names the commands
# as `tool`s. Kubernetes' own go.mod points its k8s.io/* staging modules at
# ./staging/src/..., which Go ignores in a dependency, so the wrapper replaces each of them
# with its published v0.X.Y. Downloaded modules and compiled packages stay in
# $CACHE_DIR/go-mod and $CACHE_DIR/go-build, so a rebuild downloads nothing.

K8S_VERSION="1.36.3"
# Kubernetes 1.36 wants etcd >= 3.5.24 (kubeadm's MinExternalEtcdVersion) and ships
# 3.6.8; Debian's 3.4 is too old. The newest 3.6 patch the proxy serves.
ETCD_VERSION="3.6.16"
# containerd's RELEASES.md recommends 2.3.x or 2.2.x for Kubernetes 1.36.
CONTAINERD_VERSION="2.3.7"
# The tag in the Kubernetes tree's build/pause/Makefile; the build checks they agree.
PAUSE_VERSION="3.10.2"
# The Go release series the recipe is made for (GOTOOLCHAIN=local: Go never downloads
# another toolchain).
GO_SERIES="1.26"
# Bump the suffix whenever the build recipe (tags, flags, patches) changes: it keys the cache.
K8S_BUILD_KEY="${K8S_VERSION}-etcd${ETCD_VERSION}-containerd${CONTAINERD_VERSION}-go${GO_SERIES}-r1"
K8S_CACHE="$CACHE_DIR/k8s-$K8S_BUILD_KEY"
K8S_BIN_DIR="$K8S_CACHE/bin"
# The lab runs no kube-proxy (no Service traffic crosses nodes); kubectl is the lab's own
# client, matching the server.
K8S_COMPONENTS=(kube-apiserver kubelet kube-controller-manager kube-scheduler kubectl)
CONTAINERD_COMPONENTS=(containerd ctr containerd-shim-runc-v2)
LAB_BINARIES=("${K8S_COMPONENTS[@]}" etcd "${CONTAINERD_COMPONENTS[@]}")
# A local name: there is no registry, every node imports the image from PAUSE_TAR.
PAUSE_IMAGE="localhost/edgefleet-lab/pause:$PAUSE_VERSION"
PAUSE_TAR="$K8S_CACHE/pause-$PAUSE_VERSION.tar"
GO_MOD_CACHE="$CACHE_DIR/go-mod"
GO_BUILD_CACHE="$CACHE_DIR/go-build"

k8s_binaries_cached() {
  local c
  for c in "${LAB_BINARIES[@]}"; do
    [ -x "$K8S_BIN_DIR/$c" ] || return 1
  done
  [ -s "$PAUSE_TAR" ]
}

# lab_go ARGS...: the Go command with the lab's caches and settings, at the lowest CPU
# priority so a build does not slow down other work on the machine.
lab_go() {
  nice -n 19 env GOMODCACHE="$GO_MOD_CACHE" GOCACHE="$GO_BUILD_CACHE" GOTOOLCHAIN=local \
    GOWORK=off GO111MODULE=on GOFLAGS="-modcacherw -trimpath -buildvcs=false" CGO_ENABLED=0 \
    go "$@"
}

# build_step WHAT LOG CMD...: runs CMD in the background with its output appended to LOG,
# showing the elapsed time; dies naming WHAT when it fails.
build_step() {
  local what=$1 logf=$2 start=$SECONDS shown=-1 pid
  shift 2
  printf -- '--- %s: %s\n' "$(date -Is)" "$what" >>"$logf"
  "$@" >>"$logf" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS != shown)); then
      shown=$SECONDS
      progress "$what: $((SECONDS - start))s (all steps: $((SECONDS - BUILD_START))s)"
    fi
    sleep 0.2
  done
  if ! wait "$pid"; then
    progress_done
    tail -20 "$logf" >&2
    die "$what failed after $((SECONDS - start))s (log: $logf)"
  fi
  progress_done
  printf -- '--- %s: %s took %ss\n' "$(date -Is)" "$what" "$((SECONDS - start))" >>"$logf"
  log "$what: $((SECONDS - start))s"
}

# wrapper_module DIR MODULE VERSION TOOL_PACKAGES...: a go.mod that requires MODULE and
# lists the commands to build as tools; replace lines are appended by the caller.
wrapper_module() {
  local dir=$1 module=$2 version=$3 p
  shift 3
  mkdir -p "$dir"
  {
    echo "module edgefleet-lab/build/$(basename "$dir")"
    echo
    echo "go $GO_SERIES.0"
    echo
    echo "require $module v$version"
    echo
    echo "tool ("
    for p in "$@"; do echo "	$p"; done
    echo ")"
  } >"$dir/go.mod"
}

# staging_replaces GOMOD VERSION: a replace line for every module Kubernetes' go.mod takes
# from its own staging tree, pinned to the published v0.MINOR.PATCH of that release.
staging_replaces() {
  local gomod=$1 version=$2
  echo "replace ("
  awk -v v="v0.${version#*.}" '$2 == "=>" && $3 ~ /^\.\/staging\/src\// {printf "\t%s => %s %s\n", $1, $1, v}' "$gomod"
  echo ")"
}

# download_k8s_source JSON: the k8s.io/kubernetes module itself (its go.mod for the staging
# list, its tree for pause.c), described in JSON (`go mod download -json`).
download_k8s_source() {
  local rc=0
  (cd "$BUILD_WORK" && lab_go mod download -json "k8s.io/kubernetes@v$K8S_VERSION") >"$1" || rc=$?
  # On failure Go reports the reason inside the JSON: show it in the log.
  [ "$rc" = 0 ] || cat "$1"
  return "$rc"
}

# build_k8s: builds into a scratch tree, then moves the results into the cache only when
# every binary and the pause image came out, so an interrupted build never leaves a
# half-filled cache.
build_k8s() {
  if k8s_binaries_cached; then
    log "Kubernetes $K8S_VERSION, etcd $ETCD_VERSION and containerd $CONTAINERD_VERSION cached in $K8S_BIN_DIR"
    return 0
  fi
  command -v go >/dev/null || die "no Go toolchain on PATH (the lab builds with Go $GO_SERIES)"
  local gov
  gov=$(GOTOOLCHAIN=local go env GOVERSION 2>/dev/null)
  case $gov in
    "go$GO_SERIES" | "go$GO_SERIES".*) ;;
    *) die "the lab's build needs Go $GO_SERIES.x on PATH, found '${gov:-none}'" ;;
  esac
  BUILD_WORK="$CACHE_DIR/build-$K8S_BUILD_KEY"
  BUILD_LOG="$BUILD_WORK/build.log"
  BUILD_START=$SECONDS
  local out="$BUILD_WORK/out" c
  rm -rf "$BUILD_WORK"
  mkdir -p "$out/bin" "$GO_MOD_CACHE" "$GO_BUILD_CACHE"
  log "building Kubernetes $K8S_VERSION, etcd $ETCD_VERSION and containerd $CONTAINERD_VERSION with $gov (log: $BUILD_LOG)"

  # Downloads: everything comes from the module proxy here; the builds below run offline.
  build_step "download of k8s.io/kubernetes v$K8S_VERSION" "$BUILD_LOG" \
    download_k8s_source "$BUILD_WORK/kubernetes.json"
  local k8s_src k8s_gomod
  k8s_src=$(jq -r '.Dir // empty' "$BUILD_WORK/kubernetes.json")
  k8s_gomod=$(jq -r '.GoMod // empty' "$BUILD_WORK/kubernetes.json")
  [ -d "$k8s_src" ] && [ -s "$k8s_gomod" ] ||
    die "download of k8s.io/kubernetes v$K8S_VERSION gave no source tree (log: $BUILD_LOG)"
  local k8s_mod="$BUILD_WORK/kubernetes" pkgs=()
  for c in "${K8S_COMPONENTS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  wrapper_module "$k8s_mod" k8s.io/kubernetes "$K8S_VERSION" "${pkgs[@]}"
  staging_replaces "$k8s_gomod" "$K8S_VERSION" >>"$k8s_mod/go.mod"
  grep -q 'k8s.io/api => k8s.io/api v0\.' "$k8s_mod/go.mod" ||
    die "found no staging modules in $k8s_gomod (has Kubernetes' go.mod changed its layout?)"
  wrapper_module "$BUILD_WORK/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3
  pkgs=()
  for c in "${CONTAINERD_COMPONENTS[@]}"; do pkgs+=("github.com/containerd/containerd/v2/cmd/$c"); done
  wrapper_module "$BUILD_WORK/containerd" github.com/containerd/containerd/v2 "$CONTAINERD_VERSION" "${pkgs[@]}"
  local m
  for m in kubernetes etcd containerd; do
    build_step "download of the modules $m needs" "$BUILD_LOG" lab_go_in "$BUILD_WORK/$m" mod tidy
  done

  # Version stamps, as Kubernetes' hack/lib/version.sh and containerd's Makefile set them,
  # so `--version`, the apiserver's /version and clients see the real release. The build
  # date is the release's date from the proxy, so the binaries do not depend on the day.
  local date ldflags=() minor=${K8S_VERSION#*.}
  date=$(jq -r '.Time // empty' "$GO_MOD_CACHE/cache/download/k8s.io/kubernetes/@v/v$K8S_VERSION.info" 2>/dev/null)
  for c in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=("-X '$c.gitVersion=v$K8S_VERSION'" "-X '$c.gitMajor=${K8S_VERSION%%.*}'"
      "-X '$c.gitMinor=${minor%%.*}'" "-X '$c.gitTreeState=clean'" "-X '$c.gitCommit='"
      "-X '$c.buildDate=${date:-1970-01-01T00:00:00Z}'")
  done
  for c in "${K8S_COMPONENTS[@]}"; do
    build_step "build of $c" "$BUILD_LOG" lab_go_build "$k8s_mod" -o "$out/bin/$c" \
      -tags=selinux,notest,grpcnotrace -ldflags="-s -w ${ldflags[*]}" "k8s.io/kubernetes/cmd/$c"
  done
  build_step "build of etcd" "$BUILD_LOG" lab_go_build "$BUILD_WORK/etcd" -o "$out/bin/etcd" \
    -ldflags="-s -w" go.etcd.io/etcd/server/v3
  # CGO off leaves out the btrfs snapshotter (it needs cgo); the lab uses overlayfs.
  local cv="-X github.com/containerd/containerd/v2/version.Version=v$CONTAINERD_VERSION"
  for c in containerd ctr; do
    build_step "build of $c" "$BUILD_LOG" lab_go_build "$BUILD_WORK/containerd" -o "$out/bin/$c" \
      -tags="urfave_cli_no_docs osusergo netgo static_build" -ldflags="-s -w $cv" \
      "github.com/containerd/containerd/v2/cmd/$c"
  done
  build_step "build of containerd-shim-runc-v2" "$BUILD_LOG" lab_go_build "$BUILD_WORK/containerd" \
    -o "$out/bin/containerd-shim-runc-v2" \
    -tags="urfave_cli_no_docs osusergo netgo static_build no_grpc" -ldflags="-s -w $cv" \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2

  local tag
  tag=$(awk '$1 == "TAG" && $2 == "?=" {print $3}' "$k8s_src/build/pause/Makefile")
  [ "$tag" = "$PAUSE_VERSION" ] ||
    die "Kubernetes $K8S_VERSION's pause is $tag, the lab expects $PAUSE_VERSION: update PAUSE_VERSION in e2e/lib/build.sh"
  build_step "build of pause" "$BUILD_LOG" nice -n 19 \
    gcc -static -Os -Wall -Werror -DVERSION="v$PAUSE_VERSION" -o "$BUILD_WORK/pause" \
    "$k8s_src/build/pause/linux/pause.c"
  build_pause_image "$BUILD_WORK" "$out/pause-$PAUSE_VERSION.tar"

  for c in "${LAB_BINARIES[@]}"; do
    [ -x "$out/bin/$c" ] || die "the build produced no $c (log: $BUILD_LOG)"
  done
  cp "$BUILD_LOG" "$out/build.log"
  rm -rf "$K8S_CACHE"
  mv "$out" "$K8S_CACHE"
  rm -rf "$BUILD_WORK"
  log "built and cached in $K8S_BIN_DIR in $((SECONDS - BUILD_START))s"
}

# lab_go_in DIR ARGS...: lab_go in the module directory DIR.
lab_go_in() {
  local dir=$1
  shift
  (cd "$dir" && lab_go "$@")
}

# lab_go_build DIR ARGS...: `go build` in DIR with the module proxy off: every module was
# downloaded in the download steps, so a build that would need one more fails instead.
lab_go_build() {
  local dir=$1
  shift
  (cd "$dir" && GOPROXY=off lab_go build "$@")
}

# build_pause_image WORK TAR: a FROM-scratch image holding the static pause binary, saved
# as a docker-archive that every node imports (no registry is reachable).
build_pause_image() {
  local work=$1 tar=$2
  mkdir -p "$work/pause-ctx"
  cp "$work/pause" "$work/pause-ctx/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$work/pause-ctx/Containerfile"
  podman build -q -t "$PAUSE_IMAGE" -f "$work/pause-ctx/Containerfile" "$work/pause-ctx" >"$work/pause-build.log" 2>&1 ||
    die "podman build of the pause image failed (log: $work/pause-build.log)"
  mkdir -p "$(dirname "$tar")"
  rm -f "$tar.tmp"
  podman save --format docker-archive -o "$tar.tmp" "$PAUSE_IMAGE" >/dev/null 2>&1 ||
    die "podman save of the pause image failed"
  mv "$tar.tmp" "$tar"
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
