#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint, type-check, then run the whole test suite offline; the default model is cached on
# first use. Any failing step fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# ruff and mypy are pinned in the test extra and configured in pyproject.toml ([tool.ruff], [tool.mypy]).
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q "$@"
