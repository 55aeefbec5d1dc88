# shellcheck shell=bash
# The lab network: a bridge in the control plane's namespace and one namespace per node,
# joined by veth pairs. No namespace has a default route, so lab traffic cannot leave.

ns_exists() { [ -e "/var/run/netns/$1" ]; }

ensure_cp_net() {
  if ! ns_exists "$CP_NS"; then
    ip netns add "$CP_NS"
  fi
  ip -n "$CP_NS" link set lo up
  if ! ip -n "$CP_NS" link show br0 >/dev/null 2>&1; then
    ip -n "$CP_NS" link add br0 type bridge
    ip -n "$CP_NS" addr add "$CP_IP/24" dev br0
  fi
  ip -n "$CP_NS" link set br0 up
}

# veth_name NODE: the control-plane end of a node's link (at most 15 characters).
veth_name() { echo "v-$1"; }

ensure_node_net() {
  local node=$1 ns veth
  ns=$(node_ns "$node")
  veth=$(veth_name "$node")
  ns_exists "$ns" || ip netns add "$ns"
  ip -n "$ns" link set lo up
  if ! ip -n "$CP_NS" link show "$veth" >/dev/null 2>&1; then
    ip -n "$CP_NS" link add "$veth" type veth peer name eth0 netns "$ns"
    ip -n "$CP_NS" link set "$veth" master br0
    ip -n "$ns" addr add "$(node_ip "$node")/24" dev eth0
  fi
  ip -n "$CP_NS" link set "$veth" up
  ip -n "$ns" link set eth0 up
}

# set_link NODE up|down: cutting the control-plane end takes the device off the lab network
# while everything on it keeps running.
set_link() {
  ip -n "$CP_NS" link set "$(veth_name "$1")" "$2"
}

link_state() {
  if ip -n "$CP_NS" link show "$(veth_name "$1")" 2>/dev/null | grep -q ',UP'; then
    echo online
  else
    echo offline
  fi
}

# delete_ns NS: kills every process left in the namespace, then removes it.
delete_ns() {
  local ns=$1 pids
  ns_exists "$ns" || return 0
  pids=$(ip netns pids "$ns" 2>/dev/null)
  # shellcheck disable=SC2086
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null
  ip netns del "$ns" 2>/dev/null || true
}

# release_netns_mount: `ip netns add` bind-mounts /run/netns onto itself the first time;
# once the lab's namespaces are gone and no other remains, that mount goes too.
release_netns_mount() {
  [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ] || return 0
  findmnt -rn /run/netns >/dev/null && umount /run/netns 2>/dev/null
  return 0
}
