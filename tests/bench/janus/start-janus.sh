#!/usr/bin/env bash
# Starts Janus (Debian package `janus`, 1.1.x) for the benchmark, on loopback only, with
# only the VideoRoom plugin and the WebSocket transport loaded.
#
# Usage: tests/bench/janus/start-janus.sh WORKDIR [WS_PORT] [RTP_PORT_RANGE]
#   Renders the *.jcfg.in templates beside this script into WORKDIR/conf, starts Janus in
#   the background (log: WORKDIR/janus.log, pid: WORKDIR/janus.pid), waits until its
#   WebSocket port accepts connections (at most 20 s) and prints the PID.
# Stop it with: kill "$(cat WORKDIR/janus.pid)"
set -euo pipefail

work=${1:?usage: start-janus.sh WORKDIR [WS_PORT] [RTP_PORT_RANGE]}
port=${2:-8188}
range=${3:-20000-20999}
here=$(cd "$(dirname "$0")" && pwd)

command -v janus >/dev/null || { echo "janus not installed: apt-get install -y janus" >&2; exit 1; }
conf="$work/conf"
mkdir -p "$conf"
for f in janus.jcfg janus.transport.websockets.jcfg janus.plugin.videoroom.jcfg; do
  sed -e "s#@CONFIG_DIR@#$conf#g" -e "s#@WS_PORT@#$port#g" -e "s#@RTP_RANGE@#$range#g" \
    "$here/$f.in" >"$conf/$f"
done

# Janus will not gather candidates on a loopback interface; see loopback-shim.c.
shim="$work/loopback-shim.so"
if [ ! -f "$shim" ] || [ "$here/loopback-shim.c" -nt "$shim" ]; then
  cc -shared -fPIC -O2 -o "$shim" "$here/loopback-shim.c" -ldl
fi

# -N: no stdout logging (the log file gets everything at debug_level 3).
LD_PRELOAD="$shim" setsid janus -F "$conf" -C "$conf/janus.jcfg" -L "$work/janus.log" -N </dev/null >/dev/null 2>&1 &
pid=$!
echo "$pid" >"$work/janus.pid"

for _ in $(seq 1 200); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "janus exited during startup; see $work/janus.log" >&2
    tail -20 "$work/janus.log" >&2 || true
    exit 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "$pid"
    exit 0
  fi
  sleep 0.1
done
echo "janus did not open ws://127.0.0.1:$port within 20 s" >&2
kill "$pid" 2>/dev/null || true
exit 1
