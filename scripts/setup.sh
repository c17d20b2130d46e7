#!/usr/bin/env bash
# Create .venv and install scans-guard with the default model (1.5B), the small model (0.5B, for the tests), LangChain
# glue, server, client, Ray Serve, eval and test extras.
# torch is pinned here (the CPU wheel); pyproject keeps it a range so other installs may choose their own build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[default-model,model-0-5b,langchain,serve,client,ray,structured,eval,test]"
