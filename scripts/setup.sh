#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system data packages, the virtual environment with every Python
# dependency, the project's Jupyter kernel and the offline WordNet corpus. Safe to run again: each step checks
# whether it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# 1. Debian packages: the embedded data (Fashion-MNIST IDX files, WordNet 3.0) and the browser that checks the
#    built book (Playwright drives this chromium; it downloads no browser of its own).
need=()
for pkg in dataset-fashion-mnist wordnet-base chromium libjs-mathjax; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# 2. Virtual environment with the pinned torch build and the package (editable) with its dependencies.
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.clipguard-installed"
want=$(cat pyproject.toml | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/python" -m pip install -q -e .
  echo "$want" > "$stamp"
fi

# 3. The project's Jupyter kernel (every notebook names it, so papermill never runs another environment).
if ! "$VENV/bin/jupyter" kernelspec list 2>/dev/null | grep -q "^ *clipguard "; then
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name clipguard --display-name "Python (clipguard)" >/dev/null
fi

# 4. WordNet for NLTK (EDA text augmentation) from the Debian package, and a check of the embedded data.
if [ -f data_scripts/setup_wordnet.py ]; then
  "$VENV/bin/python" data_scripts/setup_wordnet.py --quiet
fi
"$VENV/bin/python" data_scripts/check_embedded_data.py --quiet
echo "setup: ready"
