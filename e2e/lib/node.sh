# shellcheck shell=bash
# A lab node: its own network namespace, containerd and kubelet. edge-N are the devices;
# cloud-1 is the tainted node where edgefleet's controller runs.

write_containerd_config() {
  local node=$1 dir run
  dir=$(node_dir "$node")
  run=$(node_run "$node")
  mkdir -p "$dir/cni" "$dir/containerd" "$run"
  # Pods that are not hostNetwork (modules by default) get an address on a bridge inside
  # the node's own namespace, as k3s's flannel gives them on a real device: reachable from
  # their node only. Every node uses the same subnet, each in its own namespace; the IPAM
  # state lives in the node's volatile dir, so a reboot frees the addresses. The default
  # route through the bridge lets a pod reach its node's own address, where the device's
  # hub listens (the node's IP is what a module gets as EDGEFLEET_HUB_HOST).
  cat >"$dir/cni/10-lab-pods.conflist" <<JSON
{"cniVersion":"1.0.0","name":"lab-pods","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}],
 "dataDir":"$run/cni-ipam"}}]}
JSON
  # containerd 2's config format (version 3): the CRI plugin is split into
  # io.containerd.cri.v1.images (the sandbox image is pinned there) and
  # io.containerd.cri.v1.runtime.
  # NRI is off: every containerd on the host would create the same /var/run/nri/nri.sock.
  # restrict_oom_score_adj: the VM lacks CAP_SYS_RESOURCE, sandboxes fail without it.
  # SystemdCgroup=false: cgroups are hybrid v1 here; cgroupfs works, systemd does not.
  # runc's root and the netns mounts live in the node's volatile dir, so a reboot wipes them.
  cat >"$dir/containerd.toml" <<TOML
version = 3
root = "$dir/containerd"
state = "$run/containerd"

[grpc]
  address = "$(node_sock "$node")"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$dir/opt"

  [plugins.'io.containerd.nri.v1.nri']
    disable = true

  [plugins.'io.containerd.cri.v1.images']
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$PAUSE_IMAGE"

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "/usr/sbin/runc"
          Root = "$run/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "$dir/cni"
TOML
}

write_kubelet_config() {
  local node=$1 dir ip taints="[]" t=${CLOUD_TAINT#*=}
  dir=$(node_dir "$node")
  ip=$(node_ip "$node")
  # The cloud node's taint (KEY=VALUE:EFFECT), in the config: the flag is deprecated.
  [ "$node" = "$CLOUD_NODE" ] &&
    taints="[{key: \"${CLOUD_TAINT%%=*}\", value: \"${t%%:*}\", effect: \"${t#*:}\"}]"
  mkdir -p "$dir/manifests" "$dir/kubelet" "$dir/pod-logs"
  # Image GC is effectively off: imported images cannot be pulled again, no registry exists.
  # podLogsDir: each node keeps its pods' logs on its own disk. With the default
  # /var/log/pods shared by all kubelets, each removed the others' pod log directories.
  # failCgroupV1: false: cgroups are hybrid v1 here, and kubelet >= 1.35 refuses v1 by default.
  cat >"$dir/kubelet-config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://$(node_sock "$node")
podLogsDir: $dir/pod-logs
failCgroupV1: false
registerWithTaints: $taints
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
staticPodPath: $dir/manifests
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 10s
tlsCertFile: $PKI_DIR/kubelet-serving-$node.crt
tlsPrivateKeyFile: $PKI_DIR/kubelet-serving-$node.key
rotateCertificates: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $CA_CRT
authorization:
  mode: Webhook
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: $EVICTION_FREE
  imagefs.available: $EVICTION_FREE
YAML
}

# node_labels NODE: what the kubelet labels its own Node with. On a device that is the
# label the chart's bootstrap DaemonSet selects, which places the bootstrap pod and enrols
# nothing (a kubelet may set its own labels; see device_enrolment).
node_labels() {
  local node=$1
  if [ "$node" = "$CLOUD_NODE" ]; then
    echo "$CLOUD_LABEL"
  else
    echo "$DEVICE_LABEL"
  fi
}

# device_enrolment NODE: the EdgeDevice an administrator applies to enrol a lab device,
# with varied sample labels that tests and examples target.
device_enrolment() {
  local node=$1 i sites=(berlin munich) hw=(rpi4 jetson nuc) ch=(stable beta)
  i=$((${node#edge-} - 1))
  cat <<YAML
---
apiVersion: edgefleet.io/v1alpha1
kind: EdgeDevice
metadata:
  name: $node
  labels:
    site: ${sites[i % 2]}
    hardware: ${hw[i % 3]}
    channel: ${ch[i / 2 % 2]}
spec: {}
YAML
}

# The lab's containerd, ctr and shim are the ones it built (lib/build.sh), not whatever the
# host has on PATH: containerd finds its shim on PATH, so the build's directory goes first.
# ctr would print containerd's deprecation notice (cgroup v1) on every call.
lab_ctr() { CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1 "$K8S_BIN_DIR/ctr" "$@"; }

start_containerd() {
  local node=$1
  start_daemon "$node containerd" "$(node_ns "$node")" "$LOG_DIR/$node-containerd.log" \
    "$(node_run "$node")/containerd.pid" env PATH="$K8S_BIN_DIR:$PATH" \
    "$K8S_BIN_DIR/containerd" --config "$(node_dir "$node")/containerd.toml"
}

containerd_ready() { lab_ctr --address "$(node_sock "$1")" version >/dev/null 2>&1; }

# ensure_lab_images NODE: the pause image (kubelet needs it for every pod) and the lab's
# busybox test image, imported once; containerd's root is the node's disk.
ensure_lab_images() {
  local node=$1 image tar have busybox
  busybox=$(busybox_tar)
  have=$(lab_ctr --address "$(node_sock "$node")" -n k8s.io images ls -q)
  for image in "$PAUSE_IMAGE=$PAUSE_TAR" "$BUSYBOX_IMAGE=$busybox"; do
    tar=${image#*=}
    image=${image%%=*}
    grep -qx "$image" <<<"$have" && continue
    lab_ctr --address "$(node_sock "$node")" -n k8s.io images import "$tar" >/dev/null ||
      die "cannot import $image into $node"
  done
}

start_kubelet() {
  local node=$1 dir
  dir=$(node_dir "$node")
  start_daemon "$node kubelet" "$(node_ns "$node")" "$LOG_DIR/$node-kubelet.log" \
    "$(node_run "$node")/kubelet.pid" \
    "$K8S_BIN_DIR/kubelet" \
    --config="$dir/kubelet-config.yaml" \
    --kubeconfig="$dir/kubelet.kubeconfig" \
    --root-dir="$dir/kubelet" \
    --cert-dir="$dir/kubelet/pki" \
    --hostname-override="$node" \
    --node-ip="$(node_ip "$node")" \
    --node-labels="$(node_labels "$node")" \
    --v=1
}

# boot_node NODE: what a device does at power-on: containerd, then kubelet. The pause image
# stays imported across reboots (containerd's root is the device's disk).
boot_node() {
  local node=$1
  start_containerd "$node"
  wait_for "containerd on $node" 30 containerd_ready "$node" ||
    die "containerd on $node did not start (log: $LOG_DIR/$node-containerd.log)"
  ensure_lab_images "$node"
  start_kubelet "$node"
}

start_node() {
  local node=$1
  mkdir -p "$(node_dir "$node")" "$(node_run "$node")"
  ensure_node_pki "$node"
  ensure_node_net "$node"
  write_containerd_config "$node"
  write_kubelet_config "$node"
  boot_node "$node"
}

# node_pids NODE: every process of the node: all in its namespace (kubelet, containerd,
# shims, host-network containers) and everything below them.
node_pids() {
  local ns pids
  ns=$(node_ns "$1")
  ns_exists "$ns" || return 0
  pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
  [ -z "$pids" ] && return 0
  # shellcheck disable=SC2086
  { printf '%s\n' $pids; descendants $pids; } | sort -un
}

# power_off NODE: kills every process of the node at once, as a power cut does, then
# clears what a reboot clears: mounts and the volatile dir.
power_off() {
  local node=$1 pids i
  for i in 1 2 3 4 5; do
    pids=$(node_pids "$node")
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.2
  done
  [ -n "$(node_pids "$node")" ] && die "processes of $node survived the power cut: $(node_pids "$node" | tr '\n' ' ')"
  unmount_under "$(node_run "$node")"
  unmount_under "$(node_dir "$node")"
  rm -rf "$(node_run "$node")"
  mkdir -p "$(node_run "$node")"
}

reboot_node() {
  local node=$1
  log "rebooting $node ($(link_state "$node"))"
  power_off "$node"
  boot_node "$node"
  log "$node is booting: containerd and kubelet started"
}

stop_node() {
  local node=$1
  power_off "$node"
  delete_ns "$(node_ns "$node")"
}

load_image() {
  local tar=$1 node
  shift
  [ -r "$tar" ] || die "cannot read image archive '$tar'"
  for node in "$@"; do
    lab_ctr --address "$(node_sock "$node")" -n k8s.io images import "$tar" >/dev/null ||
      die "import of $tar into $node failed"
    log "imported $(basename "$tar") into $node"
  done
}

exec_in_node() {
  local node=$1
  shift
  exec nsenter --net="/var/run/netns/$(node_ns "$node")" \
    env PATH="$K8S_BIN_DIR:$PATH" CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS=1 \
    CONTAINERD_ADDRESS="$(node_sock "$node")" CONTAINERD_NAMESPACE=k8s.io \
    CONTAINER_RUNTIME_ENDPOINT="unix://$(node_sock "$node")" \
    KUBECONFIG="$KUBE_DIR/admin-in-lab.kubeconfig" "$@"
}
