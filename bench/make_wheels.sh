#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has torch 2.11+cu130, transformers 5.17, accelerate, peft,
# pyarrow, triton), for bench/trainer_bench.py and bench/trainer_e2e.py. Writes .whl/ (ignored):
#   .whl/*.whl       trl, peft, datasets, bitsandbytes (only its CUDA 13.0 library kept: the
#                    full wheel is 125 MB unpacked), liger-kernel, dill, multiprocess
#   .whl/e2e/*.whl   what kubetune-train needs on top: transformers 5.24 (the project's pin, trainer-image/constraints.txt),
#                    tokenizers, safetensors, regex, pydantic
# On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site2 .whl/e2e/*.whl
#   PYTHONPATH=/tmp/site python3 bench/trainer_bench.py ...
#   PYTHONPATH=/tmp/site2:/tmp/site python3 bench/trainer_e2e.py ...
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do plat+=(--platform "$p"); done
get() { "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d "$@"; }
mkdir -p .whl/e2e
tmp=$(mktemp -d)
get .whl trl==1.16.0 peft==0.21.2 datasets==5.2.0 liger-kernel==0.8.5 dill==0.4.1 multiprocess==0.70.19
get "$tmp" bitsandbytes==0.50.2
(cd "$tmp" && mkdir x && cd x && unzip -q ../bitsandbytes-*.whl \
  && find bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*cuda130*' -delete \
  && sed -i '/libbitsandbytes_.*\.so/{/cuda130/!d}' bitsandbytes-*.dist-info/RECORD \
  && zip -q -r ../slim.zip .)
mv "$tmp/slim.zip" .whl/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl
get .whl/e2e transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0 regex==2026.11.19 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  common-expression-language==0.10.0 typer==0.29.2 click==8.5.1 rich==15.0.0 \
  markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0 prompt-toolkit==3.0.53 wcwidth==0.9.4 \
  shellingham==1.5.4 annotated-doc==0.0.7
# (the API evaluates its CEL rules in Python, _cel.py; `import cel` also imports its own CLI:
# typer, rich, prompt-toolkit. tests/unit/test_bench_wheels.py keeps this list complete.)
rm -rf "$tmp"
du -sh .whl
