#!/usr/bin/env bash
# The local stack in one command: a Ray head, an S3 endpoint (moto) and an MLflow tracking server,
# all on 127.0.0.1, with their data under one folder. The README's cluster commands
# (`ray job submit --working-dir . -- python jobs/...`) then run against it unchanged.
#
# Usage: bash infra/stack.sh up|down|status|env
#   up      start what is not running, create the buckets, print the variables to export
#           (eval "$(bash infra/stack.sh up)" sets them in the calling shell)
#   down    stop the three services (their data stays: `up` brings it back)
#   status  say what runs where; exit 0 only when all three run
#   env     print the variables again
#
# Data (STACK_DIR, default ~/.cache/survey-estimator/stack):
#   stack.env        ports and the moto credentials of this stack (mode 600; the folder is 700)
#   auth_token       the Ray cluster's token (mode 600)
#   ray/             Ray's temp dir (sessions, logs)
#   s3/              the S3 buckets (infra/s3_server.py snapshots; they survive `down`)
#   mlflow/          mlflow.db (runs, registry) and artifacts/ (served by the tracking server)
#   logs/, *.pid     service logs; process-group ids that `down` stops
# Settings (first `up` only; later calls read stack.env): STACK_S3_PORT (9000), STACK_MLFLOW_PORT
# (5000), STACK_RAY_PORT (6380), STACK_DASHBOARD_PORT (8265), STACK_AGENT_PORT (8266: the job
# agent; Ray's own default 52365 clashes with any other Ray on the machine), STACK_RAY_CLIENT_PORT
# (10001), STACK_RAY_CPUS (cores + 2),
# STACK_RAY_OBJECT_STORE_MB (1024), STACK_BUCKETS ("survey harpn-archive").
#
# Variables: RAY_ADDRESS is the cluster (GCS) for drivers run from this shell, RAY_API_SERVER_ADDRESS
# the job API for `ray job submit`; AWS_ENDPOINT_URL and the moto credentials; MLFLOW_TRACKING_URI.
#
# Security, as docs/catalogue.md (Credentials) and infra/ do it: S3, MLflow, the Ray dashboard and
# job API listen on 127.0.0.1 only; Ray runs with token authentication (RAY_AUTH_MODE=token, the
# token in a 0600 file named by RAY_AUTH_TOKEN_PATH, never printed), which also guards Ray's internal
# gRPC ports: Ray binds those to every interface and advertises the machine's address whatever
# --node-ip-address says. The S3 credentials reach Ray's workers from the head node's own
# environment, never through a runtime_env; `down` stops only the processes this stack started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK_DIR=${STACK_DIR:-$HOME/.cache/survey-estimator/stack}
BIN=${STACK_BIN:-$ROOT/.venv/bin}
[ -x "$BIN/python" ] || BIN=$(dirname "$(command -v python3)")
SERVICES="s3 mlflow ray"

die() { echo "stack: $*" >&2; exit 1; }

load_config() {
  if [ -f "$STACK_DIR/stack.env" ]; then
    # shellcheck disable=SC1091
    . "$STACK_DIR/stack.env"
  fi
}

write_config() {
  local key secret
  key=stack-$("$BIN/python" -c 'import secrets; print(secrets.token_hex(8))')
  secret=$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(24))')
  mkdir -p "$STACK_DIR"
  chmod 700 "$STACK_DIR"
  (umask 077 && cat > "$STACK_DIR/stack.env" <<EOF
# written by infra/stack.sh on first up; delete the folder to start afresh
S3_PORT=${STACK_S3_PORT:-9000}
MLFLOW_PORT=${STACK_MLFLOW_PORT:-5000}
RAY_PORT=${STACK_RAY_PORT:-6380}
DASHBOARD_PORT=${STACK_DASHBOARD_PORT:-8265}
AGENT_PORT=${STACK_AGENT_PORT:-8266}
CLIENT_PORT=${STACK_RAY_CLIENT_PORT:-10001}
RAY_CPUS=${STACK_RAY_CPUS:-$(( $(nproc) + 2 ))}
RAY_OBJECT_STORE_MB=${STACK_RAY_OBJECT_STORE_MB:-1024}
BUCKETS="${STACK_BUCKETS:-survey harpn-archive}"
S3_KEY=$key
S3_SECRET=$secret
EOF
  )
}

print_env() {
  cat <<EOF
export RAY_ADDRESS=127.0.0.1:$RAY_PORT
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$STACK_DIR/auth_token
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=$S3_KEY
export AWS_SECRET_ACCESS_KEY=$S3_SECRET
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
EOF
}

export_env() { eval "$(print_env)"; export PATH="$BIN:$PATH" RAY_USAGE_STATS_ENABLED=0; }

running() {  # running NAME: its process group is alive
  local pid
  [ -f "$STACK_DIR/$1.pid" ] || return 1
  pid=$(cat "$STACK_DIR/$1.pid")
  kill -0 -- "-$pid" 2>/dev/null
}

wait_for() {  # wait_for NAME SECONDS CHECK...: until CHECK succeeds, the service dies or time runs out
  local name=$1 deadline=$((SECONDS + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    running "$name" || die "$name did not start; see $STACK_DIR/logs/$name.log"
    [ "$SECONDS" -lt "$deadline" ] || die "$name not ready in time; see $STACK_DIR/logs/$name.log"
    sleep 1
  done
}

job_ready() {  # the job API accepts a job (its agent on the head has registered): a no-op one
  "$BIN/ray" job submit --no-wait --submission-id "stack-ready-$(date +%s%N)" -- true
}

http_ok() { "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1"; }

start() {  # start NAME CMD...: in its own session (process group = pid), logs under logs/
  local name=$1
  shift
  running "$name" && { echo "stack: $name already running" >&2; return 0; }
  mkdir -p "$STACK_DIR/logs"
  setsid "$@" >"$STACK_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! > "$STACK_DIR/$name.pid"
}

stop() {  # stop NAME: TERM its process group, KILL what is left after 30 s
  local name=$1 pid t=0
  running "$name" || { rm -f "$STACK_DIR/$name.pid"; return 0; }
  pid=$(cat "$STACK_DIR/$name.pid")
  kill -TERM -- "-$pid" 2>/dev/null || true
  while kill -0 -- "-$pid" 2>/dev/null && [ $t -lt 30 ]; do sleep 1; t=$((t + 1)); done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$STACK_DIR/$name.pid"
  echo "stack: $name stopped" >&2
}

up() {
  [ -f "$STACK_DIR/stack.env" ] || write_config
  load_config
  export_env
  "$BIN/python" -c "import moto.server" 2>/dev/null \
    || die "moto[server] is missing: bash infra/setup.sh --test (or $BIN/pip install 'moto[server]>=5')"
  mkdir -p "$STACK_DIR/ray" "$STACK_DIR/s3" "$STACK_DIR/mlflow"
  if [ ! -s "$STACK_DIR/auth_token" ]; then
    (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_hex(32))' > "$STACK_DIR/auth_token")
  fi

  local buckets=()
  for b in $BUCKETS; do buckets+=(--bucket "$b"); done
  start s3 "$BIN/python" "$ROOT/infra/s3_server.py" --data "$STACK_DIR/s3" --host 127.0.0.1 --port "$S3_PORT" "${buckets[@]}"
  start mlflow env SURVEY_MLFLOW_STORE="$STACK_DIR/mlflow" MLFLOW="$BIN/mlflow" \
    bash "$ROOT/infra/mlflow-server.sh" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
  # the head's own environment carries the S3 credentials to its workers and jobs (no runtime_env),
  # and RAY_ADDRESS, so that Ray's own ray.init() calls (Ray Train's) find this cluster among others
  start ray "$BIN/ray" start --head --block --port="$RAY_PORT" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --dashboard-agent-listen-port="$AGENT_PORT" \
    --ray-client-server-port="$CLIENT_PORT" \
    --temp-dir="$STACK_DIR/ray" --num-cpus="$RAY_CPUS" --object-store-memory=$((RAY_OBJECT_STORE_MB * 1048576)) \
    --disable-usage-stats

  wait_for s3 60 http_ok "$AWS_ENDPOINT_URL/moto-api/"
  wait_for mlflow 120 http_ok "$MLFLOW_TRACKING_URI/health"
  wait_for ray 240 job_ready
  for b in $BUCKETS; do  # the s3 server creates them only once its restore is done
    wait_for s3 60 "$BIN/python" -c "import boto3, sys; boto3.client('s3').head_bucket(Bucket=sys.argv[1])" "$b"
  done
  echo "stack: up (data in $STACK_DIR); export these, or eval \"\$(bash infra/stack.sh env)\":" >&2
  print_env
}

down() {
  load_config
  for s in ray mlflow s3; do stop "$s"; done
}

status() {
  load_config
  [ -f "$STACK_DIR/stack.env" ] || { echo "stack: not set up in $STACK_DIR"; return 1; }
  local rc=0 where
  for s in $SERVICES; do
    case $s in
      s3) where=http://127.0.0.1:$S3_PORT ;;
      mlflow) where=http://127.0.0.1:$MLFLOW_PORT ;;
      ray) where="http://127.0.0.1:$DASHBOARD_PORT (GCS 127.0.0.1:$RAY_PORT)" ;;
    esac
    if running "$s"; then echo "$s: running at $where (pgid $(cat "$STACK_DIR/$s.pid"))"; else echo "$s: stopped"; rc=1; fi
  done
  echo "data: $STACK_DIR"
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) load_config; [ -f "$STACK_DIR/stack.env" ] || die "not set up in $STACK_DIR: run up first"; print_env ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
