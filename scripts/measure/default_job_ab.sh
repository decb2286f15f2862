#!/usr/bin/env bash
# The default job end to end, A/B interleaved: today's default spelled out (A) against the
# new default (B), one `python -m pda explain` per photo and side, alternating A, B, B, A
# photo by photo (so neither side always runs first), from the CLI with start-up included.
#
#   BASE=/tmp/base scripts/measure/default_job_ab.sh OUT PHOTO...
#
# BASE: a checkout of the code before the change (e.g. `git archive 7b66642 | tar -x -C
# /tmp/base`), whose defaults are today's (conditional, window 32, stride 8, 2 samples,
# the faithfulness scores at step 0.02 with 3 random orders); A runs it with the sweep's
# settings spelled out. B runs this checkout with no settings. Prints one line per run
# (side, photo, wall seconds, the job's stats.seconds and forward passes) and writes
# OUT/runs.tsv; the maps stay in OUT/{A,B}-PHOTO/.
set -euo pipefail
mkdir -p "$1"
out=$(realpath "$1"); shift
here=$(cd "$(dirname "$0")/../.." && pwd)
: > "$out/runs.tsv"
lscpu | grep 'Model name' | tee "$out/machine.txt"
run() {  # side photo
  local side=$1 photo name dir t0 t1
  photo=$(realpath "$2")
  name=$(basename "${photo%.*}")
  dir="$out/$side-$name"
  t0=$(date +%s.%N)
  # each side from its own root: `python -m` puts the working directory first on the path
  if [ "$side" = A ]; then
    (cd "$BASE" && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$BASE" python -m pda explain \
      "$photo" --sampler conditional --window 32 --stride 8 --samples 2 --out "$dir" --quiet)
  else
    (cd "$here" && PYTHONPATH="$here" python -m pda explain "$photo" --out "$dir" --quiet)
  fi
  t1=$(date +%s.%N)
  python - "$side" "$name" "$t0" "$t1" "$dir" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'EOF' | tee -a "$out/runs.tsv"
import json, sys
side, name, t0, t1, d, load = sys.argv[1:]
doc = json.load(open(f"{d}/result.json"))
st = doc["stats"]
print(f"{side}\t{name}\t{float(t1) - float(t0):.1f}\t{st['seconds']:.1f}\t"
      f"{st['forward_passes']}\t{load}")
EOF
}
i=0
for photo in "$@"; do
  if [ $((i % 2)) -eq 0 ]; then run A "$photo"; run B "$photo"; else run B "$photo"; run A "$photo"; fi
  i=$((i + 1))
done
