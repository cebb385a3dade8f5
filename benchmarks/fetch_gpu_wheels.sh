#!/usr/bin/env bash
# Download, into the git-ignored folder .whl/, the wheels benchmarks/gpu_smoke.py needs on a GPU machine that has
# Python 3.12 with torch, transformers, accelerate and peft but no package index: the framework's other
# dependencies, at the versions installed here (the ones the test suite ran with), for CPython 3.12 on x86-64 Linux.
# No dependencies are resolved (--no-deps): the list names each one the GPU image lacks. Run it from the repository
# root, where pip can reach an index; carry .whl to the GPU machine and there:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   python3 benchmarks/gpu_smoke.py
# WITH_PYARROW=1 adds pyarrow (~40 MB; datasets 5.x wants pyarrow >= 24: add it when the image's is older).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# the framework's dependencies the GPU image does not ship (its own list: the device notes' KINDS.md), and theirs
PACKAGES=(trl datasets dill multiprocess hydra-core omegaconf antlr4-python3-runtime math-verify
          latex2sympy2_extended rapidfuzz)
if [ "${WITH_PYARROW:-0}" = 1 ]; then PACKAGES+=(pyarrow); fi
PLATFORMS=()
for n in 17 24 27 28 31 34; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p .whl
for package in "${PACKAGES[@]}"; do
  version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package" 2>/dev/null || true)
  spec=$package${version:+==$version}
  if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d .whl "$spec" 2>/dev/null; then
    # no wheel published (antlr4-python3-runtime 4.9.3, which omegaconf 2.3 pins, is a source release): build
    # one here; these are pure Python, so the wheel built here installs on 3.12 too
    "$PYTHON" -m pip wheel -q --no-deps -w .whl "$spec"
  fi
  echo "fetched $spec"
done
du -sh .whl
