#!/usr/bin/env bash
# One-shot GPU measurement for issue 18: the Triton kernels, certification speed, an ℓ∞-dist training
# and the distributed trainer, on an H100/H200, within 8 minutes, everything written under $OUT.
#
# Contract (how the device machine launches it, from the repository root):
#   bash benchmarks/gpu_check.sh
#     OUT       set by the machine: an empty folder; only summary.md, results.json and logs.txt are
#               written there (the tool brings back at most 8 files).
#     data      Fashion-MNIST IDX .gz files in data/fashion-mnist (ignored by git; the caller copies
#               /usr/share/datasets/fashion-mnist there and names it in the tool's carry list).
#               DATA_DIR overrides the folder.
#     project   used from the working tree through PYTHONPATH (set here); no install needed.
#     python    $PYTHON, default python3 (the machine's python3 has torch, triton, scipy, ...).
#   With the device tool: command `bash benchmarks/gpu_check.sh`, carry ["data/fashion-mnist"],
#   timeout_s 540 (the script stops itself by ~490 s at worst).
#   GPU_CHECK_STEPS=a,b,...  runs only the named steps (the others are recorded as skipped), e.g.
#   the steps still open after the 2026-11-27 H200 run (it met the tests, bf16, NCCL checks):
#     GPU_CHECK_STEPS=env,tests_gpu,lp_dist_small,lp_dist_large,lp_dist_tiles,certify_throughput,certify_compile,r110_train,certify_trained,linf_train,linf_certify
#     GPU_CHECK_BUDGET=480 bash benchmarks/gpu_check.sh   (timeout_s 560)
#   QUICK=1 bash benchmarks/gpu_check.sh   (or: bash benchmarks/gpu_check.sh --quick)
#     a CPU dry run of every step with tiny sizes (under 2 minutes on 2 cores): lp_dist at 64×128
#     and 64×256, certification with LeNet at N = 2000, 3 ℓ∞ epochs on 2000 images, torchrun with
#     gloo; the GPU-marked tests are reported as skipped.
#
# Time budget (GPU). Each step runs under `timeout` with its own limit, and never past a global
# deadline of GPU_CHECK_BUDGET seconds (default 450 s = 7.5 min) less what the steps after it need;
# a step that would get under 15 s is skipped and recorded as such. The summary gets at most 30 s
# (it needs ~5), so even the worst case ends by 450 + 10 (timeout's kill grace) + 30 = 490 s, inside
# the 540 s the device call is given. Expected times are those measured on an H200 (2026-11-27).
#   step                  limit   expected   what
#   env                     30        5      card, versions, nvidia-smi
#   tests_gpu               60       20      pytest -m gpu on the files that have GPU marks (collecting
#                                            all of tests/ took ~73 s on the H200: not done)
#   tests_triton            60       30      tests/test_lp_dist_triton.py (compiled kernels on CUDA)
#   lp_dist_small           40       20      B=512, CI=CO=1024: ours/cdist/triton/triton-outer
#   lp_dist_large           60       35      B=512, CI=CO=5120
#   lp_dist_tiles           30       15      p=8, CI=CO=1024: the outer-product forward's tile sizes
#   certify_throughput     100       70      cifar_resnet110 (random weights), N=100,000, 2 images,
#                                            2 repeats: reference loop, Smooth fp32, bf16,
#                                            bf16+channels_last with and without cudnn.benchmark
#                                            (and the bare forward)
#   certify_compile        150      110      the torch.compile variants (bf16, CUDA graphs, full
#                                            batches only: one shape, one compilation of ~45 s each),
#                                            plain and channels_last, 1 image, 1 repeat; a step of its
#                                            own so that a slow compile cannot cost the numbers above
#   r110_train              90       60      cifar_resnet110, Gaussian σ = 0.25 on Fashion-MNIST, 3
#                                            epochs, bf16 + channels_last
#   certify_trained        150      100      on it, N=100,000, 4 test images: reference loop, Smooth
#                                            bf16 (+channels_last), sequential, sequential+compile
#   precision_fp32/bf16   25+25     10+10    trained LeNet, 100 images, N=10,000
#   nccl_probe              25        8      torchrun: NCCL all_reduce + certify's DDP wrapper
#   nccl_train              45       20      torchrun --nproc-per-node 1: one SmoothMix epoch
#   nccl_certify            25        8      certify run accepts its checkpoint
#   linf_train             150      ~80      ℓ∞-dist net, 10 epochs on all 60,000 images (3 at
#                                            p=8, 4 ramping through non-integer p, 3 at ∞); gets
#                                            what is left (~80 s if the steps above take what is
#                                            expected); its per-epoch log and checkpoint survive a
#                                            timeout, so a cut-short run still gives s/epoch by p
#   linf_certify            25       10      certify run --count 1000 on its checkpoint
#   seq_cohen, seq_sequential  30+30  optional: only if time is left (cohen vs sequential, N=100,000)
# The limits add up to more than the budget on purpose: they catch hangs, while the deadline keeps
# the total inside 8 minutes; the ℓ∞ training (last, and useful even when cut short) absorbs overruns.
#
# Intermediate files (checkpoints, TSVs, full logs) stay in a temporary folder ($WORK, printed).
# No `set -e`: a failing step is recorded (status, exit code, seconds) and the others still run.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1

QUICK=${QUICK:-0}
if [[ "${1:-}" == "--quick" ]]; then
    QUICK=1
fi
: "${OUT:?set OUT to the folder that receives summary.md, results.json and logs.txt}"
mkdir -p "$OUT"

PYTHON=${PYTHON:-python3}
DATA_DIR=${DATA_DIR:-data/fashion-mnist}
if [[ ! -d "$DATA_DIR" && -d /usr/share/datasets/fashion-mnist ]]; then
    # a dry run on a machine that has the Debian dataset but no carried copy
    DATA_DIR=/usr/share/datasets/fashion-mnist
fi
LENET=models/fashion-mnist-lenet-sigma0.25.pt
# COMPILE_MODE: the torch.compile mode of the compile variant (reduce-overhead = CUDA graphs; the
# max-autotune modes compile for minutes on resnet110, too long for this budget)
COMPILE_MODE=${COMPILE_MODE:-reduce-overhead}

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # logs are complete up to the moment a timeout kills a step

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpucheck.XXXXXX")
mkdir -p "$WORK/logs"
STEPS="$WORK/steps.tsv"
printf 'name\trc\tseconds\tlimit_s\tstatus\tcommand\n' > "$STEPS"

if [[ "$QUICK" == 1 ]]; then
    MODE=quick
    DEVICE=cpu
    BUDGET=${GPU_CHECK_BUDGET:-900}  # a 2-core CPU is slow; this only guards against hangs
else
    MODE=gpu
    DEVICE=cuda
    BUDGET=${GPU_CHECK_BUDGET:-450}
fi
MIN_STEP=15
# GPU_CHECK_STEPS: a comma list of the steps to run (default: all); the others are recorded as skipped
ONLY=${GPU_CHECK_STEPS:-}
DEADLINE=$((SECONDS + BUDGET))

log() { echo "[gpu_check +${SECONDS}s] $*"; }

# run_step NAME LIMIT KEEP -- COMMAND [ARGS...]
#   Runs COMMAND with its output in $WORK/logs/NAME.log, under timeout min(LIMIT, time left before
#   the deadline - KEEP), KEEP being what the steps that must follow it need. Appends one row to
#   $STEPS. Always returns 0 so that the next step runs.
run_step() {
    local name=$1 limit=$2 keep=$3
    shift 4
    local logfile="$WORK/logs/$name.log"
    if [[ -n "$ONLY" && ",$ONLY," != *",$name,"* ]]; then
        echo "skipped: not selected (GPU_CHECK_STEPS=$ONLY)" > "$logfile"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "" 0 "$limit" "skipped" "$*" >> "$STEPS"
        return 0
    fi
    local left=$((DEADLINE - SECONDS))
    local cap=$((left - keep))
    if ((cap > limit)); then
        cap=$limit
    fi
    if ((cap < MIN_STEP)); then
        echo "skipped: ${left}s left before the deadline, ${keep}s kept for later steps" > "$logfile"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "" 0 "$limit" "skipped" "$*" >> "$STEPS"
        log "$name: skipped (out of time)"
        return 0
    fi
    log "$name: start (limit ${cap}s)"
    echo "\$ $*" > "$logfile"
    local start end rc status
    start=$(date +%s.%N)
    # --kill-after: a step that ignores SIGTERM (a hung NCCL call) is killed 10 s later; timeout
    # signals the whole process group, so torchrun's workers go too
    timeout --kill-after=10 "$cap" "$@" >> "$logfile" 2>&1
    rc=$?
    end=$(date +%s.%N)
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    local seconds
    seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$seconds" "$cap" "$status" "$*" >> "$STEPS"
    log "$name: $status (exit $rc) in ${seconds}s"
    return 0
}

log "mode $MODE, device $DEVICE, budget ${BUDGET}s, work folder $WORK, data $DATA_DIR, out $OUT"

# ---- sizes: the issue's on the GPU, tiny ones for the CPU dry run
if [[ "$MODE" == gpu ]]; then
    LP_ARGS=(--device cuda --batch 512 --impls ours cdist triton triton-outer)
    LP_SMALL=1024
    LP_LARGE=5120
    CT_ARGS=(--arch cifar_resnet110 --n 100000 --device cuda)
    CT_COMPILE_MODE=$COMPILE_MODE
    PREC_ARGS=(--count 100 --n 10000 --device cuda)
    NCCL_TRAIN_ARGS=(--train-count 20000 --eval-count 1000 --device cuda)
    NCCL_RUN_ARGS=(--count 20 --n 1000 --device cuda)
    LINF_ARGS=(--epochs 10 --p-start-epoch 3 --p-end-epoch 7 --device cuda)
    LINF_RUN_ARGS=(--count 1000 --device cuda)
    SEQ_ARGS=(--count 100 --n 100000 --device cuda)
    R110_ARGS=(--arch cifar_resnet110 --epochs 3 --amp bf16 --channels-last --eval-count 1000 --device cuda)
    TRAINED_ARGS=(--n 100000 --examples 4 --device cuda --compile-mode reduce-overhead)
else
    LP_ARGS=(--device cpu --batch 64 --impls ours cdist triton triton-outer --repeats 2)
    LP_SMALL=128
    LP_LARGE=256
    CT_ARGS=(--arch lenet --n 2000 --device cpu)
    CT_COMPILE_MODE=default
    PREC_ARGS=(--count 20 --n 1000 --device cpu)
    NCCL_TRAIN_ARGS=(--train-count 2000 --eval-count 200 --device cpu)
    NCCL_RUN_ARGS=(--count 5 --n 500 --device cpu)
    LINF_ARGS=(--epochs 3 --p-start-epoch 1 --p-end-epoch 2 --train-count 2000 --eval-count 200
               --device cpu)
    LINF_RUN_ARGS=(--count 200 --device cpu)
    SEQ_ARGS=(--count 5 --n 2000 --device cpu)
    R110_ARGS=(--arch lenet --epochs 1 --train-count 2000 --eval-count 200 --device cpu)
    TRAINED_ARGS=(--n 2000 --examples 2 --device cpu --compile-mode default)
fi
PYTEST=("$PYTHON" -m pytest -v -rfEs -p no:cacheprovider)

# ---- 0. what machine this is (card, versions); the summary reads env.json
run_step env 30 0 -- "$PYTHON" benchmarks/gpu_summary.py env --json "$WORK/env.json"

# ---- 1. tests: the GPU-marked ones, then the Triton file's others (on CUDA: compiled kernels
# against the float64 reference at p = 8, non-integer p, 1000, ∞, ragged shapes, gradcheck; on the
# CPU the same file runs under Triton's interpreter in ~10 s)
# only the files with GPU marks are collected: collecting all of tests/ took ~73 s on the H200
mapfile -t GPU_TEST_FILES < <(grep -l "mark\.gpu" tests/test_*.py)
run_step tests_gpu 60 0 -- "${PYTEST[@]}" -m gpu "${GPU_TEST_FILES[@]}"
run_step tests_triton 60 0 -- "${PYTEST[@]}" -m "not gpu" tests/test_lp_dist_triton.py

# ---- 2. lp_dist throughput against torch.cdist (and the FP32 peak fraction on CUDA)
run_step lp_dist_small 40 0 -- "$PYTHON" benchmarks/lp_dist.py "${LP_ARGS[@]}" \
    --in-features "$LP_SMALL" --out-features "$LP_SMALL" --json "$WORK/lp_dist_small.json"
run_step lp_dist_large 60 0 -- "$PYTHON" benchmarks/lp_dist.py "${LP_ARGS[@]}" \
    --in-features "$LP_LARGE" --out-features "$LP_LARGE" --json "$WORK/lp_dist_large.json"
# the outer-product forward's tiles at p = 8 (its table is in logs.txt): which, if any, reaches 30 %
run_step lp_dist_tiles 30 0 -- "$PYTHON" benchmarks/lp_dist.py "${LP_ARGS[@]:0:4}" --p 8 \
    --impls triton triton-outer --outer-tiles 32x32x4 32x64x4 64x64x8 128x64x8 \
    --in-features "$LP_SMALL" --out-features "$LP_SMALL" --json "$WORK/lp_dist_tiles.json"

# ---- 3. certification throughput (random weights) and the bf16-vs-fp32 check on a trained model
run_step certify_throughput 100 0 -- "$PYTHON" benchmarks/certify_throughput.py "${CT_ARGS[@]}" \
    --examples 2 --repeats 2 --precision fp32,bf16 \
    --variants bf16+channels_last,bf16+channels_last+cudnn_benchmark --json "$WORK/certify_throughput.json"
run_step certify_compile 150 0 -- "$PYTHON" benchmarks/certify_throughput.py "${CT_ARGS[@]}" \
    --examples 1 --repeats 1 --precision bf16 --variants compile,compile+channels_last \
    --compile-mode "$CT_COMPILE_MODE" \
    --json "$WORK/certify_compile.json"
# a trained ResNet-110 (Gaussian noise σ = 0.25 on Fashion-MNIST, a few epochs: certification
# speed needs a model whose votes are not all one class, for the sequential method above all), then
# the reference loop against Smooth and the sequential method on it, at N = 100,000
run_step r110_train 90 0 -- "$PYTHON" -m certify train --recipe fmnist-gaussian-s0.25-short \
    "${R110_ARGS[@]}" --data-dir "$DATA_DIR" --out "$WORK/r110.pt" --force -q
if [[ -f "$WORK/r110.pt" ]]; then
    run_step certify_trained 150 0 -- "$PYTHON" benchmarks/certify_throughput.py \
        --checkpoint "$WORK/r110.pt" --data-dir "$DATA_DIR" "${TRAINED_ARGS[@]}" --repeats 1 \
        --precision bf16 --variants bf16+channels_last,sequential,sequential+compile \
        --json "$WORK/certify_trained.json"
fi
for precision in fp32 bf16; do
    run_step "precision_$precision" 25 0 -- "$PYTHON" -m certify run "$LENET" \
        --data-dir "$DATA_DIR" "${PREC_ARGS[@]}" --precision "$precision" \
        --out "$WORK/precision_$precision.tsv" --force
done

# ---- 4. torchrun (issue item 5, before the elastic ℓ∞ training): NCCL itself, then the trainer
# (`--` keeps torchrun's parser off certify's options). Under --nproc-per-node 1 the trainer joins a
# process group of one and takes the data-parallel path (NCCL on the GPU); the probe checks NCCL and
# certify's DDP wrapper directly as well, so a trainer failure still says whether the card's NCCL works.
cat > "$WORK/nccl_probe.py" <<'EOF'
"""One collective and one DDP step through certify's wrapper, in a torchrun process."""
import os

import torch
import torch.distributed as dist

from certify.training import distributed

cuda = torch.cuda.is_available() and os.environ.get("GPU_CHECK_MODE") != "quick"
device = torch.device("cuda", 0) if cuda else torch.device("cpu")
if cuda:
    torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl", device_id=device)
else:
    dist.init_process_group(backend="gloo")
total = torch.ones(4, device=device) * (dist.get_rank() + 1)
dist.all_reduce(total)
model = distributed.wrap_model(torch.nn.Linear(8, 2).to(device), device)
model(torch.randn(3, 8, device=device)).sum().backward()
print(f"probe: backend {dist.get_backend()} world {dist.get_world_size()} "
      f"all_reduce {total.tolist()} ddp backward ok", flush=True)
dist.destroy_process_group()
EOF
TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1)
run_step nccl_probe 25 0 -- env NCCL_DEBUG=INFO GPU_CHECK_MODE="$MODE" "${TORCHRUN[@]}" \
    "$WORK/nccl_probe.py"
run_step nccl_train 45 0 -- env NCCL_DEBUG=INFO "${TORCHRUN[@]}" -m certify -- train \
    --recipe fmnist-smoothmix-s0.25-short --epochs 1 "${NCCL_TRAIN_ARGS[@]}" --data-dir "$DATA_DIR" \
    --out "$WORK/sm.pt" --force -q
run_step nccl_certify 25 0 -- "$PYTHON" -m certify run "$WORK/sm.pt" --data-dir "$DATA_DIR" \
    "${NCCL_RUN_ARGS[@]}" --out "$WORK/sm.tsv" --force

# ---- 5. ℓ∞-dist training (issue item 4): it gets what is left (keeping 40 s for its certification and the summary)
run_step linf_train 150 40 -- "$PYTHON" -m certify train --recipe fmnist-linf-v2-short \
    "${LINF_ARGS[@]}" --data-dir "$DATA_DIR" --out "$WORK/linf.pt" --log "$WORK/linf.jsonl" --force -q
if [[ -f "$WORK/linf.pt" ]]; then  # written after every epoch, so it exists even after a timeout
    run_step linf_certify 25 15 -- "$PYTHON" -m certify run "$WORK/linf.pt" --data-dir "$DATA_DIR" \
        "${LINF_RUN_ARGS[@]}" --out "$WORK/linf.tsv" --force
fi

# ---- optional: sequential against cohen on the trained LeNet, only with time to spare
run_step seq_cohen 30 45 -- "$PYTHON" -m certify run "$LENET" --data-dir "$DATA_DIR" "${SEQ_ARGS[@]}" \
    --out "$WORK/seq_cohen.tsv" --force -q
if [[ -f "$WORK/seq_cohen.tsv" ]]; then
    run_step seq_sequential 30 15 -- "$PYTHON" -m certify run "$LENET" --data-dir "$DATA_DIR" \
        "${SEQ_ARGS[@]}" --method sequential --out "$WORK/seq_sequential.tsv" --force -q
fi

# ---- summary: summary.md, results.json and logs.txt in $OUT
log "summary"
if ! timeout 30 "$PYTHON" benchmarks/gpu_summary.py summarize --work "$WORK" --out "$OUT" \
        --mode "$MODE" --budget "$BUDGET" --elapsed "$SECONDS"; then
    # the summary script failed: still bring back the step table and the log tails
    log "gpu_summary.py failed; writing a plain summary"
    {
        echo "# GPU check ($MODE): gpu_summary.py failed, plain step table"
        echo
        echo '```'
        cat "$STEPS"
        echo '```'
    } > "$OUT/summary.md"
    for f in "$WORK"/logs/*.log; do
        echo "==== $(basename "$f" .log)"
        tail -n 40 "$f"
    done > "$OUT/logs.txt"
fi
log "done in ${SECONDS}s; intermediate files in $WORK"
cat "$OUT/summary.md"
