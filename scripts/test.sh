#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite offline; the default model is cached on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q "$@"
