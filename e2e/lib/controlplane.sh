# shellcheck shell=bash
# The control plane, all inside the control plane's namespace: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, and the forwarder that makes the apiserver
# reachable from the host at 127.0.0.1 without giving the host a lab address.

CP_RUN="$RUN_DIR/control-plane"
API_SOCK="$CP_RUN/apiserver.sock"
WEBHOOK_SOCK="$CP_RUN/webhook.sock"

start_etcd() {
  mkdir -p "$LAB_DIR/etcd"
  chmod 700 "$LAB_DIR/etcd"
  start_daemon etcd "$CP_NS" "$LOG_DIR/etcd.log" "$CP_RUN/etcd.pid" \
    "$K8S_BIN_DIR/etcd" --name lab --data-dir "$LAB_DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster lab=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
}

# Admission: NodeRestriction (each kubelet may change only its own Node and pods) on top of
# what kube-apiserver enables by default, which is what a production cluster runs
# (NamespaceLifecycle, LimitRanger, ServiceAccount, PodSecurity, Priority, ResourceQuota,
# the webhook and policy plugins, ...: see `kube-apiserver --help`).
ADMISSION_PLUGINS=NodeRestriction

# The authorizers, in order: Node (kubelets), edgefleet's device authorizer for device
# users, RBAC: the configuration controller/README.md#device-authorization documents for a
# large fleet, with one more match condition. The device authorizer is a controller serving
# /authorize on 127.0.0.1:$WEBHOOK_PORT with the lab's device-authorizer certificate
# (`e2e/lab info`), run with `--device-authorization webhook`; only some tests and benches
# run one. When the apiserver cannot reach an authorizer it names, it refuses with a 500 what
# RBAC does not allow, instead of a 403: so it asks only about devices whose certificate also
# carries $LAB_AUTHORIZER_GROUP, which those tests give theirs. authorizedTTL is how long a
# retired device's certificate may still be allowed what it was allowed just before.
#
# The apiserver keeps at most 8,192 decisions per webhook authorizer (fixed in its code), and
# a device's requests need about five, so one authorizer's cache thrashes past about 1,600
# devices and every renewal becomes a call. The lab names the same authorizer
# $AUTHORIZER_SHARDS times, each entry matching the devices whose name ends in its share of
# the characters a name can end in, so each entry caches its share of the fleet.
AUTHORIZER_SHARDS=10
NAME_ENDINGS=0123456789abcdefghijklmnopqrstuvwxyz

# The characters that shard $1 of $2 matches a device name's last character with.
shard_endings() {
  local i=$1 k=$2 p chars=""
  for ((p = i; p < ${#NAME_ENDINGS}; p += k)); do chars+=${NAME_ENDINGS:p:1}; done
  echo "$chars"
}

write_authorization_config() {
  cat >"$KUBE_DIR/device-authorizer.kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: device-authorizer
  cluster:
    server: https://127.0.0.1:$WEBHOOK_PORT/authorize
    certificate-authority-data: $(base64 -w0 <"$CA_CRT")
users:
- name: kube-apiserver
contexts:
- name: device-authorizer
  context: {cluster: device-authorizer, user: kube-apiserver}
current-context: device-authorizer
KCFG
  {
    cat <<YAML
apiVersion: apiserver.config.k8s.io/v1
kind: AuthorizationConfiguration
authorizers:
- type: Node
  name: node
YAML
    local i
    for ((i = 0; i < AUTHORIZER_SHARDS; i++)); do
      cat <<YAML
- type: Webhook
  name: edgefleet-devices-$i
  webhook:
    timeout: 3s
    authorizedTTL: 60s
    unauthorizedTTL: 10s
    subjectAccessReviewVersion: v1
    matchConditionSubjectAccessReviewVersion: v1
    failurePolicy: NoOpinion
    connectionInfo:
      type: KubeConfigFile
      kubeConfigFile: $KUBE_DIR/device-authorizer.kubeconfig
    matchConditions:
    - expression: "'edgefleet:devices' in request.groups"
    - expression: "request.user.matches('[$(shard_endings "$i" "$AUTHORIZER_SHARDS")]\$')"
    - expression: "'$LAB_AUTHORIZER_GROUP' in request.groups"
YAML
    done
    cat <<YAML
- type: RBAC
  name: rbac
YAML
  } >"$KUBE_DIR/authorization.yaml"
}

# --enable-aggregator-routing: the lab has no kube-proxy, so the apiserver calls Services
# (the chart's admission webhook) at their endpoints' addresses.
# --profiling: the fleet's benchmarks read where the apiserver's CPU goes from
# /debug/pprof (e2e/README.md); only the lab's admin may read it.
# GOGC and GOMEMLIMIT: only as `e2e/lab up --apiserver-gogc/--apiserver-memory-limit` set
# them, none inherited: a figure must not depend on the shell that started the lab.
start_apiserver() {
  write_authorization_config
  local gc_env=(-u GOGC -u GOMEMLIMIT) setting
  setting=$(lab_setting APISERVER_GOGC)
  [ -z "$setting" ] || gc_env+=("GOGC=$setting")
  setting=$(lab_setting APISERVER_MEMORY_LIMIT)
  [ -z "$setting" ] || gc_env+=("GOMEMLIMIT=$setting")
  start_daemon kube-apiserver "$CP_NS" "$LOG_DIR/kube-apiserver.log" "$CP_RUN/kube-apiserver.pid" \
    env "${gc_env[@]}" "$K8S_BIN_DIR/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port="$API_PORT" \
    --advertise-address="$CP_IP" \
    --tls-cert-file="$PKI_DIR/apiserver.crt" --tls-private-key-file="$PKI_DIR/apiserver.key" \
    --client-ca-file="$CA_CRT" \
    --kubelet-certificate-authority="$CA_CRT" \
    --kubelet-client-certificate="$PKI_DIR/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI_DIR/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$PKI_DIR/sa.pub" \
    --service-account-signing-key-file="$PKI_DIR/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc \
    --api-audiences=https://kubernetes.default.svc \
    --authorization-config="$KUBE_DIR/authorization.yaml" \
    --enable-aggregator-routing=true \
    --enable-admission-plugins="$ADMISSION_PLUGINS" \
    --allow-privileged=true \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --profiling=true \
    --v=1
}

# start_socat_pair NAME LAB_FROM LAB_TO HOST_FROM HOST_TO: a socat in the control plane's
# namespace and one on the host (pid files $CP_RUN/NAME-lab.pid and NAME-host.pid, log
# $LOG_DIR/NAME.log), joined by a unix socket, which crosses between namespaces where no
# address does.
start_socat_pair() {
  local name=$1 log="$LOG_DIR/$1.log"
  start_daemon "$name-lab" "$CP_NS" "$log" "$CP_RUN/$name-lab.pid" socat "$2" "$3"
  if ! pidfile_alive "$CP_RUN/$name-host.pid"; then
    mkdir -p "$CP_RUN"
    printf -- '--- %s: starting %s-host\n' "$(date -Is)" "$name" >>"$log"
    setsid socat "$4" "$5" >>"$log" 2>&1 </dev/null &
    echo $! >"$CP_RUN/$name-host.pid"
  fi
}

# The host end listens on 127.0.0.1 only; the lab end connects to the apiserver inside the
# control plane's namespace.
start_api_forwarder() {
  start_socat_pair forward \
    "UNIX-LISTEN:$API_SOCK,fork,unlink-early,mode=600" "TCP:127.0.0.1:$API_PORT" \
    "TCP-LISTEN:$HOST_API_PORT,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$API_SOCK"
}

# The other way round, for admission webhooks a test serves on the host: the apiserver
# calls https://127.0.0.1:$WEBHOOK_PORT in its namespace and reaches the host's
# 127.0.0.1:$WEBHOOK_PORT, without a lab address for the host.
start_webhook_forwarder() {
  start_socat_pair webhook-forward \
    "TCP-LISTEN:$WEBHOOK_PORT,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$WEBHOOK_SOCK" \
    "UNIX-LISTEN:$WEBHOOK_SOCK,fork,unlink-early,mode=600" "TCP:127.0.0.1:$WEBHOOK_PORT"
}

# How often the node controller looks at Nodes, and how long a Node may go without a word
# from its kubelet before it is marked NotReady and tainted (one that never had a word: the
# startup grace, Kubernetes' default kept): the bench waits that long after making its
# Nodes, for the cluster's own work on them to be done before enrolment.
NODE_MONITOR_PERIOD_S=5
NODE_MONITOR_GRACE_S=30
NODE_STARTUP_GRACE_S=60

start_controller_manager() {
  start_daemon kube-controller-manager "$CP_NS" "$LOG_DIR/kube-controller-manager.log" \
    "$CP_RUN/kube-controller-manager.pid" \
    "$K8S_BIN_DIR/kube-controller-manager" \
    --kubeconfig="$KUBE_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$KUBE_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$KUBE_DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI_DIR/sa.key" \
    --root-ca-file="$CA_CRT" \
    --cluster-signing-cert-file="$CA_CRT" --cluster-signing-key-file="$CA_KEY" \
    --node-monitor-period="${NODE_MONITOR_PERIOD_S}s" --node-monitor-grace-period="${NODE_MONITOR_GRACE_S}s" \
    --node-startup-grace-period="${NODE_STARTUP_GRACE_S}s" \
    --leader-elect=false \
    --kube-api-qps=200 --kube-api-burst=400 \
    --profiling=false \
    --v=1
}

# The scheduler's connection, leader election and profiling live in its config file: the
# flags for them are deprecated.
start_scheduler() {
  cat >"$KUBE_DIR/scheduler-config.yaml" <<YAML
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $KUBE_DIR/scheduler.kubeconfig
leaderElection:
  leaderElect: false
enableProfiling: false
YAML
  start_daemon kube-scheduler "$CP_NS" "$LOG_DIR/kube-scheduler.log" "$CP_RUN/kube-scheduler.pid" \
    "$K8S_BIN_DIR/kube-scheduler" \
    --config="$KUBE_DIR/scheduler-config.yaml" \
    --authentication-kubeconfig="$KUBE_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$KUBE_DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 \
    --v=1
}

api_ready() {
  curl -sf --max-time 2 --cacert "$CA_CRT" --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" \
    "$HOST_SERVER/readyz" >/dev/null
}

start_control_plane() {
  ensure_control_plane_pki
  ensure_cp_net
  mkdir -p "$CP_RUN" "$LOG_DIR"
  start_etcd
  start_apiserver
  start_api_forwarder
  start_webhook_forwarder
  wait_for "kube-apiserver to be ready" 60 api_ready ||
    die "kube-apiserver did not become ready in 60s (log: $LOG_DIR/kube-apiserver.log)"
  start_controller_manager
  start_scheduler
}

CP_COMPONENTS=(etcd kube-apiserver forward-lab forward-host webhook-forward-lab webhook-forward-host
  kube-controller-manager kube-scheduler)

stop_control_plane() {
  local c
  for c in kube-scheduler kube-controller-manager webhook-forward-host webhook-forward-lab \
    forward-host forward-lab kube-apiserver etcd; do
    stop_pidfile "$CP_RUN/$c.pid"
  done
}
