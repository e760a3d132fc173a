#!/usr/bin/env bash
# What an idle cluster costs: three release weir-broker processes on 127.0.0.1 with no topic,
# then with PARTITIONS partitions of replication factor 3 (every node holds a replica of every
# partition) and no traffic at all. Per node: CPU (utime+stime from /proc/PID/stat over a
# window, in % of one core, and per thread name), wakeups (context switches/s), RSS (anonymous
# and file-mapped), threads, and the data directory's size (apparent and allocated). Memory and
# disk per partition = (after - before) / PARTITIONS. The issue's goal: below 5% of one core per
# node at 1,000 partitions.
#
# Usage: benches/idle-cluster.sh [PARTITIONS] [WINDOW_S]   (defaults 1000 and 30)
# Environment: SEGMENT_BYTES (topic segment_bytes_max, default 1048576; 0 = the broker default,
# 256 MiB, which is preallocated per replica: 750 GiB of disk for 1,000 partitions on 3 nodes; the
# script refuses to start when the preallocation would not fit in half the free space),
# TOPIC_PARTITIONS (partitions per topic, default 250), SETTLE_S (default 10),
# WEIR_BENCH_DIR (where the temp data dirs go; default ./target). The brokers inherit the
# environment, so WEIR_CONFIG=file.toml compares broker settings (e.g. [raft] heartbeat_ticks).
# Bounded: every wait gives up after a deadline (printing the brokers' logs); the brokers are
# killed and the data dirs removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
partitions=${1:-1000}
window=${2:-30}
segment_bytes=${SEGMENT_BYTES:-1048576}
per_topic=${TOPIC_PARTITIONS:-250}
settle=${SETTLE_S:-10}
cargo build --release -q -p weir-broker -p weir-cli
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d "${WEIR_BENCH_DIR:-$PWD/target}/weir-idle-cluster.XXXXXX")
pids=()
cleanup() { exec 2>/dev/null; for pid in "${pids[@]}"; do kill -9 "$pid" || true; done; wait; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_for SECONDS WHAT COMMAND...: retries COMMAND until it succeeds, or fails the run.
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@"; do
    if ((SECONDS >= deadline)); then
      echo "gave up waiting for $what; broker logs:" >&2; tail -n 5 "$work"/n*.log >&2; exit 1
    fi
    sleep 0.5
  done
}

need=$((partitions * 3 * (segment_bytes > 0 ? segment_bytes : 268435456)))
free=$(df -B1 --output=avail "$work" | tail -1)
if ((need > free / 2)); then
  echo "preallocated segments need $((need >> 20)) MiB ($partitions partitions x 3 replicas), only $((free >> 20)) MiB free: lower SEGMENT_BYTES" >&2
  exit 1
fi
topic_config=()
if ((segment_bytes > 0)); then
  batch_bytes=$((segment_bytes / 2 < 16777216 ? segment_bytes / 2 : 16777216))
  topic_config=(--config "segment_bytes_max=$segment_bytes" --config "batch_bytes_max=$batch_bytes")
fi

echo "== machine: $(nproc) cores, $(uname -r), data on $(df -h "$work" | awk 'NR==2 {print $1}'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $partitions partitions, RF=3, segment_bytes_max=${segment_bytes/#0/broker default}; settle ${settle}s, measure ${window}s"

ports=($(free_port) $(free_port) $(free_port))
peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
for i in 1 2 3; do
  "$bin/weir-broker" --node-id $i --peers "$peers" --listen "127.0.0.1:${ports[$((i-1))]}" --http-listen 127.0.0.1:0 \
    --data-dir "$work/n$i" --log warn >"$work/n$i.log" 2>&1 &
  pids+=($!)
done
bootstrap="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"

# Every node answers and sees the other two up.
all_up() {
  "$bin/weir" --bootstrap "127.0.0.1:$1" --output json cluster status 2>/dev/null \
    | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(not all(n["state"]=="up" for n in s["nodes"]))'
}
for port in "${ports[@]}"; do wait_for 60 "node on port $port to see every node up" all_up "$port"; done

# Samples every node for `window` seconds; prints one JSON line per node.
measure() {
  python3 - "$window" "$work" "${pids[@]}" <<'EOF'
import json, os, subprocess, sys, time
window, work, pids = float(sys.argv[1]), sys.argv[2], [int(p) for p in sys.argv[3:]]
hz = os.sysconf("SC_CLK_TCK")
def tasks(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = dict(l.split(":", 1) for l in f if ":" in l)
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        switches = int(status["voluntary_ctxt_switches"]) + int(status["nonvoluntary_ctxt_switches"])
        out[tid] = (name, int(fields[11]) + int(fields[12]), switches)
    return out
def machine():
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return sum(cpu), cpu[3] + cpu[4]
before = [tasks(p) for p in pids]
m0, t0 = machine(), time.monotonic()
time.sleep(window)
after = [tasks(p) for p in pids]
m1, elapsed = machine(), time.monotonic() - t0
busy = 100.0 * ((m1[0] - m0[0]) - (m1[1] - m0[1])) / (m1[0] - m0[0]) * os.cpu_count()
for node, (pid, b, a) in enumerate(zip(pids, before, after), 1):
    by_name, ticks, switches = {}, 0, 0
    for tid, (name, t1, s1) in a.items():
        _, t0_, s0 = b.get(tid, (name, 0, 0))
        ticks += t1 - t0_
        switches += s1 - s0
        by_name[name] = by_name.get(name, 0) + (t1 - t0_)
    status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
    kib = lambda k: int(status[k].split()[0])
    du = lambda *flags: int(subprocess.run(["du", "-s", "-B1", *flags, f"{work}/n{node}"],
                                           capture_output=True, text=True).stdout.split()[0])
    print(json.dumps({
        "node": node, "cpu_pct": 100.0 * ticks / hz / elapsed, "machine_busy_pct": busy,
        "wakeups_per_s": switches / elapsed, "threads": int(status["Threads"]),
        "rss_kib": kib("VmRSS"), "anon_kib": kib("RssAnon"), "file_kib": kib("RssFile"),
        "disk_apparent": du("--apparent-size"), "disk_allocated": du(),
        "by_thread": {k: round(100.0 * v / hz / elapsed, 2) for k, v in sorted(by_name.items(), key=lambda kv: -kv[1]) if v},
    }))
EOF
}

echo "== idle, no topic: settle ${settle}s, measure ${window}s"
sleep "$settle"
baseline=$(measure)

echo "== creating $partitions partitions (topics of up to $per_topic)"
created=0; topic=0; start=$(date +%s%N)
while ((created < partitions)); do
  count=$((partitions - created < per_topic ? partitions - created : per_topic))
  t=$(date +%s%N)
  timeout 300 "$bin/weir" --bootstrap "$bootstrap" topic create "idle-$topic" --partitions "$count" \
    --replication-factor 3 "${topic_config[@]}" >/dev/null
  echo "topic idle-$topic: $count partitions created in $(( ($(date +%s%N) - t) / 1000000 )) ms"
  created=$((created + count)); topic=$((topic + 1))
done
# Every node runs a replica of every partition and knows its leader.
all_led() {
  "$bin/weir" --bootstrap "127.0.0.1:$1" --output json cluster status 2>/dev/null \
    | python3 -c 'import json,sys; p=json.load(sys.stdin)["partitions"]; sys.exit(not (len(p)=='"$partitions"' and all(x["leader"] for x in p)))'
}
for port in "${ports[@]}"; do
  wait_for $((60 + partitions / 10)) "every partition to have a leader on the node on port $port" all_led "$port"
done
echo "all $partitions partitions have a leader on every node after $(( ($(date +%s%N) - start) / 1000000 )) ms"
# The leader of every partition as node 1 sees it (0 = none), as one JSON object.
leaders() {
  "$bin/weir" --bootstrap "127.0.0.1:${ports[0]}" --output json cluster status | python3 -c '
import json, sys
print(json.dumps({"%s/%s" % (x["topic"], x["partition"]): x["leader"] or 0 for x in json.load(sys.stdin)["partitions"]}))'
}

echo "== idle, $partitions partitions: settle ${settle}s, measure ${window}s"
sleep "$settle"
leaders_before=$(leaders)
loaded=$(measure)
leaders_after=$(leaders)
BEFORE=$leaders_before AFTER=$leaders_after python3 -c '
import collections, json, os
before, after = json.loads(os.environ["BEFORE"]), json.loads(os.environ["AFTER"])
count = lambda m: dict(sorted(collections.Counter(m.values()).items()))
print("leaders per node (0 = none) before / after the window:", count(before), "/", count(after))
print("partitions whose leader changed during the window:", sum(before[k] != after.get(k) for k in before))'

python3 - "$partitions" "$window" <<EOF
import json, sys
n, window = int(sys.argv[1]), sys.argv[2]
base = [json.loads(l) for l in """$baseline""".splitlines()]
load = [json.loads(l) for l in """$loaded""".splitlines()]
mib = lambda b: b / 1048576
print(f"\nmachine busy during the windows (all processes, % of one core): {base[0]['machine_busy_pct']:.0f} / {load[0]['machine_busy_pct']:.0f}")
print(f"{'node':<5}{'partitions':>11}{'CPU %core':>10}{'wakeups/s':>10}{'threads':>8}{'RSS MiB':>9}{'anon MiB':>9}{'file MiB':>9}{'disk MiB':>9}{'alloc MiB':>10}")
for rows, count in ((base, 0), (load, n)):
    for r in rows:
        print(f"{r['node']:<5}{count:>11}{r['cpu_pct']:>10.2f}{r['wakeups_per_s']:>10.0f}{r['threads']:>8}"
              f"{r['rss_kib']/1024:>9.1f}{r['anon_kib']/1024:>9.1f}{r['file_kib']/1024:>9.1f}"
              f"{mib(r['disk_apparent']):>9.1f}{mib(r['disk_allocated']):>10.1f}")
print(f"\nper partition (after - before) / {n}:")
print(f"{'node':<5}{'RSS KiB':>9}{'anon KiB':>9}{'file KiB':>9}{'disk KiB':>9}{'alloc KiB':>10}{'CPU us/s':>10}")
for b, l in zip(base, load):
    print(f"{b['node']:<5}{(l['rss_kib']-b['rss_kib'])/n:>9.1f}{(l['anon_kib']-b['anon_kib'])/n:>9.1f}"
          f"{(l['file_kib']-b['file_kib'])/n:>9.1f}{(l['disk_apparent']-b['disk_apparent'])/1024/n:>9.1f}"
          f"{(l['disk_allocated']-b['disk_allocated'])/1024/n:>10.1f}{(l['cpu_pct']-b['cpu_pct'])*1e4/n:>10.1f}")
print("\nCPU by thread name (% of one core), with partitions:")
for r in load:
    print(f"node {r['node']}: " + ", ".join(f"{k} {v}" for k, v in list(r["by_thread"].items())[:6]))
worst = max(r["cpu_pct"] for r in load)
print(f"\ngoal: idle node below 5% of one core at {n} partitions: highest node {worst:.1f}% -> {'met' if worst < 5 else 'NOT met'}")
print("RESULT " + json.dumps({"partitions": n, "window_s": float(window), "baseline": base, "loaded": load}))
EOF
