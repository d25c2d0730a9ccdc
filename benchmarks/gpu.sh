#!/usr/bin/env bash
# The GPU checks in one go, for a lent GPU machine: the fused kernels' checks and timings, the
# GPU tests, then `mmfinercam bench` on CUDA in bf16 (eager, torch.compile, CUDA graphs), fp32 (with
# the peers) and fp16; a profile.
#
#   bash benchmarks/gpu.sh [OUT] [STEP...]   # OUT defaults to $OUT, else mmfinercam-bench/gpu
#
# STEPs (default: all, in this order): kernel addnorm bf16 target quickgelu profile tests compile
# graphs fp32 fp16. "target" is issue 7's GPU headline: bf16 at batch 256 (and 64, 512), 30 paired
# rounds; "quickgelu" the same call for a tower with QuickGELU, as OpenAI's CLIP has.
# Needs torch with CUDA and triton plus this project's dependencies; gem_torch in .gem-ref (see
# mmfinercam/apps/bench.py). Writes env.txt, kernel.txt, tests.txt, one JSON report per setting and
# log.txt under OUT; `python benchmarks/report.py OUT/*.json` turns the reports into RESULTS.md
# tables.
set -u
out=${1:-${OUT:-mmfinercam-bench/gpu}}
shift || true
steps=${*:-kernel addnorm bf16 target quickgelu profile tests compile graphs fp32 fp16}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
log="$out/log.txt"
step() { echo "== $*" | tee -a "$log"; }

step environment
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, triton, open_clip, transformers; print('torch', torch.__version__, 'cuda',
  torch.version.cuda, '| triton', triton.__version__, '| open_clip', open_clip.__version__,
  '| transformers', transformers.__version__, '|', torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee "$out/env.txt"

bench() {  # NAME SECONDS ARGS...: one report, kept as NAME.json
  local name=$1 limit=$2; shift 2
  step "bench $name: $*"
  rm -rf "/tmp/bench-$name"  # no stale report from an earlier run
  timeout "$limit" python3 -m mmfinercam bench --device cuda --out "/tmp/bench-$name" "$@" 2>&1 | tee -a "$log"
  cp "/tmp/bench-$name/bench.json" "$out/$name.json" 2>/dev/null || echo "bench $name: no report" | tee -a "$log"
}

common=(--repeats 20 --batch 4 --batches 1 4 16 64 256)
for s in $steps; do
  case $s in
    kernel) step "fused self-self attention kernel"
      timeout 120 python3 benchmarks/ss_kernel_gpu.py --configs 2>&1 | tee "$out/kernel.txt" ;;
    addnorm) step "fused kernels of the tower: residual add and LayerNorm, QuickGELU"
      timeout 60 python3 benchmarks/tower_kernels_gpu.py --shapes 2>&1 | tee "$out/tower_kernels.txt" ;;
    bf16) bench bf16 90 --dtype bf16 "${common[@]}" --sizes 224 448 896 --no-peers ;;
    target) bench bf16-b256 150 --dtype bf16 --repeats 30 --batch 256 --concepts 1 100 1000 --batches 64 512 \
      --sizes --no-peers ;;
    quickgelu) bench bf16-quickgelu 120 --model ViT-B-16-quickgelu --dtype bf16 --repeats 20 --batch 256 \
      --concepts 1 100 --batches --sizes --no-peers ;;
    profile) step "profile"
      timeout 60 python3 benchmarks/profile_gpu.py --dtype bf16 --batches 4 16 64 256 2>&1 | tee -a "$log" | grep "^b=" ;;
    tests) step "GPU tests"
      timeout 150 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$out/tests.txt" | tail -5 ;;
    compile) bench bf16-compile 200 --dtype bf16 --compile --repeats 10 --batch 4 --concepts 1 100 --batches 64 256 --sizes ;;
    graphs) bench bf16-graphs 110 --dtype bf16 --compile --compile-mode reduce-overhead --repeats 10 --batch 4 \
      --concepts 1 100 --batches 1 16 --sizes ;;
    fp32) bench fp32 70 --dtype fp32 "${common[@]}" --sizes 224 448 896 ;;
    fp16) bench fp16 60 --dtype fp16 "${common[@]}" --sizes 224 --no-peers ;;
    *) echo "unknown step $s" | tee -a "$log" ;;
  esac
done
step done
