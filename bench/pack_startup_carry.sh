#!/usr/bin/env bash
# What the GPU machine needs for bench/startup_bench.py (issue 19 floor 3), packed to fit one
# call's carry (64 MiB): `.carry/` (ignored) with
#   site.tar.xz   every wheel of bench/make_wheels.sh (but bitsandbytes: the bench trains
#                 LoRA bf16) plus boto3 and awscrt, installed for the machine's CPython 3.12
#                 and xz-compressed as a directory (source compresses ~2x better with xz than
#                 the wheels' deflate); botocore keeps only its S3 and STS models
#   minio.xz      the MinIO of hack/build-tools (112 MB, ~29 MB with xz -9e)
#   s5cmd.xz      the s5cmd of hack/build-tools s5cmd
# The machine has python3's lzma (no xz binary is assumed). The call: docs/benchmarks.md
# "Time to first step".
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
[[ -d .whl/e2e ]] || bash bench/make_wheels.sh
eval "$(hack/build-tools paths)"
[[ -x $KUBETUNE_MINIO_BIN/minio ]] || hack/build-tools minio
[[ -x $KUBETUNE_S5CMD_BIN/s5cmd ]] || hack/build-tools s5cmd
plat=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d "$tmp/s3" boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0 \
  awscrt==0.38.1
wheels=("$tmp"/s3/*.whl .whl/e2e/*.whl)
for w in .whl/*.whl; do [[ $w == *bitsandbytes* ]] || wheels+=("$w"); done
"$PIP" install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
  --implementation cp "${plat[@]}" --target "$tmp/site" "${wheels[@]}"
# botocore's other ~400 service models: 90% of its size, never read by an S3 client
find "$tmp/site/botocore/data" -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts \
  -exec rm -rf {} +
mkdir -p .carry
tar -C "$tmp" -cf - site | xz -9e -T2 > .carry/site.tar.xz
xz -9e -T2 -c "$KUBETUNE_MINIO_BIN/minio" > .carry/minio.xz
xz -9e -T2 -c "$KUBETUNE_S5CMD_BIN/s5cmd" > .carry/s5cmd.xz
du -sh .carry/* .carry
