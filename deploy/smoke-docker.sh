#!/usr/bin/env bash
# Docker smoke test: what `docker compose up` does, one container at a time, on a real engine.
#
#   make smoke-docker            (or: deploy/smoke-docker.sh, from the project root)
#
# Builds the image, runs the trainer job to exit 0 on a small budget, starts the recall service
# as compose configures it (read-only root, tmpfs /tmp, the data volume read-only, non-root,
# health check), waits until Docker reports it healthy, exercises /readyz, /recall and /metrics,
# starts Prometheus with deploy/prometheus.yml unchanged on a user network where the service is
# `recall`, and checks through Prometheus' API that the target is up and the alert rules loaded.
# Every container setting comes from docker-compose.yml through deploy/compose_run.py, so the two
# cannot drift. Containers are reached only through ports published on 127.0.0.1. Everything it
# creates (containers, network, volume, all named smoke-<pid>-*) is removed on exit, also on failure.
#
# Needs: a Docker engine, python3 with PyYAML, curl. On a machine without registry access,
# ../shared/tools/local-docker.sh provides the base images and a torch index; the defaults below
# use them. Elsewhere, e.g.:
#   SMOKE_BASE_IMAGE=python:3.11-slim SMOKE_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#   SMOKE_PROMETHEUS_IMAGE=prom/prometheus:v2.55.1 deploy/smoke-docker.sh
# Other knobs: SMOKE_TRAIN_ARGS (the trainer's budget), PYTHON, and the build's proxy/mirror
# variables of docker-compose.yml (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, EXTRA_CA_CERT).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PROJECT=smoke-$$
export BASE_IMAGE=${SMOKE_BASE_IMAGE:-local/python:3.11}
export TORCH_INDEX_URL=${SMOKE_TORCH_INDEX_URL:-http://127.0.0.1:8765/}
export MIND_TRAIN_ARGS=${SMOKE_TRAIN_ARGS:---epochs 1 --samples-per-user 2 --no-baselines --device cpu}
PROMETHEUS_IMAGE=${SMOKE_PROMETHEUS_IMAGE:-local/prometheus}
HEALTHY_WITHIN_S=180      # the recall health check: start period 60 s, interval 10 s
PROMETHEUS_WITHIN_S=90    # deploy/prometheus.yml scrapes every 15 s
START_MS=$(($(date +%s%N) / 1000000))

say() {
    local ms=$(($(date +%s%N) / 1000000 - START_MS))
    printf '[%4d.%d s] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"
}
fail() { say "FAIL: $*"; exit 1; }
compose() { "$PYTHON" deploy/compose_run.py "$@" --project "$PROJECT"; }   # NUL-separated
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((status != 0)); then
        for name in recall prometheus trainer; do
            docker logs --tail 30 "$PROJECT-$name" 2>&1 | sed "s/^/    $name| /" || true
        done
    fi
    docker rm -f "$PROJECT-trainer" "$PROJECT-recall" "$PROJECT-prometheus" >/dev/null 2>&1 || true
    docker network rm "$PROJECT-net" >/dev/null 2>&1 || true
    docker volume rm "$PROJECT-mind-data" >/dev/null 2>&1 || true
    rm -f "$BUILD_LOG"
    left=$(docker ps -aq --filter "name=^$PROJECT-")
    [[ -z $left ]] || { say "containers left behind: $left"; status=1; }
    say "cleaned up ($PROJECT-*); exit $status"
    exit "$status"
}
BUILD_LOG=$(mktemp)
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'say "FAIL at line $LINENO: $BASH_COMMAND"' ERR

"$PYTHON" -c 'import yaml' 2>/dev/null || fail "$PYTHON lacks PyYAML (apt-get install python3-yaml, or PYTHON=.venv/bin/python)"
docker info >/dev/null 2>&1 || fail "no Docker engine answers (run ../shared/tools/local-docker.sh first)"
say "docker $(docker version --format '{{.Server.Version}}'), base image $BASE_IMAGE, torch index $TORCH_INDEX_URL"

# 1. Build the image compose runs, with compose's build arguments.
IMAGE=$(compose image recall | tr -d '\0')
mapfile -d '' BUILD_ARGS < <(compose build-args recall)
say "building $IMAGE"
DOCKER_BUILDKIT=0 nice -n 10 docker build --network host "${BUILD_ARGS[@]}" -t "$IMAGE" . >"$BUILD_LOG" 2>&1 \
    || { tail -n 30 "$BUILD_LOG"; fail "docker build"; }
size=$(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')
say "built $IMAGE ($size, user $(docker image inspect --format '{{.Config.User}}' "$IMAGE"))"

docker network create "$PROJECT-net" >/dev/null
docker volume create "$PROJECT-mind-data" >/dev/null

# 2. The trainer job, to exit 0.
mapfile -d '' TRAINER < <(compose options trainer)
mapfile -d '' TRAINER_CMD < <(compose command trainer)
say "trainer: ${TRAINER_CMD[*]} (MIND_TRAIN_ARGS=$MIND_TRAIN_ARGS)"
docker run --name "$PROJECT-trainer" --network "$PROJECT-net" "${TRAINER[@]}" "$IMAGE" "${TRAINER_CMD[@]}" \
    > >(sed 's/^/    trainer| /' | tail -n 4) 2>&1 || fail "trainer exited $?"
status=$(docker inspect --format '{{.State.ExitCode}}' "$PROJECT-trainer")
[[ $status == 0 ]] || fail "trainer exit code $status"
say "trainer exited 0"

# 3. The recall service as compose configures it, published on 127.0.0.1 only.
PORT=$(free_port)
mapfile -d '' RECALL < <(compose options recall)
mapfile -d '' RECALL_CMD < <(compose command recall)
CONTAINER_PORT=$(compose port recall | tr -d '\0')
docker run -d --name "$PROJECT-recall" --network "$PROJECT-net" --network-alias recall \
    -p "127.0.0.1:$PORT:$CONTAINER_PORT" "${RECALL[@]}" "$IMAGE" "${RECALL_CMD[@]}" >/dev/null
say "recall started on 127.0.0.1:$PORT (read-only root, tmpfs /tmp, data volume read-only)"
for ((waited = 0; ; waited += 2)); do
    health=$(docker inspect --format '{{.State.Health.Status}}' "$PROJECT-recall")
    [[ $health == healthy ]] && break
    [[ $(docker inspect --format '{{.State.Running}}' "$PROJECT-recall") == true ]] || fail "recall exited"
    ((waited < HEALTHY_WITHIN_S)) || fail "recall not healthy within $HEALTHY_WITHIN_S s ($health)"
    sleep 2
done
say "recall healthy (Docker health check on /readyz)"

# What compose promised about the running container, checked inside it.
uid=$(docker exec "$PROJECT-recall" id -u)
[[ $uid != 0 ]] || fail "recall runs as root"
docker exec "$PROJECT-recall" sh -c 'touch /app/x' 2>/dev/null && fail "root filesystem is writable"
docker exec "$PROJECT-recall" sh -c 'touch /data/x' 2>/dev/null && fail "data volume is writable"
docker exec "$PROJECT-recall" sh -c 'cd /tmp && touch write-check && rm write-check' || fail "/tmp is not writable"
say "recall runs as uid $uid; / and /data read-only, /tmp writable"

# 4. The API through the published port.
BASE=http://127.0.0.1:$PORT
ready=$(curl -sf "$BASE/readyz") || fail "/readyz"
say "GET /readyz -> $ready"
BODY=$(docker logs "$PROJECT-recall" 2>&1 | sed -n "s/.* -d '\({.*}\)'$/\1/p" | head -n 1)
[[ -n $BODY ]] || fail "no example request in the service's log"
answer=$(curl -sf -X POST "$BASE/recall" -H 'content-type: application/json' -d "$BODY") || fail "/recall"
"$PYTHON" -c 'import json, sys; a = json.loads(sys.argv[1]); assert len(a["items"]) == 5 and a["interests"] >= 1, a
print("POST /recall %s -> %d items from %d interests, model %s, %.1f ms" % (sys.argv[2], len(a["items"]), a["interests"], a["model_version"][:12], a["took_ms"]))' \
    "$answer" "$BODY" | while read -r line; do say "$line"; done
metrics=$(curl -sf "$BASE/metrics") || fail "/metrics"
grep -q '^mind_recall_requests_total{endpoint="/recall",status="200"} 1.0$' <<<"$metrics" || fail "/metrics lacks the /recall request"
say "GET /metrics -> $(grep -c '^mind_recall_' <<<"$metrics") mind_recall_* samples, the /recall request counted"

# 5. Prometheus with deploy/prometheus.yml (and its rule file) as compose mounts them.
PROM_PORT=$(free_port)
mapfile -d '' PROM < <(compose options prometheus --tmpfs-volume prometheus-data)
mapfile -d '' PROM_CMD < <(compose command prometheus)
docker run -d --name "$PROJECT-prometheus" --network "$PROJECT-net" -p "127.0.0.1:$PROM_PORT:9090" \
    "${PROM[@]}" "$PROMETHEUS_IMAGE" "${PROM_CMD[@]}" >/dev/null
say "prometheus ($PROMETHEUS_IMAGE) started on 127.0.0.1:$PROM_PORT"
for ((waited = 0; ; waited += 2)); do
    targets=$(curl -sf "http://127.0.0.1:$PROM_PORT/api/v1/targets" || true)
    up=$("$PYTHON" -c 'import json, sys
t = json.loads(sys.argv[1] or "{}").get("data", {}).get("activeTargets", [])
print(" ".join(x["scrapeUrl"] for x in t if x["labels"]["job"] == "mind-recall" and x["health"] == "up"))' "$targets")
    [[ -n $up ]] && break
    ((waited < PROMETHEUS_WITHIN_S)) || fail "target mind-recall not up within $PROMETHEUS_WITHIN_S s"
    sleep 2
done
say "prometheus: target mind-recall up ($up)"
rules=$(curl -sf "http://127.0.0.1:$PROM_PORT/api/v1/rules") || fail "/api/v1/rules"
"$PYTHON" -c 'import json, sys; r = [x for g in json.loads(sys.argv[1])["data"]["groups"] for x in g["rules"]]
assert r, "no alert rules loaded"; print("prometheus: %d alert rules loaded: %s" % (len(r), ", ".join(x["name"] for x in r)))' \
    "$rules" | while read -r line; do say "$line"; done
say "PASS"
