#!/usr/bin/env bash
# Set up and run the whole service on embedded defaults — the README's run command.
#   SQLite in var/, Django-Q's ORM broker, files in var/media, and, when COMFYUI_URL is not
#   set, the bundled ComfyUI simulator (a development tool) on 127.0.0.1:8188.
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv requirements.txt

export DEBUG="${DEBUG:-1}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
export SIMULATOR_PORT="${SIMULATOR_PORT:-8188}"
PY=.venv/bin/python
mkdir -p var/log

pids=()
cleanup() {
  trap - EXIT INT TERM
  # each child runs in its own process group (setsid), so its worker processes stop with it
  for pid in "${pids[@]}"; do kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true; done
  # The worker cluster waits for running jobs; give it a few seconds, then stop it hard —
  # the reconciler re-attaches whatever was running when it comes back.
  for _ in $(seq 1 20); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

$PY manage.py migrate --noinput >/dev/null
$PY manage.py collectstatic --noinput >/dev/null

if [ ! -s var/admin-password.txt ]; then
  $PY -c 'import secrets; print(secrets.token_urlsafe(12))' > var/admin-password.txt
fi
ADMIN_PASSWORD=$(cat var/admin-password.txt)
DJANGO_SUPERUSER_PASSWORD="$ADMIN_PASSWORD" $PY manage.py createsuperuser --noinput \
  --username admin --email admin@localhost >/dev/null 2>&1 || true

if [ -z "${COMFYUI_URL:-}" ]; then
  echo "COMFYUI_URL is not set: starting the bundled ComfyUI SIMULATOR (development only) on 127.0.0.1:$SIMULATOR_PORT"
  setsid $PY manage.py comfyui_simulator --host 127.0.0.1 --port "$SIMULATOR_PORT" > var/log/simulator.log 2>&1 &
  pids+=($!)
  for _ in $(seq 1 50); do
    $PY -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $SIMULATOR_PORT)))" && break
    sleep 0.2
  done
fi

$PY manage.py refresh_models || echo "refresh_models could not reach every source; see above"
$PY manage.py setup_schedules

setsid $PY manage.py qcluster > var/log/worker.log 2>&1 &
pids+=($!)

echo
echo "Genonaut is running at http://$HOST:$PORT/"
echo "  log in as: admin / $ADMIN_PASSWORD   (admin: http://$HOST:$PORT/admin/, API: http://$HOST:$PORT/api/v1/)"
echo "  logs: var/log/worker.log, var/log/simulator.log — Ctrl-C stops everything"
echo
setsid $PY manage.py runserver "$HOST:$PORT" --noreload &
pids+=($!)
wait "${pids[-1]}"
