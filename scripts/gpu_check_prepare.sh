#!/usr/bin/env bash
# Prepares what scripts/gpu_check.sh carries to the GPU machine (both folders are git-ignored):
#   .wheels/  hydra-core, omegaconf and antlr4, pinned to the tested venv's versions (absent there; antlr4 4.9.3
#             ships only as an sdist, so it is built into a pure-Python wheel here); about 0.4 MB
#   .bench/   the Market-1501 archive (55.9 MB of the 64 MiB a call carries)
# and checks that the wheels install with `pip install --no-index --no-deps --target` for the machine's
# Python 3.12, as gpu_check.sh installs them there.
#   bash scripts/gpu_check_prepare.sh [/path/to/market1501.tar.xz]
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHIVE=${1:-../shared/data/market1501.tar.xz}
PY=${PYTHON:-python3}
# Pins: the versions the test suite runs with (tests/test_gpu_check.py checks they match the installed ones)
WHEELS=(hydra-core==1.3.8 omegaconf==2.3.1)
SDISTS=(antlr4-python3-runtime==4.9.3)
TARGET=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64)
rm -rf .wheels && mkdir -p .wheels .bench
$PY -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d .wheels "${WHEELS[@]}"
$PY -m pip download -q --no-deps --no-binary=:all: -d .wheels "${SDISTS[@]}"
for sdist in .wheels/*.tar.gz; do
    [ -e "$sdist" ] || continue
    $PY -m pip wheel -q --no-deps "$sdist" -w .wheels && rm "$sdist"
done
# as the machine installs them: no index, no dependencies, into a folder, for CPython 3.12
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
$PY -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: "${TARGET[@]}" --target "$check/site" \
    .wheels/*.whl
PYTHONPATH=$check/site $PY -c "
import antlr4, hydra, omegaconf
assert hydra.__version__ == '${WHEELS[0]#*==}' and omegaconf.__version__ == '${WHEELS[1]#*==}', 'wrong versions'
print('wheels install for Python 3.12 and import:', hydra.__version__, omegaconf.__version__, antlr4.__file__)"
[ -f .bench/market1501.tar.xz ] || cp "$ARCHIVE" .bench/
du -sh .wheels .bench
