# shellcheck shell=bash
# The lab CA and every certificate and kubeconfig signed by it. Every kubeconfig verifies
# the server against the lab CA: nothing here skips TLS verification.

CA_CRT="$PKI_DIR/ca.crt"
CA_KEY="$PKI_DIR/ca.key"

# issue_cert NAME SUBJECT USAGE [SANS]: a P-256 key and a certificate signed by the lab CA.
# USAGE is serverAuth or clientAuth; SANS an openssl subjectAltName value.
issue_cert() {
  local name=$1 subj=$2 usage=$3 sans=${4:-}
  local key="$PKI_DIR/$name.key" crt="$PKI_DIR/$name.crt" ext
  [ -s "$crt" ] && [ -s "$key" ] && return 0
  ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } >"$ext"
  openssl ecparam -name prime256v1 -genkey -noout -out "$key" 2>/dev/null
  openssl req -new -key "$key" -subj "$subj" 2>/dev/null |
    openssl x509 -req -CA "$CA_CRT" -CAkey "$CA_KEY" -CAcreateserial -days 365 \
      -extfile "$ext" -out "$crt" 2>/dev/null
  rm -f "$ext"
  [ -s "$crt" ] || die "cannot issue certificate $name"
  chmod 600 "$key"
}

ensure_ca() {
  mkdir -p "$PKI_DIR"
  chmod 700 "$PKI_DIR"
  if [ ! -s "$CA_CRT" ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$CA_KEY" 2>/dev/null
    openssl req -x509 -new -key "$CA_KEY" -subj "/CN=edgefleet-lab-ca" -days 3650 \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "$CA_CRT" 2>/dev/null || die "cannot create the lab CA"
  fi
  # Service-account tokens are signed with RSA, which every client library accepts.
  [ -s "$PKI_DIR/sa.key" ] || openssl genrsa -out "$PKI_DIR/sa.key" 2048 2>/dev/null
  [ -s "$PKI_DIR/sa.pub" ] || openssl rsa -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub" 2>/dev/null
}

# write_kubeconfig FILE SERVER CERT_NAME: a self-contained kubeconfig (data inlined) so it
# can be copied onto a device as it is.
write_kubeconfig() {
  local file=$1 server=$2 cert=$3 user
  user=$(openssl x509 -in "$PKI_DIR/$cert.crt" -noout -subject -nameopt multiline | awk -F' = ' '/commonName/ {print $2}')
  mkdir -p "$(dirname "$file")"
  cat >"$file.tmp" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: edgefleet-lab
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$CA_CRT")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$PKI_DIR/$cert.crt")
    client-key-data: $(base64 -w0 <"$PKI_DIR/$cert.key")
contexts:
- name: edgefleet-lab
  context:
    cluster: edgefleet-lab
    user: $user
current-context: edgefleet-lab
KCFG
  chmod 600 "$file.tmp"
  mv "$file.tmp" "$file"
}

# The server addresses a kubeconfig uses: from the host shell through the loopback
# forwarder, from inside a lab namespace straight to the control plane's address.
HOST_SERVER="https://127.0.0.1:$HOST_API_PORT"
LAB_SERVER="https://$CP_IP:$API_PORT"

ensure_control_plane_pki() {
  ensure_ca
  issue_cert apiserver "/CN=kube-apiserver" serverAuth \
    "IP:$CP_IP,IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  issue_cert admin "/O=system:masters/CN=edgefleet-lab-admin" clientAuth
  issue_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  issue_cert scheduler "/CN=system:kube-scheduler" clientAuth
  # The device authorizer's serving certificate: a controller on the host serves it at
  # 127.0.0.1:$WEBHOOK_PORT, where the apiserver's authorization config calls it.
  issue_cert device-authorizer "/CN=edgefleet-device-authorizer" serverAuth "IP:127.0.0.1"
  write_kubeconfig "$KUBE_DIR/admin.kubeconfig" "$HOST_SERVER" admin
  write_kubeconfig "$KUBE_DIR/admin-in-lab.kubeconfig" "$LAB_SERVER" admin
  write_kubeconfig "$KUBE_DIR/controller-manager.kubeconfig" "$LAB_SERVER" controller-manager
  write_kubeconfig "$KUBE_DIR/scheduler.kubeconfig" "$LAB_SERVER" scheduler
}

# ensure_node_pki NODE: the kubelet's client and serving certificates, and for an edge
# device the agent identity edgefleet:device:NODE in group edgefleet:devices.
ensure_node_pki() {
  local node=$1 ip
  ip=$(node_ip "$node")
  issue_cert "kubelet-$node" "/O=system:nodes/CN=system:node:$node" clientAuth
  issue_cert "kubelet-serving-$node" "/CN=$node" serverAuth "IP:$ip,DNS:$node"
  write_kubeconfig "$(node_dir "$node")/kubelet.kubeconfig" "$LAB_SERVER" "kubelet-$node"
  # The same credential from the host: tests act as a stolen device's kubelet with it.
  write_kubeconfig "$KUBE_DIR/kubelet-$node.kubeconfig" "$HOST_SERVER" "kubelet-$node"
  if [ "$node" != "$CLOUD_NODE" ]; then
    issue_cert "device-$node" "/O=edgefleet:devices/CN=edgefleet:device:$node" clientAuth
    write_kubeconfig "$KUBE_DIR/device-$node.kubeconfig" "$HOST_SERVER" "device-$node"
    # The copy on the device itself, for the agent, reaches the apiserver over the lab net.
    write_kubeconfig "$(node_dir "$node")/agent.kubeconfig" "$LAB_SERVER" "device-$node"
  fi
}
