#!/usr/bin/env bash
# The test suite: every crate's unit, integration and doc tests, with the real embedding model
# and ONNX Runtime (fetched by scripts/fetch-models.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export AGENTD_MODELS_DIR="${AGENTD_MODELS_DIR:-$PWD/.models}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$AGENTD_MODELS_DIR/onnxruntime/libonnxruntime.so}"
cargo test --workspace --all-targets
cargo test --workspace --doc
