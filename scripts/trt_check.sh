#!/usr/bin/env bash
# Issue 19 item 2 as one short GPU run: TensorRT INT8 (QDQ) and FP16 engines of `--target jetson` bundles, golden
# self-test, parity vs ONNX Runtime FP32 and batch-1 latency (python -m bench.trt; one table + JSON).
#
#   bash scripts/trt_check.sh prepare RUN [DIR]   # here (workstation): jetson INT8 + FP16 bundles and test images
#                                                 # into DIR (default build/trt-carry/, gitignored), about 30 MB
#   bash scripts/trt_check.sh run [DIR]           # on the GPU machine: needs python3 with `tensorrt` importable
#                                                 # (JetPack's python3-libnvinfer, or NVIDIA's wheels) and
#                                                 # cuda-python; small pure wheels in DIR/wheels are installed first
#
# Not run on a GPU yet: the TensorRT libraries are not obtainable from PyPI here (tensorrt-cu13-libs 11.4.0.106 is
# a stub sdist that downloads from NVIDIA's own index at install time) and so cannot be carried to a lent machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
case "$cmd" in
  prepare)
    RUN=${2:?usage: trt_check.sh prepare RUN [DIR]}
    DIR=${3:-build/trt-carry}
    PY=.venv/bin/python
    rm -rf "$DIR" && mkdir -p "$DIR"
    for p in int8 fp16; do
      "$PY" -m deploy.cli --target jetson "$RUN" --out "$DIR/j-$p" --precision "$p" "${@:4}"
      rm -f "$DIR/j-$p.tar.gz"
    done
    data=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['dataset'])" "$RUN/model.json")
    cp -r "$data/test" "$DIR/images"
    # the edge package's pure-Python needs that the GPU image lacks (python 3.12 there)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$DIR/wheels" pydantic pydantic-core annotated-types typing-inspection paho-mqtt cryptography cffi \
      pycparser 2> >(grep -v "is ignored" >&2)
    "$PY" -m bench.trt "$DIR/j-int8" "$DIR/j-fp16" --images "$DIR/images" --dry-run --out "$DIR/dry-run"
    du -sh "$DIR"
    ;;
  run)
    DIR=${2:-build/trt-carry}
    OUTDIR=${OUT:-bench-out}/trt
    if ls "$DIR"/wheels/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/lineside-site "$DIR"/wheels/*.whl
      export PYTHONPATH=/tmp/lineside-site
    fi
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader || true
    python3 -c "import tensorrt, cuda.bindings; print('tensorrt', tensorrt.__version__)" || {
      echo "trt_check: tensorrt/cuda-python not importable here: nothing to run" >&2; exit 1; }
    python3 -m bench.trt "$DIR/j-int8" "$DIR/j-fp16" --images "$DIR/images" --cache-dir /tmp/lineside-trt-cache \
      --out "$OUTDIR"
    ;;
  *)
    echo "usage: trt_check.sh prepare RUN [DIR] [edge-deploy flags] | run [DIR]" >&2
    exit 2
    ;;
esac
