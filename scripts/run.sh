#!/usr/bin/env bash
# Set up and run the whole service on embedded defaults — the README's run command.
#   SQLite, Django-Q's ORM broker and files in the data folder, and, when COMFYUI_URL is not set,
#   the bundled ComfyUI simulator (a development tool). Development only: it sets DEBUG=1.
#   HOST (127.0.0.1) and PORT (8000): where the web server listens. SIMULATOR_PORT (8188).
#   GENONAUT_DATA_DIR (var/): database, media, admin password, logs (one folder per run), pid file.
# One instance per data folder: a second run refuses before it changes anything.
# Ctrl-C (or SIGTERM) stops everything this script started: web server, worker clusters (one per queue:
# jobs, housekeeping, webhooks — as in production), simulator.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "run.sh: $*" >&2; exit 1; }

case "${DEBUG:-1}" in
  1|[Tt]rue|TRUE|[Yy]es|YES|[Oo]n|ON) ;;
  *) fail "DEBUG=$DEBUG: run.sh is the development runner (runserver, simulator) and needs DEBUG=1; for production see docs/deploy.md" ;;
esac
export DEBUG=1
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
export SIMULATOR_PORT="${SIMULATOR_PORT:-8188}"
DATA_DIR="${GENONAUT_DATA_DIR:-var}"
export GENONAUT_DATA_DIR="$DATA_DIR"
for name in PORT SIMULATOR_PORT; do
  [[ "${!name}" =~ ^[0-9]+$ ]] && (( ${!name} >= 1 && ${!name} <= 65535 )) || fail "$name=${!name} is not a port number"
done
case "$HOST" in 0.0.0.0|::|"[::]") LOCAL_HOST=127.0.0.1 ;; *) LOCAL_HOST="${HOST#[}"; LOCAL_HOST="${LOCAL_HOST%]}" ;; esac
URL="http://$LOCAL_HOST:$PORT/"
# runserver answers only to ALLOWED_HOSTS: add a HOST that is not one of the development defaults
if [ -z "${ALLOWED_HOSTS:-}" ] && [ "$LOCAL_HOST" != 127.0.0.1 ] && [ "$LOCAL_HOST" != localhost ]; then
  export ALLOWED_HOSTS="localhost,127.0.0.1,[::1],$LOCAL_HOST"
fi
PID_FILE="$DATA_DIR/run.pid"  # line 1: "<pid> <url>"; then "<pid> <name>" per process started

# --- refuse early: nothing below this block runs while another instance holds the data folder ---
port_in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
instance_check() {
  [ -f "$PID_FILE" ] || return 0
  local pid url leftovers="" name child
  read -r pid url < "$PID_FILE" || true
  if alive "$pid" && ps -o args= -p "$pid" 2>/dev/null | grep -q "run.sh"; then
    fail "Genonaut is already running from $DATA_DIR/ (pid $pid, ${url:-?}); stop it first (Ctrl-C in its terminal, or kill $pid)"
  fi
  while read -r child name; do
    if alive "$child" && ps -o args= -p "$child" 2>/dev/null | grep -q "manage.py"; then leftovers+=" ${name// /-}=$child"; fi
  done < <(tail -n +2 "$PID_FILE")
  [ -z "$leftovers" ] || fail "processes of an earlier run that was killed are still running ($leftovers); stop them first (kill <pid>)"
  rm -f "$PID_FILE"  # stale: that run and everything it started are gone
}
instance_check
port_in_use "$LOCAL_HOST" "$PORT" && fail "port $PORT on $LOCAL_HOST is already in use by another program; choose another: PORT=$((PORT + 1)) scripts/run.sh"
if [ -z "${COMFYUI_URL:-}" ] && port_in_use 127.0.0.1 "$SIMULATOR_PORT"; then
  fail "port $SIMULATOR_PORT (the simulator's) is already in use; set SIMULATOR_PORT, or COMFYUI_URL to a running ComfyUI"
fi
mkdir -p "$DATA_DIR"
# claim the folder atomically: of two runs started at once, one creates the file, the other stops here
( set -o noclobber; echo "$$ $URL" > "$PID_FILE" ) 2>/dev/null || instance_check
[ -s "$PID_FILE" ] || echo "$$ $URL" > "$PID_FILE"
read -r owner _ < "$PID_FILE"; [ "$owner" = "$$" ] || fail "another run.sh claimed $DATA_DIR/ at the same moment"

# --- from here on this run owns the folder; everything it starts is stopped on exit ---
names=(); pids=()
ROLES=(jobs housekeeping webhooks)
RUN_ID="$(date +%Y%m%d-%H%M%S)-$$"
LOG_DIR="$DATA_DIR/log/$RUN_ID"
mkdir -p "$LOG_DIR"
ln -sfn "$RUN_ID" "$DATA_DIR/log/latest"
# keep the ten newest runs' logs (every other run has ended: this one holds the folder)
ls -1d "$DATA_DIR"/log/2*-* 2>/dev/null | sort | head -n -10 | while read -r old; do rm -rf -- "$old"; done

pid_of() { local i; for i in "${!names[@]}"; do [ "${names[$i]}" = "$1" ] && echo "${pids[$i]}"; done; return 0; }
last_line() { grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1; }
# stop_one NAME SECONDS: SIGTERM to the process itself (the cluster stops its own workers in order;
# a signal to its whole group leaves it hanging), wait, then kill what is left of its group.
stop_one() {
  local pid; pid=$(pid_of "$1")
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $(( $2 * 10 ))); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    echo "run.sh: the $1 did not stop within $2 s; killed it${3:+ — $3}" >&2
  fi
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
# stop_clusters SECONDS: SIGTERM to every worker cluster at once (each stops its own workers in order),
# wait until all have ended, then kill what is left of their groups
stop_clusters() {
  local role pid left
  for role in "${ROLES[@]}"; do pid=$(pid_of "$role cluster"); if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi; done
  for _ in $(seq 1 $(( $1 * 10 ))); do
    left=""; for role in "${ROLES[@]}"; do if alive "$(pid_of "$role cluster")"; then left=1; fi; done
    [ -z "$left" ] && break; sleep 0.1
  done
  for role in "${ROLES[@]}"; do
    pid=$(pid_of "$role cluster"); [ -n "$pid" ] || continue
    if alive "$pid"; then
      echo "run.sh: the $role cluster did not stop within $1 s; killed it — a task was still running; the reconciler picks its job up on the next start" >&2
    fi
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
stop_all() {
  local status=$?
  trap - EXIT
  trap '' INT TERM  # stopping is bounded (about 30 s at most); a second Ctrl-C must not orphan the rest
  [ "${#pids[@]}" -gt 0 ] && echo "Stopping Genonaut …"
  # web first (no new submissions), then the clusters (running jobs hand over), the simulator last
  stop_one "web server" 5
  stop_clusters 20
  local stopped=0 role
  for role in "${ROLES[@]}"; do grep -q "has stopped" "$LOG_DIR/worker-$role.log" 2>/dev/null && stopped=$((stopped + 1)); done
  [ "$stopped" -gt 0 ] && [ "$stopped" -eq "${#ROLES[@]}" ] && echo "Worker clusters stopped."
  stop_one simulator 5
  read -r owner _ 2>/dev/null < "$PID_FILE" && [ "$owner" = "$$" ] && rm -f "$PID_FILE"
  exit "$status"
}
trap stop_all EXIT
trap 'exit 0' INT TERM  # a requested stop is a success; the EXIT trap does the stopping

# start NAME LOGFILE COMMAND…: in its own session (its own process group, no terminal Ctrl-C)
start() {
  local name="$1" log="$2"; shift 2
  if [ "$log" = - ]; then setsid "$@" & else setsid "$@" > "$log" 2>&1 & fi
  names+=("$name"); pids+=($!)
  echo "$! $name" >> "$PID_FILE"
}
# wait_for NAME LOG SECONDS CONDITION…: until CONDITION holds; if NAME exits first, fail with its
# log's last line (LOG "-": its output went to the terminal, above)
wait_for() {
  local name="$1" log="$2" seconds="$3"; shift 3
  local pid; pid=$(pid_of "$name")
  for _ in $(seq 1 $(( seconds * 10 ))); do
    "$@" && return 0
    if ! alive "$pid"; then
      [ "$log" = - ] && fail "the $name exited while starting (its output is above)"
      fail "the $name exited while starting: $(last_line "$log") (log: $log)"
    fi
    sleep 0.1
  done
  return 1
}
# step TITLE COMMAND…: output to the run's setup log; a failure is one line, the details in the log
step() {
  local title="$1"; shift
  { echo "== $title"; "$@"; } >> "$LOG_DIR/setup.log" 2>&1 || fail "$title failed: $(last_line "$LOG_DIR/setup.log") (log: $LOG_DIR/setup.log)"
}

. scripts/_venv.sh
ensure_venv requirements.txt
PY=.venv/bin/python

step "checking the configuration" $PY manage.py check
step "migrating the database" $PY manage.py migrate --noinput
step "collecting static files" $PY manage.py collectstatic --noinput

PASSWORD_FILE="$DATA_DIR/admin-password.txt"
if [ ! -s "$PASSWORD_FILE" ]; then
  $PY -c 'import secrets; print(secrets.token_urlsafe(12))' > "$PASSWORD_FILE"
fi
ADMIN_PASSWORD=$(cat "$PASSWORD_FILE")
DJANGO_SUPERUSER_PASSWORD="$ADMIN_PASSWORD" $PY manage.py createsuperuser --noinput \
  --username admin --email admin@localhost >/dev/null 2>&1 || true  # already there

if [ -z "${COMFYUI_URL:-}" ]; then
  echo "COMFYUI_URL is not set: starting the bundled ComfyUI SIMULATOR (development only) on 127.0.0.1:$SIMULATOR_PORT"
  start simulator "$LOG_DIR/simulator.log" $PY manage.py comfyui_simulator --host 127.0.0.1 --port "$SIMULATOR_PORT"
  wait_for simulator "$LOG_DIR/simulator.log" 30 grep -q "listening on" "$LOG_DIR/simulator.log" \
    || fail "the simulator did not listen within 30 s (log: $LOG_DIR/simulator.log)"
fi

{ echo "== registering models"; $PY manage.py refresh_models; } >> "$LOG_DIR/setup.log" 2>&1 \
  || echo "run.sh: refresh_models could not reach every source: $(last_line "$LOG_DIR/setup.log") (log: $LOG_DIR/setup.log)"
step "creating the schedules" $PY manage.py setup_schedules

# one cluster per queue, as in production (docs/deploy.md § 6): jobs never wait behind webhooks or housekeeping
for role in "${ROLES[@]}"; do
  Q_ROLE=$role start "$role cluster" "$LOG_DIR/worker-$role.log" $PY manage.py qcluster
done
for role in "${ROLES[@]}"; do
  wait_for "$role cluster" "$LOG_DIR/worker-$role.log" 60 grep -q " running\." "$LOG_DIR/worker-$role.log" \
    || echo "run.sh: the $role cluster has not said it is running after 60 s; carrying on (log: $LOG_DIR/worker-$role.log)"
done

answers() { $PY -c 'import sys, urllib.request, urllib.error
try:  # no proxy: the server is on this machine
    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass  # an HTTP error is an answer too
except OSError:
    sys.exit(1)' "${URL}healthz" 2>/dev/null; }
start "web server" - $PY manage.py runserver "$HOST:$PORT" --noreload
wait_for "web server" - 60 answers || fail "the web server did not answer at $URL within 60 s"

echo
echo "Genonaut is running at $URL"
echo "  log in as: admin / $ADMIN_PASSWORD   (admin: ${URL}admin/, API: ${URL}api/v1/)"
echo "  logs: $LOG_DIR/ (worker-jobs.log, worker-housekeeping.log, worker-webhooks.log, simulator.log, setup.log)"
echo "  Ctrl-C stops everything"
echo

# Run until Ctrl-C/SIGTERM, or until one of the processes ends by itself (then say which and stop).
while :; do
  wait -n "${pids[@]}" 2>/dev/null || true
  for i in "${!names[@]}"; do
    if ! alive "${pids[$i]}"; then
      log="$LOG_DIR/worker-${names[$i]% cluster}.log"; [ "${names[$i]}" = simulator ] && log="$LOG_DIR/simulator.log"
      [ "${names[$i]}" = "web server" ] && fail "the web server exited unexpectedly (its output is above)"
      fail "the ${names[$i]} exited unexpectedly: $(last_line "$log") (log: $log)"
    fi
  done
done
