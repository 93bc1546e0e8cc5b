#!/usr/bin/env bash
# Runs every wardlink test: Rust unit and integration tests (real server in-process, real
# WebRTC clients on loopback), then the browser end-to-end test (real `wardlink` binary,
# real Chromium with a fake camera and microphone).
#
# On a fresh Debian machine it first installs what is missing: Chromium (plus iproute2 and
# iptables, used by network tests) and openssl (the security tests' TLS client) through apt,
# and the e2e test's npm packages (npm ci).
# Needs a Rust toolchain and Node.js 20 or newer.
#
# Usage: ./tests/run-all.sh
# Environment: CHROMIUM_PATH (default /usr/bin/chromium), WARDLINK_BIN (default
# target/debug/wardlink), RUST_LOG (server/test log filter in Rust tests).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
started=$(date +%s)

names=()
results=()
durations=()
failed=0

log() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# Runs one step, recording its outcome; later steps still run so the summary is complete.
step() {
  local name=$1
  shift
  log "$name"
  local t0 rc
  t0=$(date +%s)
  set +e
  "$@"
  rc=$?
  set -e
  names+=("$name")
  durations+=("$(($(date +%s) - t0))")
  if [ "$rc" -eq 0 ]; then
    results+=("PASS")
  else
    results+=("FAIL (exit $rc)")
    failed=1
  fi
  return 0
}

skip() {
  names+=("$1")
  durations+=("0")
  results+=("SKIPPED ($2)")
  failed=1
}

last_passed() { [ "${results[${#results[@]}-1]}" = "PASS" ]; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "need root (or sudo) to run: $*" >&2
    return 1
  fi
}

install_system_packages() {
  local chromium=${CHROMIUM_PATH:-/usr/bin/chromium}
  local want=()
  [ -x "$chromium" ] || want+=(chromium iproute2 iptables)
  command -v node >/dev/null 2>&1 || want+=(nodejs npm)
  # OpenSSL's s_client is the independent TLS client of the security tests.
  command -v openssl >/dev/null 2>&1 || want+=(openssl)
  if [ ${#want[@]} -eq 0 ]; then
    echo "chromium, node and openssl already installed"
    return 0
  fi
  echo "installing: ${want[*]}"
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}"
}

check_tools() {
  local ok=0
  command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; ok=1; }
  if command -v node >/dev/null 2>&1; then
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    if [ "$major" -lt 20 ]; then
      echo "node $(node --version) is too old: the e2e test needs Node.js 20+" >&2
      ok=1
    fi
  else
    echo "node not found" >&2
    ok=1
  fi
  return $ok
}

install_npm_packages() {
  if [ -d tests/e2e/node_modules/playwright-core ]; then
    echo "tests/e2e/node_modules present"
    return 0
  fi
  (cd tests/e2e && npm ci --no-audit --no-fund)
}

# rustls must run on ring only: aws-lc needs a C toolchain and cmake, and is not wanted.
check_no_aws_lc() {
  local out
  if out=$(cargo tree --workspace --target all -i aws-lc-sys 2>&1); then
    echo "aws-lc-sys is in the dependency tree:" >&2
    echo "$out" >&2
    return 1
  fi
  if ! grep -q "did not match any packages" <<<"$out"; then
    echo "cargo tree failed: $out" >&2
    return 1
  fi
  echo "no aws-lc-sys in the dependency tree"
}

step "install missing system packages" install_system_packages
step "check toolchain (cargo, node >= 20)" check_tools
step "install e2e npm packages (npm ci)" install_npm_packages
step "dependency check (no aws-lc)" check_no_aws_lc
# The security tests skip their openssl s_client half when openssl is missing; here it was
# installed above, so its absence is a failure.
step "cargo test --workspace" env WARDLINK_REQUIRE_OPENSSL=1 cargo test --workspace
step "cargo build -p wardlink" cargo build -p wardlink
if last_passed; then
  step "browser e2e (node --test tests/e2e/)" node --test --test-concurrency=1 tests/e2e/
else
  skip "browser e2e (node --test tests/e2e/)" "build failed"
fi

elapsed=$(($(date +%s) - started))
printf '\n\033[1m==> Summary\033[0m (%s)\n' "$repo"
for i in "${!names[@]}"; do
  printf '  %-45s %-18s %4ss\n' "${names[$i]}" "${results[$i]}" "${durations[$i]}"
done
printf '  total elapsed: %dm%02ds\n' $((elapsed / 60)) $((elapsed % 60))
if [ "$failed" -ne 0 ]; then
  printf '\033[31mFAILED\033[0m (e2e screenshots and server log: tests/e2e/artifacts/)\n'
  exit 1
fi
printf '\033[32mALL TESTS PASSED\033[0m\n'
