#!/usr/bin/env bash
# Replication cost and failover on this one machine: three release weir-broker processes on
# 127.0.0.1 (one disk, 2 cores shared by all three and the producer), topics with replication
# factor 3, `weir bench produce` with 1 KiB records and acks=all; next to a single-node RF=1
# broker measured in the same run. Then the failover time: SIGKILL the leader of a partition
# and time until the first produce to it succeeds again.
#
# Usage: benches/e2e-cluster.sh [RECORDS]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-200000}
cargo build --release -q -p weir-broker -p weir-cli
work=$(mktemp -d "${WEIR_BENCH_DIR:-$PWD/target}/weir-e2e-cluster.XXXXXX")
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "== machine: $(nproc) cores, data on $(df -h "$work" | awk 'NR==2 {print $1}')"
bench() { target/release/weir --bootstrap "$1" bench produce --topic "$2" --records "$records" --partitions-from-topic --acks all; }

echo "== single node, RF=1"
port=$(free_port)
target/release/weir-broker --data-dir "$work/single" --listen "127.0.0.1:$port" --log warn >/dev/null 2>&1 &
pids+=($!)
until target/release/weir --bootstrap "127.0.0.1:$port" cluster status >/dev/null 2>&1; do sleep 0.1; done
for partitions in 1 8; do
  target/release/weir --bootstrap "127.0.0.1:$port" topic create "rf1-p$partitions" --partitions $partitions --replication-factor 1 >/dev/null
  echo "-- RF=1, $partitions partition(s)"; bench "127.0.0.1:$port" "rf1-p$partitions"
done
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()

echo "== three nodes, RF=3"
ports=($(free_port) $(free_port) $(free_port))
peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
for i in 1 2 3; do
  target/release/weir-broker --node-id $i --peers "$peers" --listen "127.0.0.1:${ports[$((i-1))]}" \
    --data-dir "$work/n$i" --log warn >/dev/null 2>&1 &
  pids+=($!)
done
bootstrap="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
until target/release/weir --bootstrap "$bootstrap" topic create rf3-p1 --partitions 1 --replication-factor 3 >/dev/null 2>&1; do sleep 0.2; done
target/release/weir --bootstrap "$bootstrap" topic create rf3-p8 --partitions 8 --replication-factor 3 >/dev/null
for partitions in 1 8; do
  echo "-- RF=3, $partitions partition(s)"; bench "$bootstrap" "rf3-p$partitions"
done

echo "== failover: SIGKILL the leader of rf3-p1/0, time to the first successful produce"
leader=$(target/release/weir --bootstrap "$bootstrap" --output json topic describe rf3-p1 \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitions"][0]["leader"])')
kill -9 "${pids[$((leader-1))]}"
killed=$(date +%s%N)
survivors=$(echo "$bootstrap" | tr ',' '\n' | grep -v ":${ports[$((leader-1))]}$" | paste -sd,)
until echo x | target/release/weir --bootstrap "$survivors" produce rf3-p1 --partition 0 >/dev/null 2>&1; do :; done
echo "leader $leader killed; first successful produce after $(( ($(date +%s%N) - killed) / 1000000 )) ms"
