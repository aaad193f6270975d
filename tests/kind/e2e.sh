#!/usr/bin/env bash
# End-to-end test on a kind cluster. Builds the image, installs the chart with its in-cluster
# registry, makes the worker an edge node, runs examples/hello-world-configmap.yaml there, checks
# the service's output and its memory limit on the node, deletes it and checks the cleanup.
#
# Needs docker, kind, kubectl and helm. Run from anywhere: tests/kind/e2e.sh
#
# Environment:
#   CLUSTER_NAME     kind cluster (default aos-e2e); the script only talks to its context
#   KIND_NODE_IMAGE  kind node image (default: kind's own default)
#   REUSE_CLUSTER=1  use an existing cluster of that name instead of failing
#   KEEP_CLUSTER=1   keep the cluster at the end (default: delete it if this script created it)
#   IMAGE            image to build and load (default aos-operator:e2e)
#   SKIP_BUILD=1     use an IMAGE that is already built
#   TIMEOUT          seconds for each wait (default 300)
#   ARTIFACTS        where logs and state go on failure (default ./e2e-artifacts)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER_NAME=${CLUSTER_NAME:-aos-e2e}
CONTEXT=kind-$CLUSTER_NAME
IMAGE=${IMAGE:-aos-operator:e2e}
TIMEOUT=${TIMEOUT:-300}
ARTIFACTS=${ARTIFACTS:-$PWD/e2e-artifacts}
RELEASE=aos-operator
NAMESPACE=aos-system
SERVICE_NAMESPACE=aos-e2e
SERVICE=hello-world
EXAMPLE=$REPO/examples/hello-world-configmap.yaml
EDGE_LABEL=aosedge.io/edge
RUNC_ROOT=/run/aos/runc
# The message in examples/hello-world/src/etc/hello.cfg: seeing it proves the ConfigMap file arrived.
GREETING="Hello from an AosEdge service"

CREATED_CLUSTER=0
CURRENT_STEP="start"
EDGE_NODE=""

step() {
    CURRENT_STEP=$*
    printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"
}

fail() {
    printf 'FAILED: %s\n' "$*" >&2
    exit 1
}

# Every kubectl and helm call names the kind cluster's context: never touch another cluster.
kube() { kubectl --context "$CONTEXT" "$@"; }
helm_kind() { helm --kube-context "$CONTEXT" "$@"; }

# wait_for DESCRIPTION COMMAND...: run COMMAND every 3 s until it succeeds or TIMEOUT passes.
wait_for() {
    local description=$1
    shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            fail "timed out after ${TIMEOUT}s waiting for $description"
        fi
        sleep 3
    done
}

dump_state() {
    mkdir -p "$ARTIFACTS"
    echo "collecting cluster state and logs in $ARTIFACTS"
    {
        kube get nodes -o wide --show-labels
        kube get all,pvc,configmaps -A -o wide
        kube get aosdevices -o yaml
        kube get aosservices,aosserviceinstances -A -o yaml
        kube get events -A --sort-by=.lastTimestamp
        kube -n "$NAMESPACE" describe pods
    } >"$ARTIFACTS/state.txt" 2>&1 || true
    local component
    for component in operator agent registry; do
        kube -n "$NAMESPACE" logs -l "app.kubernetes.io/component=$component" --all-containers \
            --prefix --tail=-1 >"$ARTIFACTS/$component.log" 2>&1 || true
        kube -n "$NAMESPACE" logs -l "app.kubernetes.io/component=$component" --all-containers \
            --prefix --tail=-1 --previous >"$ARTIFACTS/$component.previous.log" 2>&1 || true
        printf '\n--- last lines of the %s log ---\n' "$component"
        tail -n 40 "$ARTIFACTS/$component.log" || true
    done
    if [[ -n $EDGE_NODE ]]; then
        docker exec "$EDGE_NODE" find /run/aos -maxdepth 4 >"$ARTIFACTS/edge-run-dir.txt" 2>&1 || true
    fi
    printf '\n--- recent events ---\n'
    kube get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 30 || true
    kind export logs "$ARTIFACTS/kind" --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
}

on_exit() {
    local status=$?
    if ((status != 0)); then
        printf '\ne2e FAILED in step "%s" (exit %d)\n' "$CURRENT_STEP" "$status" >&2
        dump_state
    fi
    if ((CREATED_CLUSTER)) && [[ ${KEEP_CLUSTER:-0} != 1 ]]; then
        echo "deleting kind cluster $CLUSTER_NAME"
        kind delete cluster --name "$CLUSTER_NAME" >/dev/null 2>&1 || true
    fi
    exit "$status"
}
trap on_exit EXIT

# --- checks used with wait_for -------------------------------------------------------------------

exists() { kube "$@" >/dev/null 2>&1; }

agent_pod() {
    kube -n "$NAMESPACE" get pods -l app.kubernetes.io/component=agent \
        --field-selector "spec.nodeName=$EDGE_NODE" -o jsonpath='{.items[0].metadata.name}'
}

instance_running() {
    local phase
    phase=$(kube -n "$SERVICE_NAMESPACE" get aosserviceinstance "$1" -o jsonpath='{.status.phase}')
    [[ $phase == Running ]]
}

# The agent keeps each instance's output in <data dir>/instances/<instance ID>/service.log.
instance_log_file() {
    local file="/var/lib/aos/instances/$INSTANCE_ID/service.log"
    kube -n "$NAMESPACE" exec "$AGENT_POD" -- test -f "$file" && echo "$file"
}

service_greeted() {
    local file
    file=$(instance_log_file) || return 1
    [[ -n $file ]] || return 1
    SERVICE_LOG=$(kube -n "$NAMESPACE" exec "$AGENT_POD" -- cat "$file") || return 1
    grep -q "$GREETING" <<<"$SERVICE_LOG" && grep -q "tick 2" <<<"$SERVICE_LOG"
}

no_instances_left() {
    local left
    left=$(kube -n "$SERVICE_NAMESPACE" get aosserviceinstances -o name)
    [[ -z $left ]]
}

no_runc_containers() {
    local containers
    containers=$(kube -n "$NAMESPACE" exec "$AGENT_POD" -- runc --root "$RUNC_ROOT" list -q) || return 1
    [[ -z $containers ]]
}

cgroup_gone() { ! docker exec "$EDGE_NODE" test -e "$MEMORY_CGROUP_DIR"; }

# --- the test ------------------------------------------------------------------------------------

step "checking tools"
for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (needed: docker, kind, kubectl, helm)"
done
docker version --format 'docker {{.Server.Version}}'
kind version
helm version --short

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    step "building image $IMAGE"
    docker build --tag "$IMAGE" "$REPO"
fi

step "creating kind cluster $CLUSTER_NAME"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
    [[ ${REUSE_CLUSTER:-0} == 1 ]] ||
        fail "kind cluster $CLUSTER_NAME exists: delete it (kind delete cluster --name $CLUSTER_NAME) or set REUSE_CLUSTER=1"
    echo "reusing the existing cluster"
else
    kind create cluster --name "$CLUSTER_NAME" --config "$REPO/tests/kind/cluster.yaml" \
        ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s
    CREATED_CLUSTER=1
fi
kube get nodes -o wide

step "loading $IMAGE into the cluster"
kind load docker-image "$IMAGE" --name "$CLUSTER_NAME"

step "labelling a worker as the edge node"
EDGE_NODE=$(kube get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[0].metadata.name}')
[[ -n $EDGE_NODE ]] || fail "the cluster has no worker node (tests/kind/cluster.yaml defines one)"
kube label node "$EDGE_NODE" "$EDGE_LABEL=true" --overwrite
echo "edge node: $EDGE_NODE"

# The services' base layer is the node's root filesystem; the example's command is python3.
step "installing python3 in the edge node's root filesystem (the example's base layer)"
docker exec "$EDGE_NODE" sh -c 'command -v python3 >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 >/dev/null; }'
docker exec "$EDGE_NODE" python3 --version

step "installing the chart (in-cluster registry)"
helm_kind upgrade --install "$RELEASE" "$REPO/charts/aos-operator" \
    --namespace "$NAMESPACE" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
    --set agent.heartbeatSeconds=5 \
    --wait --timeout "${TIMEOUT}s"
kube -n "$NAMESPACE" get pods -o wide

step "checking the agent runs on the edge node only"
agent_nodes=$(kube -n "$NAMESPACE" get pods -l app.kubernetes.io/component=agent -o jsonpath='{.items[*].spec.nodeName}')
[[ $agent_nodes == "$EDGE_NODE" ]] || fail "agent pods run on '$agent_nodes', expected only on $EDGE_NODE"
AGENT_POD=$(agent_pod)
echo "agent pod: $AGENT_POD"

step "waiting for AosDevice $EDGE_NODE to be Ready"
wait_for "AosDevice $EDGE_NODE to exist" exists get aosdevice "$EDGE_NODE"
kube wait --for=condition=Ready "aosdevice/$EDGE_NODE" --timeout="${TIMEOUT}s"
devices=$(kube get aosdevices -o jsonpath='{.items[*].metadata.name}')
[[ $devices == "$EDGE_NODE" ]] || fail "AosDevices are '$devices', expected only $EDGE_NODE"
kube get aosdevices

step "applying $SERVICE (files from a ConfigMap) in namespace $SERVICE_NAMESPACE"
kube create namespace "$SERVICE_NAMESPACE" --dry-run=client -o yaml | kube apply -f -
kube -n "$SERVICE_NAMESPACE" apply -f "$EXAMPLE"

step "waiting for AosService $SERVICE to be Ready"
kube -n "$SERVICE_NAMESPACE" wait --for=condition=Ready "aosservice/$SERVICE" --timeout="${TIMEOUT}s"
kube -n "$SERVICE_NAMESPACE" get aosservice "$SERVICE" -o wide

step "checking the instance"
instances=$(kube -n "$SERVICE_NAMESPACE" get aosserviceinstances -l "aosedge.io/service=$SERVICE" \
    -o jsonpath='{.items[*].metadata.name}')
read -r -a instance_names <<<"$instances"
((${#instance_names[@]} == 1)) || fail "expected 1 instance (one edge node, minInstances 1), found: '$instances'"
INSTANCE=${instance_names[0]}
wait_for "instance $INSTANCE to run" instance_running "$INSTANCE"
device=$(kube -n "$SERVICE_NAMESPACE" get aosserviceinstance "$INSTANCE" -o jsonpath='{.spec.device}')
[[ $device == "$EDGE_NODE" ]] || fail "instance $INSTANCE is on device '$device', expected $EDGE_NODE"
INSTANCE_ID=$(kube -n "$SERVICE_NAMESPACE" get aosserviceinstance "$INSTANCE" -o jsonpath='{.spec.instanceId}')
[[ -n $INSTANCE_ID ]] || fail "instance $INSTANCE has no spec.instanceId"
kube -n "$SERVICE_NAMESPACE" get aosserviceinstances -o wide
echo "instance ID: $INSTANCE_ID"

step "checking the service's output"
SERVICE_LOG=""
wait_for "the service to print \"$GREETING\" and tick twice" service_greeted
echo "log file: $(instance_log_file)"
head -n 5 <<<"$SERVICE_LOG"

step "checking the instance's memory limit on the node"
# The expected limit is what the project's own validator reads from the example's config.yaml.
expected_ram=$(docker run --rm -v "$REPO/examples/hello-world:/service:ro" "$IMAGE" validate --json --local /service |
    docker run --rm -i --entrypoint python3 "$IMAGE" -c \
        'import json, sys; print(json.load(sys.stdin)["services"][0]["description"]["quotas"]["ram"])')
page_size=$(docker exec "$EDGE_NODE" getconf PAGESIZE)
expected_limit=$((expected_ram / page_size * page_size)) # the kernel rounds down to whole pages
if [[ $(docker exec "$EDGE_NODE" stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then
    MEMORY_CGROUP_DIR=/sys/fs/cgroup/aos/$INSTANCE_ID
    limit_file=$MEMORY_CGROUP_DIR/memory.max
else
    MEMORY_CGROUP_DIR=/sys/fs/cgroup/memory/aos/$INSTANCE_ID
    limit_file=$MEMORY_CGROUP_DIR/memory.limit_in_bytes
fi
limit=$(docker exec "$EDGE_NODE" cat "$limit_file") || fail "cannot read $limit_file on $EDGE_NODE"
echo "$limit_file = $limit (config: $expected_ram bytes)"
[[ $limit == "$expected_limit" ]] || fail "memory limit is $limit, expected $expected_limit"

step "deleting $SERVICE"
kube -n "$SERVICE_NAMESPACE" delete -f "$EXAMPLE" --wait=true --timeout="${TIMEOUT}s"
wait_for "the instances to be deleted" no_instances_left
wait_for "runc to list no containers in $RUNC_ROOT" no_runc_containers
wait_for "the instance's cgroup $MEMORY_CGROUP_DIR to be removed" cgroup_gone
kube -n "$NAMESPACE" exec "$AGENT_POD" -- runc --root "$RUNC_ROOT" list

CURRENT_STEP="done"
printf '\ne2e passed\n'
