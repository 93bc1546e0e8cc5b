#!/usr/bin/env bash
# Quick load smoke run (a few seconds): wardlink started in-process, 1 room, 1 publisher,
# 2 subscribers, real ICE/DTLS/SRTP on 127.0.0.1; fails unless every packet arrives
# intact, exactly once, at the right subscriber. Same check as `cargo test -p wardlink-load`.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo test -p wardlink-load --test smoke -- --nocapture
