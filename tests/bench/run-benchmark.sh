#!/usr/bin/env bash
# Side-by-side forwarding benchmark: wardlink vs Janus (Debian's janus 1.1.x), the same
# load-generator scenarios against each, alternating, on this machine, in one run.
# Everything stays on 127.0.0.1; every server is started fresh per run (so RSS per
# participant starts from an idle process) and stopped afterwards.
#
# Too slow for CI (the full set takes ~10-15 minutes on an idle 2-core machine, longer
# while it waits for other jobs to finish). Usage:
#
#   tests/bench/run-benchmark.sh [--quick] [--duration SECS] [--out DIR]
#                                [--only "a b c leak"] [--fanout "1 10 50 100 200"]
#                                [--rooms "20 40 60"] [--rounds K]
#                                [--load-args "EXTRA wardlink-load ARGS"]
#
#   --quick     scenario c and a small fan-out (1, 10 subscribers), no leak check
#   --duration  measurement window per run (default 20 s; --quick: 10 s)
#   --out       where the per-run JSON, logs and summary.md go
#               (default target/bench/<timestamp>)
#   --only      subset of scenarios: a (fan-out), b (rooms of 4), c (1 room x 10), leak
#   --rooms     how many rooms of 4 scenario b runs (default 20); several values make it a
#               sweep, to find where each server starts losing packets or passes 50 ms
#   --rounds    run each scenario's wardlink/Janus pair K times, alternating (default 1).
#               The summary gives the median of the per-round ratios and every round's
#               ratio: at 1 -> 1 the ratio of one pair moved between 0.40 and 0.66 over
#               ten pairs of one build, with the machine's speed drifting between them.
#   --load-args extra arguments for every scenario run of wardlink-load, e.g.
#               "--pace-multiplier 0" for publishers that send frames unpaced
#
# Scenarios:
#   a  one publisher, N receive-only subscribers (N from --fanout). The wardlink server is
#      configured with max_participants_per_room = WL_MAX_ROOM (default 500, the most
#      config.rs accepts); fan-outs that do not fit are skipped and reported as such.
#   b  R rooms of 4 participants (R from --rooms), everyone publishing and receiving the
#      other three: many small case conferences at once.
#   c  one room of 10, everyone publishing and receiving the other nine.
#   leak  1,000 join/publish/subscribe/leave cycles against one wardlink; RSS before, every
#         250 cycles and after (LEAK_CYCLES, LEAK_WARMUP and LEAK_CHECKPOINT_EVERY override
#         the counts).
#
# wardlink runs with the environment its deploy/ files give it: GLIBC_TUNABLES from
# deploy/wardlink.service (WL_GLIBC_TUNABLES overrides it; set it empty for glibc's
# defaults), and media_realtime_priority = the unit's LimitRTPRIO (WL_RTPRIO overrides it;
# empty or 0 keeps the media threads at normal priority). Janus runs as Debian ships it.
#
# Needs: cargo, janus (apt-get install -y janus), a C compiler (for Janus's loopback shim).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
quick=0
duration=""
out=""
only="a b c leak"
fanout="1 10 50 100 200"
rooms4="20"
load_args=""
rounds=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; only="a c"; fanout="1 10"; shift ;;
    --duration) duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --fanout) fanout=$2; shift 2 ;;
    --rooms) rooms4=$2; shift 2 ;;
    --load-args) load_args=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$duration" ] || { [ "$quick" = 1 ] && duration=10 || duration=20; }
[ -n "$out" ] || out="$root/target/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
out=$(cd "$out" && pwd)

echo "== building (release)"
(cd "$root" && cargo build --release -p wardlink -p wardlink-load)
WARDLINK="$root/target/release/wardlink"
LOAD="$root/target/release/wardlink-load"
command -v janus >/dev/null || { echo "janus is not installed (apt-get install -y janus)" >&2; exit 1; }

WL_MAX_ROOM=${WL_MAX_ROOM:-500}
# The deployed setting, read from the unit so that the two cannot drift apart.
deployed_tunables=$(sed -n 's/^Environment=GLIBC_TUNABLES=//p' "$root/deploy/wardlink.service" | head -n1)
if [ -z "${WL_GLIBC_TUNABLES+set}" ] && [ -z "$deployed_tunables" ]; then
  echo "no Environment=GLIBC_TUNABLES=… line in deploy/wardlink.service; set WL_GLIBC_TUNABLES" >&2
  exit 2
fi
WL_GLIBC_TUNABLES=${WL_GLIBC_TUNABLES-$deployed_tunables}
# Nothing else inherits one from the caller: Janus and the generator run with glibc's defaults.
unset GLIBC_TUNABLES
# The real-time priority the unit grants (LimitRTPRIO=) is what the media threads ask for.
deployed_rtprio=$(sed -n 's/^LimitRTPRIO=//p' "$root/deploy/wardlink.service" | head -n1)
WL_RTPRIO=${WL_RTPRIO-$deployed_rtprio}
WL_RTPRIO=${WL_RTPRIO:-0}
WL_PORT=18443
WL_MEDIA=18444
JANUS_PORT=18188
server_pid=""

free_port() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$server_pid" 2>/dev/null || { server_pid=""; return 0; }
    sleep 0.1
  done
  kill -KILL "$server_pid" 2>/dev/null || true
  server_pid=""
}
trap stop_server EXIT

start_wardlink() {
  local work=$1
  rm -rf "$work"; mkdir -p "$work"
  cat >"$work/wardlink.toml" <<EOF
listen = "127.0.0.1:$WL_PORT"
media_port = $WL_MEDIA
media_bind = "127.0.0.1"
data_dir = "$work/data"
log_level = "warn"
max_participants_per_room = $WL_MAX_ROOM
media_realtime_priority = $WL_RTPRIO

[limits]
# The generator joins everyone from 127.0.0.1.
joins_per_minute_per_ip = 1000000
max_conferences = 1000
EOF
  for _ in $(seq 1 50); do free_port "$WL_PORT" && break; sleep 0.2; done
  setsid env ${WL_GLIBC_TUNABLES:+"GLIBC_TUNABLES=$WL_GLIBC_TUNABLES"} "$WARDLINK" --config "$work/wardlink.toml" serve \
    </dev/null >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 200); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "wardlink exited during startup:" >&2; tail -20 "$work/server.log" >&2; exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$WL_PORT") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "wardlink did not listen on $WL_PORT" >&2; exit 1
}

start_janus() {
  local work=$1
  rm -rf "$work"; mkdir -p "$work"
  for _ in $(seq 1 50); do free_port "$JANUS_PORT" && break; sleep 0.2; done
  server_pid=$("$root/tests/bench/janus/start-janus.sh" "$work" "$JANUS_PORT" 20000-29999)
}

# run_case LABEL TARGET LOAD-ARGS...
run_case() {
  local label=$1 target=$2 round=$3; shift 3
  # Round 1 keeps the plain names; later rounds get -rN (the summary pairs by round).
  local suffix=""
  [ "$round" -gt 1 ] && suffix="-r$round"
  local work="$out/work-$label-$target$suffix"
  local args=(--label "$label" --duration "$duration" --json "$out/$label-$target$suffix.json")
  # Word splitting is intended: --load-args holds several arguments.
  # shellcheck disable=SC2206
  args+=($load_args)
  wait_quiet
  if [ "$target" = wardlink ]; then
    start_wardlink "$work"
    args+=(--target wardlink --url "https://127.0.0.1:$WL_PORT" --data-dir "$work/data")
  else
    start_janus "$work"
    args+=(--target janus --url "ws://127.0.0.1:$JANUS_PORT")
  fi
  args+=(--server-pid "$server_pid")
  echo "== $label on $target (round $round of $rounds): $*"
  # Bounded: setup (120 s max) + warm-up + window + leave, with a margin.
  if ! timeout $((duration + 300)) "$LOAD" "${args[@]}" "$@" 2>"$work/load.log" | tee "$work/load.txt"; then
    echo "!! $label on $target failed; see $work/load.log" >&2
    tail -5 "$work/load.log" >&2 || true
  fi
  stop_server
  if [ "$target" = wardlink ] && grep -q 'stay at normal priority' "$work/server.log"; then
    echo "!! $label: wardlink's media threads were refused real-time priority (see $work/server.log)" >&2
  fi
  sleep 2 # let sockets in TIME_WAIT and the kernel settle between runs
}

# Busy CPU (cores) of the whole machine over one second, from /proc/stat.
machine_busy() {
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  awk -v a="$a" -v b="$b" -v hz="$(getconf CLK_TCK)" 'BEGIN{split(a,x," "); split(b,y," "); printf "%.2f", (y[1]-x[1])/hz}'
}

# Waits (at most QUIET_WAIT seconds, default 300) until nothing else keeps the machine
# busy (under 0.25 cores), so a compiler running beside the benchmark does not end up in
# the numbers. Each report also records the machine's busy time during its window.
wait_quiet() {
  local waited=0 busy
  while :; do
    busy=$(machine_busy)
    if awk -v b="$busy" 'BEGIN{exit !(b < 0.25)}'; then return 0; fi
    if [ "$waited" -ge "${QUIET_WAIT:-300}" ]; then
      echo "!! machine still busy ($busy cores) after ${waited}s; running anyway" >&2
      return 0
    fi
    [ "$waited" -eq 0 ] && echo "== waiting for the machine to go quiet (busy: $busy cores)"
    sleep 4
    waited=$((waited + 5))
  done
}

has() { case " $only " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

{
  echo "# machine"
  echo "nproc: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo || true
  grep MemTotal /proc/meminfo || true
  uname -srm
  janus --version 2>/dev/null | head -1 || true
  echo "wardlink: $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo '?') $(cd "$root" && git status --porcelain 2>/dev/null | grep -q . && echo '(with uncommitted changes)')"
  echo "wardlink environment: GLIBC_TUNABLES=${WL_GLIBC_TUNABLES:-(unset)}"
  echo "wardlink media_realtime_priority: $WL_RTPRIO (runner uid $(id -u); without CAP_SYS_NICE it needs RLIMIT_RTPRIO >= it: $(ulimit -r))"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command: $0 --duration $duration --only \"$only\" --fanout \"$fanout\" --rooms \"$rooms4\" --rounds $rounds --load-args \"$load_args\""
} >"$out/machine.txt"
cat "$out/machine.txt"

if has c; then
  for r in $(seq 1 "$rounds"); do
    for t in wardlink janus; do run_case c-1x10 "$t" "$r" --rooms 1 --publishers 10 --subscribers 0; done
  done
fi
if has a; then
  for n in $fanout; do
    for r in $(seq 1 "$rounds"); do
      for t in wardlink janus; do
        if [ "$t" = wardlink ] && [ $((n + 1)) -gt "$WL_MAX_ROOM" ]; then
          echo "== a-fanout-$n on wardlink: skipped, $((n + 1)) participants > max_participants_per_room ($WL_MAX_ROOM)"
          continue
        fi
        run_case "a-fanout-$n" "$t" "$r" --rooms 1 --publishers 1 --subscribers "$n" --join-concurrency 16
      done
    done
  done
fi
if has b; then
  for rooms in $rooms4; do
    for r in $(seq 1 "$rounds"); do
      for t in wardlink janus; do
        run_case "b-${rooms}x4" "$t" "$r" --rooms "$rooms" --publishers 4 --subscribers 0 --join-concurrency 16
      done
    done
  done
fi
if has leak; then
  work="$out/work-leak"
  wait_quiet
  start_wardlink "$work"
  echo "== leak check: ${LEAK_CYCLES:-1000} join/leave cycles against wardlink (after ${LEAK_WARMUP:-50} warm-up cycles, RSS every ${LEAK_CHECKPOINT_EVERY:-250})"
  timeout 3000 "$LOAD" --target wardlink --url "https://127.0.0.1:$WL_PORT" --data-dir "$work/data" \
    --server-pid "$server_pid" --leak-cycles "${LEAK_CYCLES:-1000}" --leak-warmup "${LEAK_WARMUP:-50}" --leak-concurrency 4 \
    --leak-checkpoint-every "${LEAK_CHECKPOINT_EVERY:-250}" \
    --json "$out/leak-wardlink.json" 2>"$work/load.log" | tee "$work/load.txt" || echo "!! leak check failed" >&2
  stop_server
fi

"$LOAD" --summarize "$out" | tee "$out/summary.md"
echo "results in $out"
