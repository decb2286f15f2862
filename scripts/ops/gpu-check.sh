#!/usr/bin/env bash
# One prepared command for a bare CUDA machine (Python 3.12 and its own torch, no package
# index): the GPU tests, `pda bench` of the CUDA backends and precisions, the paper job's
# time for EfficientNet-Lite0 and VGG16 (random weights), and one service job end to end
# on a GPU worker; everything goes to one file. Sized for < 8 minutes (each step has its
# own limit, 475 s in all; a step that fails or times out is recorded and the next
# one runs).
#
#   scripts/ops/fetch-gpu-wheels.sh                 # here, once: wheels into scripts/ops/gpu-wheels/
#   scripts/ops/gpu-check.sh [OUTFILE]              # there; default $OUT/gpu-check.txt or ./
#   scripts/ops/gpu-check.sh --cpu-dry-run [OUTFILE]  # here: every step on the CPU, small sizes
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DRY=0
if [[ "${1:-}" == "--cpu-dry-run" ]]; then DRY=1; shift; fi
REPORT=${1:-${OUT:-$ROOT}/gpu-check.txt}
mkdir -p "$(dirname "$REPORT")"
: > "$REPORT"
cd "$ROOT" || exit 1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
SCRATCH=$(mktemp -d)
export PDA_BACKEND_CACHE_DIR=$SCRATCH/backends       # cold: the first-job cost is measured
export TORCHINDUCTOR_CACHE_DIR=$SCRATCH/inductor     # shared by the steps: compile once
PY=${PYTHON:-python3}
START=$(date +%s)

if (( DRY )); then
  DEVICE=cpu; BACKENDS=torch,openvino; PRECISIONS=bf16; BENCH=(--seconds 4 --rounds 1)
  FRACTION_LITE=0.0005; FRACTION_VGG=0.00005; JOB="-F stride=56 -F samples=2"
  VGG_BACKEND=torch  # converting VGG-16 for OpenVINO is a minute here; the GPU compiles
else
  DEVICE=cuda; BACKENDS=torch,compile; PRECISIONS=bf16,fp16; BENCH=(--seconds 20 --rounds 3)
  FRACTION_LITE=1; FRACTION_VGG=0.05; JOB=""; VGG_BACKEND=auto
fi
export ROOT SCRATCH PY DEVICE JOB

log() { echo "$*" | tee -a "$REPORT"; }

step() {  # step NAME TIMEOUT_S 'COMMAND': run it, its output and status into the report
  local name=$1 limit=$2 cmd=$3
  local t0
  t0=$(date +%s)
  log ""
  log "=== $name (limit ${limit} s; $(( t0 - START )) s into the check) ==="
  log "\$ $cmd"
  timeout --kill-after=10 "$limit" bash -c "$cmd" >> "$REPORT" 2>&1
  local rc=$?
  log "--- $name: exit $rc$( ((rc == 124)) && echo ' (timed out)'), $(( $(date +%s) - t0 )) s"
}

environment() {
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  $PY - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda",
      torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
EOF
}

install_missing_wheels() {  # only what the machine lacks; never touches its torch
  local missing
  missing=$($PY - "$ROOT/scripts/ops/gpu-wheels.txt" <<'EOF'
import re, sys
from importlib.metadata import PackageNotFoundError, version
names = [re.split(r"[<>=!;\s\[]", ln.strip())[0] for ln in open(sys.argv[1])
         if ln.strip() and not ln.lstrip().startswith("#")] + ["torchvision"]
for n in names:
    try:
        version(n)
    except PackageNotFoundError:
        print(n)
EOF
)
  if [[ -z "$missing" ]]; then echo "all present"; return 0; fi
  echo "installing: $missing"
  # shellcheck disable=SC2086
  $PY -m pip install --no-index --no-deps --find-links "$ROOT/scripts/ops/gpu-wheels" $missing
}

service_job() {  # embedded `pda serve` (in-process queue and GPU worker) + curl
  local port=8765 base="http://127.0.0.1:8765" pid id status="" i
  PDA_DEVICE=$DEVICE PDA_WORKER_MODELS=efficientnet_lite0 PDA_BACKEND=auto \
    $PY -m pda serve --port $port > "$SCRATCH/serve.log" 2>&1 &
  pid=$!
  for i in $(seq 1 90); do
    curl -sf "$base/readyz" > /dev/null && break
    sleep 1
  done
  curl -s "$base/readyz"; echo
  # shellcheck disable=SC2086
  curl -s -F image=@examples/chelsea.png $JOB "$base/v1/explanations" \
    > "$SCRATCH/job.json"
  cat "$SCRATCH/job.json"; echo
  id=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$SCRATCH/job.json")
  for i in $(seq 1 120); do
    status=$(curl -s "$base/v1/explanations/$id" | $PY -c \
      'import json,sys; print(json.load(sys.stdin)["status"])')
    [[ "$status" == finished || "$status" == failed ]] && break
    sleep 1
  done
  echo "status: $status"
  curl -s "$base/v1/explanations/$id/relevance" | $PY -c '
import json, sys
d = json.load(sys.stdin)
print(json.dumps({k: d.get(k) for k in ("runtime", "stats", "prediction", "params")}))'
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  echo "--- server log (tail)"; tail -n 15 "$SCRATCH/serve.log"
  [[ "$status" == finished ]]
}

export -f environment install_missing_wheels service_job
log "pda gpu-check $( ((DRY)) && echo '(CPU dry run)' ) $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
step "environment" 15 environment
step "wheels" 30 install_missing_wheels
step "pytest -m gpu" 70 "$PY -m pytest -m gpu -q -p no:cacheprovider tests/pda/test_backends.py"
step "pda bench --backends" 110 "$PY -m pda bench --device $DEVICE --backends $BACKENDS \
  --precisions $PRECISIONS ${BENCH[*]}"
step "paper job: efficientnet_lite0" 85 "$PY scripts/measure/gpu_paper_job.py --device $DEVICE \
  --fraction $FRACTION_LITE"
step "paper job: vgg16 (random weights; fp32, bf16)" 90 "$PY scripts/measure/gpu_paper_job.py \
  --model vgg16 --random-weights --device $DEVICE --fraction $FRACTION_VGG \
  --backend $VGG_BACKEND --precision fp32,bf16"
step "service job end to end" 75 service_job
log ""
log "total $(( $(date +%s) - START )) s; report: $REPORT"
rm -rf "$SCRATCH"
