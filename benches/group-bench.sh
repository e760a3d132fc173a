#!/usr/bin/env bash
# Consumer-group benchmarks on three brokers on this one machine (127.0.0.1, temp data dirs,
# release build), driven by `group-bench` (benches/src/bin/group_bench.rs):
#
# 1. Ceilings of the data directory's file system (../shared/tools/ceilings.sh), same run.
# 2. Rebalance time. Topic `rb` (12 partitions, RF=3), a producer at 2,000 records/s over its
#    partitions, a group of three member processes reading it (client defaults: sticky,
#    10 s session, heartbeats long-polled up to 1 s, auto-commit). CYCLES times: a fourth member
#    joins (timed from the moment it sends its join, just before `subscribe`, to the latest
#    on_assigned/on_revoked of any member once all four own 3 partitions each), then after
#    SETTLE_MS the oldest member is SIGKILLed (timed from the coordinator's "member evicted" log
#    line, i.e. without the session timeout, to the latest callback of the survivors once they
#    own 4 each). For every partition a member kept through a rebalance: the longest gap
#    between two polls that returned records of it, across the rebalance, against the same
#    window 2 s earlier.
# 3. Commit throughput of one group, RF=3 (`__consumer_offsets` has RF=3), on an idle topic
#    `commits` (12 partitions), RUNS runs of RUN_SECONDS each: (a) one member committing
#    synchronously in a loop; (b) 3 members x 4 commits in flight each (raw CommitOffsets
#    requests with the members' ids and epochs: the client API allows one commit in flight per
#    member); (c) 12 members (3 processes x 4 consumers) each committing synchronously through
#    the client. For comparison in the same run: one record at a time produced to a topic of
#    1 partition, RF=3, acks=all (one write to one RF=3 partition, like a commit).
# Prints each event and run as it goes, then summary tables (medians, p90, max; commit latency
# as a multiple of the 4 KiB write + fdatasync ceiling and of the produce latency).
#
# Usage: benches/group-bench.sh
# Environment: CYCLES (default 12), SETTLE_MS (2500), RUNS (3), RUN_SECONDS (10), WEIR_BENCH_DIR
# (where the temp dir goes; default ./target), QUIET_WAIT_S (how long to wait for other
# weir-broker processes and for the rest of the machine to use under QUIET_CORES (0.5) cores;
# default 60), KEEP_LOGS (a directory to copy the broker logs and raw results into).
# Every process this script starts is killed and the data dirs removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${CYCLES:-12}
settle_ms=${SETTLE_MS:-2500}
runs=${RUNS:-3}
seconds=${RUN_SECONDS:-10}
quiet_wait=${QUIET_WAIT_S:-60}
quiet_cores=${QUIET_CORES:-0.5}
cargo build --release -q -p weir-broker -p weir-cli -p weir-benches --bins
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d "${WEIR_BENCH_DIR:-$PWD/target}/weir-group-bench.XXXXXX")
declare -A node_pid=()
cleanup() {
  exec 2>/dev/null
  for pid in "${node_pid[@]}"; do kill -9 "$pid" || true; done
  wait
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS" && cp -r "$work"/*.log "$work"/*.txt "$work"/rb "$KEEP_LOGS"/ || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
source benches/lib/quiet.sh # after the cd above: paths are from the repository root
wait_quiet
echo "== machine: $(nproc) cores, $(uname -r), data on $(df -h "$work" | awk 'NR==2 {print $1}')"
echo "== code: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- broker client proto || echo " + uncommitted changes in $(git diff --name-only HEAD -- broker client proto | paste -sd' ')")"
echo "== uptime: $(uptime)"
start_node() {
  "$bin/weir-broker" --node-id "$1" --peers "$peers" --listen "127.0.0.1:${ports[$(($1 - 1))]}" \
    --data-dir "$work/n$1" --http-listen off --log warn,weir_broker::group=info >>"$work/n$1.log" 2>&1 &
  node_pid[$1]=$!
}
ports=($(free_port) $(free_port) $(free_port))
peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
bootstrap="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
for i in 1 2 3; do start_node $i; done
weir() { timeout 30 "$bin/weir" --bootstrap "$bootstrap" "$@"; }
deadline=$((SECONDS + 60))
until weir topic create rb --partitions 12 --replication-factor 3 >/dev/null 2>&1; do
  ((SECONDS < deadline)) || { echo "the cluster did not come up; logs:" >&2; tail -n 20 "$work"/n?.log >&2; exit 1; }
  sleep 0.2
done
weir topic create commits --partitions 12 --replication-factor 3 >/dev/null
weir topic create produce1 --partitions 1 --replication-factor 3 >/dev/null
weir group describe warm-up >/dev/null 2>&1 || true # creates __consumer_offsets (8 partitions, RF=3)
# Measured while leader balancing settles (the brokers are idle meanwhile).
echo "== ceilings (same file system)"
../shared/tools/ceilings.sh "$work" | tee "$work/ceilings.txt"
# Every node up, every partition led by its first replica, none under-replicated: leader
# balancing would otherwise move coordinators and partitions in the middle of a measurement.
balanced() {
  weir --output json cluster status 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
ps = s["partitions"]
ok = all(n["state"] == "up" for n in s["nodes"]) and len(ps) >= 33
ok = ok and all(p["leader"] == p["replicas"][0] and not p["under_replicated"] for p in ps)
sys.exit(not ok)' 2>/dev/null
}
deadline=$((SECONDS + 120))
until balanced; do
  ((SECONDS < deadline)) || { echo "(leaders not balanced after 120 s; measuring anyway)"; break; }
  sleep 1
done
echo "== cluster: 3 nodes, topics rb (12 partitions), commits (12), produce1 (1), __consumer_offsets (8), all RF=3"
wait_quiet

echo "== rebalance: $cycles cycles of a 4th member joining and the oldest being SIGKILLed, ${settle_ms} ms apart"
mkdir -p "$work/rb"
"$bin/group-bench" rebalance "$bootstrap" rb rb-group "$work/rb" "$cycles" "$settle_ms" | sed 's/^/   /'

echo "== commits: $runs runs of ${seconds} s per setup"
: >"$work/commits.txt"
# Cores used by the three brokers and by everything else (clients included) while $@ runs.
with_cpu() {
  local b0=0 b1=0 m0 m1 t0 t1 pid
  for pid in "${node_pid[@]}"; do b0=$((b0 + $(cpu_ticks "$pid"))); done
  m0=$(machine_ticks); t0=$(date +%s%N)
  "$@"
  t1=$(date +%s%N); m1=$(machine_ticks)
  for pid in "${node_pid[@]}"; do b1=$((b1 + $(cpu_ticks "$pid"))); done
  echo "cores $(echo "scale=2; ($b1 - $b0) / $hz / (($t1 - $t0) / 10^9)" | bc) $(echo "scale=2; ($m1 - $m0 - $b1 + $b0) / $hz / (($t1 - $t0) / 10^9)" | bc)"
}
for setup in "commit-a 1 1 1 client" "commit-b 3 1 4 raw" "commit-c 3 4 1 client"; do
  set -- $setup
  with_cpu "$bin/group-bench" commit "$bootstrap" commits "$1" "$2" "$3" "$4" "$5" "$runs" "$seconds" \
    | tee -a "$work/commits.txt" | sed 's/^/   /'
done
with_cpu "$bin/group-bench" produce-sync "$bootstrap" produce1 "$runs" "$seconds" | tee -a "$work/commits.txt" | sed 's/^/   /'
echo "== coordinators loading their groups (a group's first request, or a new leader of its partition):"
for i in 1 2 3; do sed -n "s/^\(\S*\) .*consumer groups loaded from __consumer_offsets \(.*\) groups=.*/\1 n$i \2/p" "$work/n$i.log"; done \
  | sort | sed 's/^/   /'

python3 - "$work" <<'EOF'
import bisect, datetime, glob, math, os, re, statistics as st, sys
work = sys.argv[1]
rb = os.path.join(work, "rb")
def q(values, p):
    """Nearest rank."""
    s = sorted(values)
    return s[min(len(s), max(1, math.ceil(p * len(s)))) - 1]
ms = lambda ns: ns / 1e6
def row(label, values):
    if values:
        print(f"| {label} | {len(values)} | {st.median(values):.1f} | {q(values, 0.9):.1f} | {max(values):.1f} |")
    else:
        print(f"| {label} | 0 | | | |")
# Evictions: "<time>Z  INFO weir_broker::group::coordinator: member evicted group=G member=M reason=..."
evicted = {}
for path in glob.glob(os.path.join(work, "n?.log")):
    for line in open(path, errors="replace"):
        m = re.match(r"^(\S+Z)\s+INFO\s+\S+\s+member evicted\s+group=(\S+)\s+member=(\S+)", line)
        if m:
            t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
            evicted[m.group(3)] = int(t.timestamp()) * 10**9 + t.microsecond * 1000
# Every callback of every member: (time, member, kind).
callbacks = []
for line in open(os.path.join(rb, "events.log")):
    f = line.split()
    if len(f) >= 3 and f[1] in ("assigned", "revoked", "lost"):
        callbacks.append((int(f[2]), f[0], f[1]))
events = [l.rstrip("\n").split("\t") for l in open(os.path.join(rb, "rebalance.tsv"))]
joins, kills, detect, windows = [], [], [], {}
first_revoked, last_revoked, released_to_done, first_assigned = [], [], [], []
initial = []
for kind, cycle, t_event, t_done, n, late, name, member_id in events:
    t_event, t_done = int(t_event), int(t_done)
    if kind == "initial":
        initial.append(ms(t_done - t_event))
        continue
    if kind == "kill":
        if member_id not in evicted:
            print(f"   (no eviction logged for {name} {member_id} in cycle {cycle})")
            continue
        t_start = evicted[member_id]
        detect.append(ms(t_start - t_event))
        kills.append(ms(t_done - t_start))
        assigned = [t for t, _, k in callbacks if t_start <= t <= t_done and k == "assigned"]
        if assigned:
            first_assigned.append(ms(min(assigned) - t_start))
    else:
        t_start = t_event
        joins.append(ms(t_done - t_start))
        revoked = [t for t, _, k in callbacks if t_start <= t <= t_done and k == "revoked"]
        if revoked:
            first_revoked.append(ms(min(revoked) - t_start))
            last_revoked.append(ms(max(revoked) - t_start))
            released_to_done.append(ms(t_done - max(revoked)))
    windows[(kind, cycle)] = (t_start, t_done)
# Times at which a poll returned records, per member and partition.
arrivals = {}
for path in glob.glob(os.path.join(rb, "records-*.txt")):
    name = os.path.basename(path)[len("records-"):-len(".txt")]
    for line in open(path):
        f = line.split()
        if len(f) == 3:
            arrivals.setdefault((name, int(f[1])), []).append(int(f[0]))
for v in arrivals.values():
    v.sort()
def longest_gap(times, start, end):
    """Longest interval between consecutive arrivals that overlaps [start, end]."""
    i = max(bisect.bisect_right(times, start) - 1, 0)
    longest = 0
    while i + 1 < len(times) and times[i] < end:
        longest = max(longest, times[i + 1] - times[i])
        i += 1
    return longest
gaps = {"join": ([], []), "kill": ([], [])}
for line in open(os.path.join(rb, "kept.tsv")):
    kind, cycle, name, partition = line.split()
    times = arrivals.get((name, int(partition)), [])
    if (kind, cycle) not in windows or len(times) < 2:
        continue
    start, end = windows[(kind, cycle)]
    gaps[kind][0].append(ms(longest_gap(times, start, end)))
    gaps[kind][1].append(ms(longest_gap(times, start - 2 * 10**9, end - 2 * 10**9)))
steady = [ms(b - a) for v in arrivals.values() for a, b in zip(v, v[1:])]
print("== rebalance summary (ms)")
print("| measure | n | median | p90 | max |")
print("|---|---|---|---|---|")
row("**join**: join sent -> complete assignment (4 x 3)", joins)
row("join -> first on_revoked (old members told)", first_revoked)
row("join -> last on_revoked", last_revoked)
row("last on_revoked -> complete (new member's on_assigned)", released_to_done)
row("**kill**: eviction logged -> complete assignment (3 x 4)", kills)
row("eviction -> first on_assigned of a survivor", first_assigned)
row("SIGKILL -> eviction logged (session 10 s, last heartbeat up to 1 s before the kill)", detect)
for kind in ("join", "kill"):
    row(f"{kind}: longest gap of a kept partition across the rebalance", gaps[kind][0])
    row(f"{kind}: the same partitions, same window 2 s earlier", gaps[kind][1])
row("all: interval between polls returning a partition's records", steady)
row("initial: 3 members joining at once -> complete assignment (3 x 4)", initial)
done = joins + kills
print(f"goal (< 500 ms from the event to a complete assignment): {sum(x < 500 for x in done)} of {len(done)} under;"
      f" {sum(x >= 900 for x in done)} took a heartbeat long poll or more (>= 900 ms: a long poll that did not wake)")

print("== commit summary (median of the runs; range)")
flush_us = None
for line in open(os.path.join(work, "ceilings.txt")):
    if "fdatasync after every 4 KiB" in line:
        m = re.search(r"([0-9.,]+) ([GMk])B/s", line)
        if m:
            rate = float(m.group(1).replace(",", ".")) * {"G": 1e9, "M": 1e6, "k": 1e3}[m.group(2)]
            flush_us = 4096 / rate * 1e6  # one 4 KiB write + fdatasync, in microseconds
rows, cores, key = {}, {}, None
for line in open(os.path.join(work, "commits.txt")):
    f = line.split()
    if f[0] == "commit":
        mode, procs, consumers, tasks = f[1:5]
        members = int(procs) * int(consumers)
        key = (f"commit, {members} member{'s' if members > 1 else ''} ({procs} process{'es' if int(procs) > 1 else ''}), "
               f"{tasks} in flight per member{' (raw requests)' if mode == 'raw' else ''}")
        rows.setdefault(key, []).append((float(f[9]), int(f[10]), int(f[11]), int(f[7]), f[12]))
    elif f[0] == "produce-sync":
        key = "produce, 1 record at a time, 1 partition RF=3"
        rows.setdefault(key, []).append((float(f[5]), int(f[6]), int(f[7]), int(f[3]), "-"))
    elif f[0] == "cores" and key:
        cores[key] = (f[1], f[2])
print("| setup | per s | p50 ms | p99 ms | errors | coordinator | cores: brokers, clients + rest |")
print("|---|---|---|---|---|---|---|")
for key, v in rows.items():
    rate = [x[0] for x in v]
    c = cores.get(key, ("?", "?"))
    print(f"| {key} | {st.median(rate):.0f} ({min(rate):.0f}-{max(rate):.0f}) | {st.median(x[1] for x in v) / 1000:.2f} "
          f"| {st.median(x[2] for x in v) / 1000:.2f} | {sum(x[3] for x in v)} | {v[0][4]} | {c[0]}, {c[1]} |")
single = next((v for k, v in rows.items() if k.startswith("commit, 1 member ")), None)
produce = rows.get("produce, 1 record at a time, 1 partition RF=3")
if single:
    p50 = st.median(x[1] for x in single)
    print(f"one member, synchronous: 1 / p50 latency = {1e6 / p50:.0f} commits/s")
    if flush_us:
        print(f"commit p50 / one 4 KiB write + fdatasync ({flush_us:.0f} us, ceilings above): {p50 / flush_us:.2f}")
    if produce:
        print(f"commit p50 / produce p50 (1 record, 1 partition, RF=3): {p50 / st.median(x[1] for x in produce):.2f}")
EOF
