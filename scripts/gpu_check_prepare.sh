#!/usr/bin/env bash
# Prepares what scripts/gpu_check.sh carries to the GPU machine (both folders are git-ignored):
#   .wheels/  hydra-core, omegaconf and antlr4 as wheels (absent there; antlr4 4.9.3 ships only as an sdist,
#             so it is built into a pure-Python wheel here); about 0.4 MB
#   .bench/   the Market-1501 archive (55.9 MB of the 64 MiB a call carries)
#   bash scripts/gpu_check_prepare.sh [/path/to/market1501.tar.xz]
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHIVE=${1:-../shared/data/market1501.tar.xz}
PY=${PYTHON:-python3}
rm -rf .wheels && mkdir -p .wheels .bench
$PY -m pip download -q --no-deps hydra-core omegaconf antlr4-python3-runtime==4.9.3 -d .wheels
for sdist in .wheels/*.tar.gz; do
    [ -e "$sdist" ] || continue
    $PY -m pip wheel -q --no-deps "$sdist" -w .wheels && rm "$sdist"
done
[ -f .bench/market1501.tar.xz ] || cp "$ARCHIVE" .bench/
du -sh .wheels .bench
