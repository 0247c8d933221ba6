#!/usr/bin/env bash
# Download the wheels that part (h) of benchmarks/gpu_check.py installs on the GPU machine, whose image has
# no optuna: optuna and the dependencies the image lacks (alembic, SQLAlchemy, Mako, colorlog; the image has
# numpy, PyYAML, tqdm, packaging, MarkupSafe, typing-extensions).  The versions are this venv's, so the GPU
# run uses what the tests here use.  Python 3.12, x86-64 (the H200 image); pure-Python wheels where there
# are any.  Usage (repo root): bash benchmarks/gpu_wheels.sh [DIR]   (default .whl, ignored by git through
# .git/info/exclude), then carry DIR with the device tool and pass --wheels DIR (see docs/gpu-check.md).
set -euo pipefail
dir=${1:-.whl}
py=${PYTHON:-python}
mkdir -p "$dir"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF "/$dir/" "$exclude" 2>/dev/null || echo "/$dir/" >> "$exclude"
pkgs=()
for name in optuna alembic sqlalchemy mako colorlog; do
  ver=$("$py" -c "import importlib.metadata as m; print(m.version('$name'))")
  pkgs+=("$name==$ver")
done
"$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$dir" "${pkgs[@]}"
ls -l "$dir"
