#!/usr/bin/env bash
# Installs moto's standalone server (PyPI `moto[server]`) into .tools/moto and
# links it as .tools/bin/moto_server. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.tools/moto
mkdir -p .tools/bin
if [ -x .tools/bin/moto_server ] && "$VENV/bin/python" -c 'import moto.server' 2>/dev/null; then
  echo "moto already installed (.tools/bin/moto_server)"
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]"
ln -sf "$PWD/$VENV/bin/moto_server" .tools/bin/moto_server
"$VENV/bin/python" -c 'import moto; print("moto", moto.__version__)'
