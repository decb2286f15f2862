#!/usr/bin/env bash
# Smoke test of the real container stack (too slow for .ci/run; docs/deploy.md records runs).
#
#   scripts/ops/compose-smoke.sh
#
# 1. builds the API image under the classic builder and under BuildKit and fails if either
#    build runs a torch stage or the image holds torch; builds the worker and the dashboard;
# 2. brings up the compose stack (project pda-smoke, API on a free local port) and waits
#    for every service to be healthy;
# 3. runs the README's curl session (submit examples/chelsea.png, poll, overlay, relevance)
#    and reads which backend ran the job inside the worker (must be openvino);
# 4. submits the same job again, `docker kill`s the worker mid-sweep, `docker start`s it and
#    checks the job still finishes with the same map;
# 5. scales the workers to 2; restarts Redis and checks the finished result survived;
# 6. starts the dashboard (monitoring profile) and waits for it to be healthy;
# 7. with ROLLING=1, rolls the API and the workers under 20 clients (compose_rolling.py);
# 8. tears the stack down (volumes too) and prints one line of figures.
#
# Environment: PYTHON_IMAGE and TORCH_INDEX_URL (build args; on a machine without Docker
# Hub: PYTHON_IMAGE=pda-local/python:3.11-bookworm, TORCH_INDEX_URL=$(docker-offline.sh
# index)), REDIS_IMAGE (default pda-local/redis:7 when present, else compose's own), DOCKER
# (the docker CLI, default docker), KEEP=1 (leave the stack up on failure to look at it),
# ROLLING=1 (then scripts/ops/compose_rolling.py: a rolling restart of the API and the workers
# under 20 clients, 0 failed requests and 0 lost jobs).
# Images keep their compose names (pda-api:$VERSION-cpu, ...: pda/version.py) and stay
# after the run.
set -euo pipefail
cd "$(dirname "$0")/../.."
DOCKER=${DOCKER:-docker}
# the image tags docker-compose.yml names follow the package version (a deploy test checks)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' pda/version.py)
export COMPOSE_PROJECT_NAME=pda-smoke
WORK=$(mktemp -d /tmp/pda-smoke.XXXXXX)
ARGS=()
[ -n "${PYTHON_IMAGE:-}" ] && ARGS+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[ -n "${TORCH_INDEX_URL:-}" ] && WARGS=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL") \
  || WARGS=()
API_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DASHBOARD_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export API_PORT DASHBOARD_PORT
BASE=http://127.0.0.1:$API_PORT
compose() { "$DOCKER" compose -f docker-compose.yml "$@"; }
say() { echo "compose-smoke: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }
cleanup() {
  rc=$?
  if [ $rc -ne 0 ] && [ "${KEEP:-}" = 1 ]; then say "left up (KEEP=1): $COMPOSE_PROJECT_NAME"; return; fi
  [ $rc -ne 0 ] && compose --profile monitoring logs --no-color --tail 40 > "$WORK/logs.txt" 2>&1 \
    && say "last logs in $WORK/logs.txt"
  compose --profile monitoring down -v --remove-orphans > /dev/null 2>&1 || true
}
trap cleanup EXIT
json() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
size_mb() { "$DOCKER" image inspect --format '{{.Size}}' "$1" | awk '{printf "%d", $1 / 1e6}'; }

# --- 1. images ------------------------------------------------------------------------------
build() {  # build NAME TARGET TAG BUILDKIT [args...]: seconds on stdout, log in $WORK/NAME.log
  local name=$1 target=$2 tag=$3 kit=$4; shift 4
  local t0=$SECONDS
  DOCKER_BUILDKIT=$kit "$DOCKER" build --progress=plain -f docker/Dockerfile --target "$target" \
      ${ARGS[@]+"${ARGS[@]}"} "$@" -t "$tag" . > "$WORK/$name.log" 2>&1 \
    || { tail -30 "$WORK/$name.log" >&2; fail "build $name"; }
  echo $((SECONDS - t0))
}
[ "$("$DOCKER" version --format '{{.Server.Version}}' 2>/dev/null)" ] || fail "no docker daemon"
# --progress is BuildKit's flag; the classic builder takes no such option
api_classic_t0=$SECONDS
DOCKER_BUILDKIT=0 "$DOCKER" build -f docker/Dockerfile --target api ${ARGS[@]+"${ARGS[@]}"} \
    -t pda-api:$VERSION-cpu . > "$WORK/api-classic.log" 2>&1 \
  || { tail -30 "$WORK/api-classic.log" >&2; fail "classic build of api"; }
api_classic=$((SECONDS - api_classic_t0))
api_kit=$(build api-buildkit api pda-api:$VERSION-cpu 1)
for log in api-classic api-buildkit; do  # a torch stage reads the torch pins into torch.txt
  ! grep -q -e torch.txt -e TORCH_INDEX_URL "$WORK/$log.log" || fail "$log ran a torch stage"
done
! "$DOCKER" run --rm pda-api:$VERSION-cpu python -c "import torch" 2> /dev/null \
  || fail "the API image holds torch"
worker_t=$(build worker worker pda-worker:$VERSION-cpu 1 ${WARGS[@]+"${WARGS[@]}"})
check=$(grep -o 'worker image check: .*' "$WORK/worker.log" | tail -1)
dash_t=$(build dashboard dashboard pda-dashboard:$VERSION 1)
say "built: api ${api_classic}s classic, ${api_kit}s BuildKit; worker ${worker_t}s; dashboard ${dash_t}s"
say "$check"

# Redis: an image whose ENTRYPOINT is redis-server itself (pda-local/redis:7) would get
# compose's `redis-server ...` command twice; give such an image an empty ENTRYPOINT.
REDIS_IMAGE=${REDIS_IMAGE:-$("$DOCKER" image inspect pda-local/redis:7 > /dev/null 2>&1 \
  && echo pda-local/redis:7 || true)}
if [ -n "$REDIS_IMAGE" ]; then
  if "$DOCKER" image inspect --format '{{json .Config.Entrypoint}}' "$REDIS_IMAGE" | grep -q redis-server; then
    printf 'FROM %s\nENTRYPOINT []\n' "$REDIS_IMAGE" | DOCKER_BUILDKIT=0 "$DOCKER" build -q -t pda-smoke-redis:7 - > /dev/null
    REDIS_IMAGE=pda-smoke-redis:7
  fi
  export REDIS_IMAGE
fi
[ -z "${PROMETHEUS_IMAGE:-}" ] && "$DOCKER" image inspect pda-local/prometheus:2 > /dev/null 2>&1 \
  && export PROMETHEUS_IMAGE=pda-local/prometheus:2

# --- 2. the stack ---------------------------------------------------------------------------
t0=$SECONDS
compose up -d --no-build --wait --wait-timeout 600 > "$WORK/up.log" 2>&1 \
  || { cat "$WORK/up.log" >&2; fail "compose up"; }
up_t=$((SECONDS - t0))
say "stack healthy in ${up_t}s on $BASE"

# --- 3. the README's curl session -------------------------------------------------------------
poll() {  # poll ID TIMEOUT: until finished; seconds on stdout
  local id=$1 limit=$2 t0=$SECONDS status
  while :; do
    curl -s "$BASE/v1/explanations/$id" > "$WORK/job-$id.json" || true
    status=$(json "$WORK/job-$id.json" 'd.get("status")' 2> /dev/null || echo "?")
    [ "$status" = finished ] && break
    [ "$status" = failed ] && fail "job $id failed: $(cat "$WORK/job-$id.json")"
    [ $((SECONDS - t0)) -gt "$limit" ] && fail "job $id not finished after ${limit}s ($status)"
    sleep 2
  done
  echo $((SECONDS - t0))
}
submit() { curl -s -F "image=@$1" "$BASE/v1/explanations" | tee "$WORK/submit.json" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'; }
ID=$(submit examples/chelsea.png)
job_t=$(poll "$ID" 900)
curl -s -o "$WORK/overlay.png" -w '%{http_code}' "$BASE/v1/explanations/$ID/overlay.png" \
  | grep -q 200 || fail "overlay"
curl -s -o "$WORK/relevance.json" "$BASE/v1/explanations/$ID/relevance"
python3 -c 'import sys; assert open(sys.argv[1], "rb").read(8) == b"\x89PNG\r\n\x1a\n"' "$WORK/overlay.png" \
  || fail "overlay is not a PNG"
backend=$(json "$WORK/relevance.json" '(d.get("runtime") or {}).get("backend")')
note=$(json "$WORK/relevance.json" '(d.get("runtime") or {}).get("backend_note", "")')
say "job $ID finished in ${job_t}s on backend $backend ${note:+($note)}"
[ "$backend" = openvino ] || fail "the worker ran $backend, not openvino: $note"

same_map() {  # same_map A.json B.json: max |difference| of the relevance grids, fails above 1e-5
  python3 - "$1" "$2" <<'EOF'
import json, sys
a, b = (json.load(open(p))["explanations"] for p in sys.argv[1:3])
assert [e["target"] for e in a] == [e["target"] for e in b], "targets differ"
diff = max(abs(x - y) for ea, eb in zip(a, b) for ra, rb in zip(ea["relevance"], eb["relevance"])
           for x, y in zip(ra, rb))
print(f"{diff:.1e}")
sys.exit(0 if diff <= 1e-5 else 1)
EOF
}

# --- 4. kill the worker mid-job ----------------------------------------------------------------
# The API answers an identical request with the job it already has (same image bytes and
# parameters), so the second job gets the same pixels in other bytes: a PNG text chunk.
python3 scripts/ops/compose_rolling.py --png-variant smoke-kill > "$WORK/chelsea-2.png"
ID2=$(submit "$WORK/chelsea-2.png")
[ "$ID2" != "$ID" ] || fail "the second submission was not a new job"
worker=$(compose ps -q worker | head -1)
t0=$SECONDS
while :; do  # until the sweep has done some passes
  curl -s "$BASE/v1/explanations/$ID2" > "$WORK/job2.json"
  done_=$(json "$WORK/job2.json" '(d.get("progress") or {}).get("done", 0) if d.get("status") == "running" else 0')
  [ "$done_" -gt 0 ] && break
  [ $((SECONDS - t0)) -gt 300 ] && fail "second job never started running"
  sleep 1
done
"$DOCKER" kill "$worker" > /dev/null
"$DOCKER" start "$worker" > /dev/null
say "killed and restarted the worker at $done_ passes"
poll "$ID2" 900 > /dev/null
kill_t=$((SECONDS - t0))
curl -s -o "$WORK/relevance2.json" "$BASE/v1/explanations/$ID2/relevance"
diff2=$(same_map "$WORK/relevance.json" "$WORK/relevance2.json") || fail "killed job's map differs ($diff2)"
attempt=$(json "$WORK/job-$ID2.json" 'd.get("attempt", d.get("attempts", "?"))')
say "killed job finished ${kill_t}s after submit, same map (max diff $diff2, attempt $attempt)"

# --- 5. two workers; Redis restarted ------------------------------------------------------------
compose up -d --no-build --wait --wait-timeout 600 --scale worker=2 > "$WORK/scale.log" 2>&1 \
  || { cat "$WORK/scale.log" >&2; fail "scale to 2 workers"; }
t0=$SECONDS
until [ "$(curl -s "$BASE/readyz" | python3 -c 'import json, sys; print(json.load(sys.stdin)["workers"].get("alive"))' 2> /dev/null)" = 2 ]; do
  [ $((SECONDS - t0)) -gt 120 ] && fail "readyz never counted 2 workers"
  sleep 2
done
say "2 workers alive"
compose restart redis > /dev/null 2>&1
t0=$SECONDS
until curl -sf "$BASE/readyz" > /dev/null; do
  [ $((SECONDS - t0)) -gt 120 ] && fail "API not ready after the Redis restart"
  sleep 1
done
curl -s -o "$WORK/relevance3.json" "$BASE/v1/explanations/$ID/relevance"
diff3=$(same_map "$WORK/relevance.json" "$WORK/relevance3.json") || fail "result lost or changed after the Redis restart"
say "Redis restarted, result of $ID kept"

# --- 6. the dashboard -----------------------------------------------------------------------------
compose --profile monitoring up -d --no-build --wait --wait-timeout 120 rq-dashboard \
    > "$WORK/dash.log" 2>&1 || { cat "$WORK/dash.log" >&2; fail "dashboard"; }
curl -sf -o /dev/null "http://127.0.0.1:$DASHBOARD_PORT/" || fail "dashboard does not answer"

# --- 6b. rolling restart under load (ROLLING=1; it leaves the API on random ports, so last) --
rolling=""
if [ "${ROLLING:-0}" = 1 ]; then
  rolling=$(python3 scripts/ops/compose_rolling.py --docker "$DOCKER") || { echo "$rolling" >&2; fail "rolling restart"; }
  say "$rolling"
  rolling=" | ${rolling#compose-rolling: }"
fi

# --- 7. figures --------------------------------------------------------------------------------
sizes="api $(size_mb pda-api:$VERSION-cpu) MB, worker $(size_mb pda-worker:$VERSION-cpu) MB, dashboard $(size_mb pda-dashboard:$VERSION) MB"
compose --profile monitoring down -v --remove-orphans > /dev/null 2>&1
trap - EXIT
echo "compose-smoke: PASS $(date -u +%FT%TZ) | build api ${api_classic}s classic / ${api_kit}s BuildKit (no torch), worker ${worker_t}s, dashboard ${dash_t}s | images ${sizes} | stack healthy ${up_t}s | README job ${job_t}s, backend ${backend} | worker killed at ${done_} passes: job done ${kill_t}s after submit, same map (${diff2}) | 2 workers | Redis restart: result kept | dashboard up${rolling}"
