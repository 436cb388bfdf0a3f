#!/usr/bin/env bash
# Side-by-side wrk runs for `pycluster serve` against gunicorn, uvicorn and granian.
#
# Usage: bench/serve_wrk.sh [DURATION] [NAME...]   (run from the repository root)
# Each server gets 2 workers on 127.0.0.1 and the same hello-world app
# (bench/servers/wsgi_app.py, asgi_app.py); wrk -t1 -c50, keep-alive then
# `Connection: close`. Every wrk run holds /tmp/bench.lock, so it never overlaps
# another benchmark on the machine. Prints one line per server and mode.
set -u
DUR=${1:-3s}; shift || true
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
APPS=bench/servers
ALL="gunicorn-sync serve-wsgi-rr serve-wsgi-none serve-wsgi1-rr serve-wsgi1-none granian-wsgi uvicorn serve-asgi-rr serve-asgi-none granian-asgi"
NAMES=${*:-$ALL}
port=18500
for name in $NAMES; do
  port=$((port + 1))
  addr=127.0.0.1:$port
  case $name in
    gunicorn-sync) cmd=("$BIN/gunicorn" -w 2 --chdir $APPS -b "$addr" wsgi_app:app) ;;
    gunicorn-gthread) cmd=("$BIN/gunicorn" -w 2 --threads 10 --chdir $APPS -b "$addr" wsgi_app:app) ;;
    uvicorn) cmd=("$BIN/uvicorn" --app-dir $APPS asgi_app:app --workers 2 --loop uvloop --http httptools --no-access-log --host 127.0.0.1 --port $port) ;;
    granian-wsgi) cmd=("$BIN/granian" --interface wsgi --workers 2 --host 127.0.0.1 --port $port --working-dir $APPS wsgi_app:app) ;;
    granian-asgi) cmd=("$BIN/granian" --interface asgi --workers 2 --host 127.0.0.1 --port $port --working-dir $APPS asgi_app:app) ;;
    serve-wsgi-*|serve-wsgi1-*|serve-asgi-*)
      # serve-IFACE-POLICY; wsgi1 is the WSGI app inline (--threads 1), wsgi the pool.
      kind=${name#serve-}; iface=${kind%-*}; policy=${kind##*-}
      app=wsgi_app:app; extra=()
      [ "$iface" = asgi ] && app=asgi_app:app
      [ "$iface" = wsgi1 ] && extra=(--threads 1)
      cmd=("$BIN/pycluster" serve -w 2 --policy "$policy" --app-dir $APPS -b "$addr" "${extra[@]}" ${SERVE_ARGS:-} "$app") ;;
    *) echo "unknown server $name" >&2; continue ;;
  esac
  "${cmd[@]}" >/tmp/serve_wrk.$name.log 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://$addr/" && break; sleep 0.1; done
  for mode in keep-alive close; do
    hdr=(); [ $mode = close ] && hdr=(-H 'Connection: close')
    rps=$(flock /tmp/bench.lock wrk -t1 -c50 -d"$DUR" "${hdr[@]}" "http://$addr/" | awk '/Requests\/sec/ {print $2}')
    printf '%-18s %-10s %10s\n' "$name" "$mode" "$rps"
  done
  kill -TERM $pid; wait $pid 2>/dev/null
done
