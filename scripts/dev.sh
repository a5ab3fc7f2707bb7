#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs emarray, then runs a job.
#   bash scripts/dev.sh demo [emarray demo options]   set up and run the demo (then: source
#                                                     .venv/bin/activate for a bare `emarray`)
#   bash scripts/dev.sh test [pytest options]         set up, lint (ruff), type-check (mypy), build
#                                                     the docs (mkdocs, strict); as root install
#                                                     Chromium (apt) and start a three-node
#                                                     SLURM (scripts/slurm-local.sh); test
#   bash scripts/dev.sh bench                         set up and run the asv suite (quick)
#   bash scripts/dev.sh compare [compare.py options]  side-by-side threshold comparison
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-demo}
shift || true
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
extras=""
case "$what" in
  demo) extras="[measure]" ;;  # the demo's sweep: its table (pandas) and plot (matplotlib)
  test) extras="[test]" ;;
  bench|compare) extras="[dev]" ;;
esac
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras}" 2>&1 \
  | grep -v -e "^\s*$" -e "!!" -e "WheelFile" -e "^\s*\*\*\*" -e "^\s*####" || true
case "$what" in
  demo) .venv/bin/emarray demo "$@"
        if [ "$(command -v emarray || true)" != "$PWD/.venv/bin/emarray" ]; then
          # the tour and the next steps above type a bare `emarray`
          echo "emarray is installed in .venv: 'source .venv/bin/activate' puts it on PATH;" \
               "the tour (docs/tour.md) also needs PyTorch and the other extras:" \
               "pip install -e '.[all]' torch==2.13.0"
        fi ;;
  test) .venv/bin/ruff check . && .venv/bin/mypy || exit 1
        NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "${TMPDIR:-/tmp}/emarray-site" || exit 1
        if [ "$(id -u)" = 0 ]; then
          if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
            # emarray view and the report are tested in a real headless browser
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
              chromium chromium-driver >/dev/null) || { echo "dev.sh: cannot install chromium" >&2; exit 1; }
          fi
          bash scripts/slurm-local.sh || exit 1
        elif ! bash scripts/slurm-local.sh status >/dev/null 2>&1; then
          # not root and no SLURM running: the SLURM tests skip, naming why; the rest run
          export EMARRAY_NO_SLURM="scripts/slurm-local.sh installs SLURM as root; run this as root (or start SLURM) to include the SLURM tests"
          echo "dev.sh: not root and no SLURM running: the SLURM tests will be skipped" >&2
        fi
        # the test files on every core, each file's tests in one worker, in order, with their
        # module's fixtures (the SLURM tests take turns: tests/test_slurm.py::slurm_up)
        exec .venv/bin/python -m pytest -n auto --dist loadfile "$@" ;;
  bench) .venv/bin/asv machine --yes >/dev/null && exec .venv/bin/asv run --python=same --quick "$@" ;;
  compare) exec .venv/bin/python benchmarks/compare.py "$@" ;;
  *) echo "usage: bash scripts/dev.sh demo|test|bench|compare [options]" >&2; exit 2 ;;
esac
