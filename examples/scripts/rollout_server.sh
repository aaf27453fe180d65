# Sourced by the server examples: start `swift rollout` in the background, stop it whenever the
# calling script exits, and return once it serves. Reads SWIFT, MODEL, HOST, PORT, SERVER_ENV and
# SERVER_EXTRA from the caller.
start_rollout_server() {
  if (: <>"/dev/tcp/$HOST/$PORT") 2>/dev/null; then
    echo "port $PORT is already in use; pick another with PORT=..." >&2
    exit 1
  fi
  set -x
  env "${SERVER_ENV[@]}" $SWIFT rollout --model "$MODEL" --host "$HOST" --port "$PORT" "${SERVER_EXTRA[@]}" &
  SERVER_PID=$!
  { set +x; } 2>/dev/null

  stop_server() {  # SIGTERM, then SIGKILL if it has not stopped within 30 s
    { set +x; } 2>/dev/null
    kill "$SERVER_PID" 2>/dev/null || return 0
    for _ in $(seq 60); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  }
  trap stop_server EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # The server listens once its model is loaded; stop early if it exits instead.
  until (: <>"/dev/tcp/$HOST/$PORT") 2>/dev/null; do
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "swift rollout exited before serving; its log is above" >&2; exit 1; }
    sleep 1
  done
}
