# shellcheck shell=bash
# Paths, the address plan and small helpers shared by every part of the lab.

# Persistent state ("disks"): etcd data, certificates, each node's root and manifests, logs.
LAB_DIR=${EDGEFLEET_LAB_DIR:-/var/lib/edgefleet-lab}
# Volatile state ("tmpfs"): sockets, pid files, containerd/runc state. A device reboot wipes
# its part of it, as a power cycle wipes /run.
RUN_DIR=${EDGEFLEET_LAB_RUN_DIR:-/run/edgefleet-lab}
# Build caches outside the repo, keyed by version.
CACHE_DIR=${EDGEFLEET_CACHE_DIR:-$HOME/.cache/edgefleet}
LOG_DIR="$LAB_DIR/logs"
# The least free disk `up` starts with: the lab's kubelets evict pods and delete images
# when less than EVICTION_FREE is left (lib/node.sh), which shows much later as modules
# that never start. The rest is room for what the lab writes: images unpacked on every
# node, etcd, logs.
MIN_FREE_MIB=${EDGEFLEET_LAB_MIN_FREE_MIB:-2048}
# What the kubelets keep free, an absolute figure: a percentage of a large shared disk
# would be gigabytes the lab never uses.
EVICTION_FREE=512Mi
PKI_DIR="$LAB_DIR/pki"
KUBE_DIR="$LAB_DIR/kubeconfig"
STATE_FILE="$LAB_DIR/lab.env"

# Address plan. Every address lives inside the lab's own network namespaces; none has a
# route anywhere else. The host reaches the apiserver only through 127.0.0.1.
LAB_NET_PREFIX="10.77.0"
LAB_NET_CIDR="$LAB_NET_PREFIX.0/24"
CP_IP="$LAB_NET_PREFIX.1"
CLOUD_IP="$LAB_NET_PREFIX.2"
# Where a test serves an admission webhook on the host (127.0.0.1), for the apiserver to call
# at the same address in its namespace (start_webhook_forwarder).
WEBHOOK_PORT=18190
# The lab's apiserver asks the device authorizer only about devices whose certificate also
# carries this group (write_authorization_config): those of the tests and benches that
# serve it. Every other device is RBAC's alone, as on a cluster without the authorizer.
LAB_AUTHORIZER_GROUP=edgefleet-lab:device-authorizer
SERVICE_CIDR="10.77.1.0/24"
SERVICE_IP="10.77.1.1"
API_PORT=6443
HOST_API_PORT=${EDGEFLEET_LAB_API_PORT:-6443}
CP_NS="efl-cp"
CLOUD_NODE="cloud-1"
MAX_DEVICES=200

# Labels a lab node carries; the product's own label is edgefleet.io/device=true.
DEVICE_LABEL="edgefleet.io/device=true"
CLOUD_LABEL="edgefleet.io/role=cloud"
CLOUD_TAINT="edgefleet.io/role=cloud:NoSchedule"

log() { printf 'lab: %s\n' "$*" >&2; }
die() {
  [ -n "${PROGRESS_ACTIVE:-}" ] && printf '\n' >&2
  printf 'lab: error: %s\n' "$*" >&2
  exit 1
}
# progress: one line rewritten in place on a terminal, plain lines (every 10th) elsewhere.
progress() {
  PROGRESS_ACTIVE=1
  if [ -t 2 ]; then
    printf '\r\033[Klab: %s' "$*" >&2
  else
    PROGRESS_N=$(((${PROGRESS_N:-0} + 1) % 10))
    [ "$PROGRESS_N" = 1 ] && printf 'lab: %s\n' "$*" >&2
  fi
  return 0
}
progress_done() {
  [ -n "${PROGRESS_ACTIVE:-}" ] && [ -t 2 ] && printf '\n' >&2
  PROGRESS_ACTIVE=
  PROGRESS_N=0
}

# image_env COMPONENT: what COMPONENT's image sets in its binary's environment (the ENV line
# of COMPONENT/Containerfile, as NAME=VALUE words), so that a bench that runs the binary on
# the host runs it as the cluster does. Read it with `read -ra`.
image_env() { sed -n 's/^ENV //p' "$1/Containerfile"; }

# The Cargo profile the images' binaries are built with (Cargo.toml's [profile.image]).
IMAGE_PROFILE=image

# build_bin PROFILE PACKAGE BIN: builds PACKAGE's binary BIN for the host with Cargo profile
# PROFILE and prints its path (under CARGO_TARGET_DIR when set).
build_bin() {
  # `|| return`: a caller's `$(...)` does not stop on a failed command by itself.
  cargo build -q --locked --profile "$1" -p "$2" --bin "$3" >&2 || return
  echo "${CARGO_TARGET_DIR:-target}/$1/$3"
}

# build_as_shipped PACKAGE: builds PACKAGE's binary the way its image is built (the images'
# profile; dynamically linked) and prints its path, so that a bench measures the code the
# cluster runs.
build_as_shipped() { build_bin "$IMAGE_PROFILE" "$1" "$1"; }

# build_tool BIN: builds one of e2e's own tools (the load generators, the hub bench) with
# the release profile, which links in seconds where the images' takes minutes, and prints
# its path.
build_tool() { build_bin release edgefleet-e2e "$1"; }

# wait_for DESCRIPTION TIMEOUT_S CMD...: polls CMD until it succeeds, showing progress.
wait_for() {
  local what=$1 timeout=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - start >= timeout)); then
      progress_done
      return 1
    fi
    progress "waiting for $what ($((SECONDS - start))s)"
    sleep 1
  done
  progress_done
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pidfile_alive() { [ -s "$1" ] && pid_alive "$(cat "$1")"; }

# start_daemon NAME NETNS LOGFILE PIDFILE CMD...: starts CMD in its own session inside the
# network namespace (nsenter --net, not `ip netns exec`, which remounts /sys and hides the
# cgroup mounts kubelet and containerd need). No-op when it already runs.
start_daemon() {
  local name=$1 ns=$2 logf=$3 pidf=$4
  shift 4
  if pidfile_alive "$pidf"; then
    return 0
  fi
  mkdir -p "$(dirname "$logf")" "$(dirname "$pidf")"
  printf -- '--- %s: starting %s\n' "$(date -Is)" "$name" >>"$logf"
  setsid nsenter --net="/var/run/netns/$ns" "$@" >>"$logf" 2>&1 </dev/null &
  echo $! >"$pidf"
}

# stop_pidfile PIDFILE: TERM, then KILL after two seconds.
stop_pidfile() {
  local pidf=$1 pid i
  [ -s "$pidf" ] || return 0
  pid=$(cat "$pidf")
  if pid_alive "$pid"; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 20); do
      pid_alive "$pid" || break
      sleep 0.1
    done
    pid_alive "$pid" && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$pidf"
}

# descendants PID...: every process below the given ones.
descendants() {
  local all
  all=$(ps -e -o pid=,ppid=)
  local frontier=("$@") next p
  while [ ${#frontier[@]} -gt 0 ]; do
    next=()
    for p in "${frontier[@]}"; do
      while read -r c; do
        [ -n "$c" ] && { echo "$c"; next+=("$c"); }
      done < <(awk -v p="$p" '$2 == p {print $1}' <<<"$all")
    done
    frontier=("${next[@]}")
  done
}

# unmount_under DIR: lazily unmounts everything mounted below DIR, deepest first.
unmount_under() {
  local dir=$1 m
  [ -e "$dir" ] || return 0
  findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

require_root() {
  [ "$(id -u)" = 0 ] || die "the lab needs root (network namespaces, mounts, containerd)"
}

lab_is_up() { [ -s "$STATE_FILE" ]; }

# lab_devices: the device names of the running lab, from its state file.
lab_devices() {
  local n i
  n=$(lab_device_count)
  for ((i = 1; i <= n; i++)); do echo "edge-$i"; done
}
lab_device_count() {
  # shellcheck disable=SC1090
  (. "$STATE_FILE" && echo "${DEVICES:-0}")
}
# lab_setting NAME: a setting from the running lab's state file, empty if it has none.
lab_setting() {
  # shellcheck disable=SC1090
  (. "$STATE_FILE" && echo "${!1:-}")
}
# apiserver_memory_settings: the apiserver's GOGC and GOMEMLIMIT, as `e2e/lab up` set them.
apiserver_memory_settings() {
  echo "GOGC=$(lab_setting APISERVER_GOGC | grep . || echo '100 (default)')" \
    "GOMEMLIMIT=$(lab_setting APISERVER_MEMORY_LIMIT | grep . || echo 'none (default)')"
}
lab_nodes() {
  echo "$CLOUD_NODE"
  lab_devices
}

# node_ip NODE: the node's address on the lab bridge.
node_ip() {
  case $1 in
    "$CLOUD_NODE") echo "$CLOUD_IP" ;;
    edge-*) echo "$LAB_NET_PREFIX.$((10 + ${1#edge-}))" ;;
  esac
}
node_ns() { echo "efl-$1"; }
node_dir() { echo "$LAB_DIR/nodes/$1"; }
node_run() { echo "$RUN_DIR/nodes/$1"; }
node_sock() { echo "$RUN_DIR/nodes/$1/containerd.sock"; }

# check_node NODE: dies with the list of valid names when NODE is not part of the lab.
check_node() {
  lab_is_up || die "the lab is not up (run: e2e/lab up)"
  local n
  for n in $(lab_nodes); do
    [ "$n" = "$1" ] && return 0
  done
  die "unknown device '$1'; the lab has: $(lab_nodes | tr '\n' ' ')"
}
check_device() {
  [ "$1" = "$CLOUD_NODE" ] && die "'$1' is the cloud node, not an edge device"
  check_node "$1"
}

# kubectl_admin ARGS...: the lab's own kubectl (built with the server, lib/build.sh), or
# the one on PATH before the build has run.
kubectl_admin() {
  local k="$K8S_BIN_DIR/kubectl"
  [ -x "$k" ] || k=kubectl
  "$k" --kubeconfig "$KUBE_DIR/admin.kubeconfig" "$@"
}

# require_free_disk DIR...: dies, saying where and how much, unless each DIR's filesystem
# has MIN_FREE_MIB free.
require_free_disk() {
  local dir free mount
  for dir in "$@"; do
    mkdir -p "$dir"
    free=$(df --output=avail -BM "$dir" | tail -1 | tr -dc '0-9')
    mount=$(df --output=target "$dir" | tail -1)
    ((free >= MIN_FREE_MIB)) ||
      die "only $free MiB free on $mount ($dir); the lab needs $MIN_FREE_MIB MiB, or its kubelets evict pods and delete images (free some space, or set EDGEFLEET_LAB_MIN_FREE_MIB)"
  done
}
