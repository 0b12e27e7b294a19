#!/usr/bin/env bash
# Installs moto's standalone server (PyPI `moto[server]`) into .tools/moto and
# links it as .tools/bin/moto_server. Idempotent.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
cd "$(dirname "$0")/../.."
VERSION=5.2.5
VENV=.tools/moto
mkdir -p .tools/bin
if [ -x .tools/bin/moto_server ] \
  && [ "$("$VENV/bin/python" -c 'import moto.server, moto; print(moto.__version__)' 2>/dev/null)" = "$VERSION" ]; then
  echo "moto $VERSION already installed (.tools/bin/moto_server)"
  exit 0
fi
# python3 with venv from Debian when missing.
need_apt=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3 python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt_install "${need_apt[@]}"
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$VERSION"
ln -sf "$PWD/$VENV/bin/moto_server" .tools/bin/moto_server
"$VENV/bin/python" -c 'import moto; print("moto", moto.__version__)'
