# Sourced by the other scripts: make .venv and install a requirements file when it changed.
# usage: ensure_venv requirements.txt
ensure_venv() {
  local req="$1"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
  fi
  local stamp=".venv/.installed-$(basename "$req")"
  local digest
  digest=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
  # requirements-dev.txt includes requirements.txt: its current stamp covers both
  if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ] && [ "$(cat .venv/.installed-requirements-dev.txt 2>/dev/null)" != "$digest" ]; then
    echo "Installing $req into .venv …"
    .venv/bin/python -m pip install --quiet -r "$req"
    echo "$digest" > "$stamp"
  fi
}
