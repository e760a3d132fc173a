#!/usr/bin/env bash
# End-to-end benchmark: a release weir-broker on this machine's disk, `weir bench produce` with
# 1 KiB records, acks=all (every acknowledged batch flushed), one and eight partitions, one
# producer; then `weir bench consume`. The disk's own ceilings (../shared/tools/ceilings.sh, or
# dd with fdatasync per 1 MiB) are measured in the same run, on the same file system.
#
# Usage: benches/e2e.sh [RECORDS]   (default 200000)   Output: a report on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-200000}
cargo build --release -q -p weir-broker -p weir-cli
work=$(mktemp -d "${WEIR_BENCH_DIR:-$PWD/target}/weir-e2e.XXXXXX")
broker_pid=
cleanup() { [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "== machine: $(nproc) cores, $(uname -r), data on $(df -h "$work" | awk 'NR==2 {print $1}')"
echo "== ceilings (same file system)"
if [ -x ../shared/tools/ceilings.sh ]; then
  ../shared/tools/ceilings.sh "$work"
else
  dd if=/dev/zero of="$work/probe" bs=1M count=256 oflag=dsync 2>&1 | tail -n 1 | sed 's/^/fdatasync after every 1 MiB: /'
  rm -f "$work/probe"
fi

target/release/weir-broker --data-dir "$work/data" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --log warn >"$work/broker.out" 2>"$work/broker.err" &
broker_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/broker.out" 2>/dev/null && break; sleep 0.1; done
address=$(sed -n 's/^weir-broker listening on \([^ ]*\).*/\1/p' "$work/broker.out")
weir() { target/release/weir --bootstrap "$address" "$@"; }
weir topic create p1 --partitions 1 --replication-factor 1 >/dev/null
weir topic create p8 --partitions 8 --replication-factor 1 >/dev/null

for topic in p1 p8; do
  echo "== produce, topic $topic, $records x 1 KiB, acks=all, saturating (64 MiB producer buffer)"
  weir bench produce --topic "$topic" --records "$records" --partitions-from-topic --acks all
  echo "== produce, topic $topic, $records x 1 KiB, acks=all, 4 MiB producer buffer (latency)"
  weir bench produce --topic "$topic" --records "$records" --partitions-from-topic --acks all --buffer-bytes-max 4194304
done
echo "== consume, topic p8, everything from the beginning"
weir bench consume --topic p8
