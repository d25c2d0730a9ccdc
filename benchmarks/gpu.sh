#!/usr/bin/env bash
# The GPU checks in one go, for a lent GPU machine: the GPU tests, then `mmfinercam bench` on CUDA
# in bf16 (eager, torch.compile, CUDA graphs), fp32 (with the peers) and fp16; a profile.
#
#   bash benchmarks/gpu.sh [OUT]     # OUT defaults to $OUT, else mmfinercam-bench/gpu
#
# Needs torch with CUDA plus this project's dependencies; gem_torch in .gem-ref (see
# mmfinercam/bench.py). Writes env.txt, tests.txt, one JSON report per setting and log.txt under
# OUT; `python benchmarks/report.py OUT/*.json` turns the reports into RESULTS.md tables.
set -u
out=${1:-${OUT:-mmfinercam-bench/gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
log="$out/log.txt"
step() { echo "== $*" | tee -a "$log"; }

step environment
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, open_clip, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  '| open_clip', open_clip.__version__, '| transformers', transformers.__version__, '|', torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee "$out/env.txt"

bench() {  # NAME SECONDS ARGS...: one report, kept as NAME.json
  local name=$1 limit=$2; shift 2
  step "bench $name: $*"
  rm -rf "/tmp/bench-$name"  # no stale report from an earlier run
  timeout "$limit" python3 -m mmfinercam bench --device cuda --out "/tmp/bench-$name" "$@" 2>&1 | tee -a "$log"
  cp "/tmp/bench-$name/bench.json" "$out/$name.json" 2>/dev/null || echo "bench $name: no report" | tee -a "$log"
}

common=(--repeats 20 --batch 4 --batches 1 4 16 64 256)
bench bf16 60 --dtype bf16 "${common[@]}" --sizes 224 448 896 --no-peers
bench bf16-compile 110 --dtype bf16 --compile --repeats 10 --batch 4 --concepts 1 100 --batches 64 256 --sizes
step "GPU tests"
timeout 80 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$out/tests.txt" | tail -3
bench bf16-graphs 110 --dtype bf16 --compile --compile-mode reduce-overhead --repeats 10 --batch 4 \
  --concepts 1 100 --batches 1 16 --sizes
bench fp32 70 --dtype fp32 "${common[@]}" --sizes 224 448 896
bench fp16 50 --dtype fp16 "${common[@]}" --sizes 224 --no-peers
step "profile"
timeout 40 python3 benchmarks/profile_gpu.py --dtype bf16 --batches 256 --table 2>&1 | tee -a "$log" | grep "^b="
step done
