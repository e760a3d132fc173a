#!/usr/bin/env bash
# Replication cost and failover on this one machine (one disk, the same cores shared by every
# broker and the producer), all on 127.0.0.1:
#
# 1. Ceilings of the data directory's file system (../shared/tools/ceilings.sh), same run.
# 2. Throughput and latency: a single-node broker (topics of replication factor 1) and three
#    brokers (`--node-id`/`--peers`, topics of replication factor 3) run side by side; `weir bench
#    produce` (1 KiB records, acks=all, one producer process) against 1 and 8 partitions of each,
#    RF=1 and RF=3 alternating, ROUNDS times: once saturating (64 MiB producer buffer: the
#    throughput figure, latencies are queueing in that buffer) and once with a 4 MiB buffer
#    (latency not dominated by queueing). Per run: msgs/s, MB/s, p50/p99/p999 of the per-record
#    acknowledgement latency, and the CPU each process used. Summary: medians over the rounds,
#    RF3/RF1 per round (paired) and its median, MB/s as a fraction of the fdatasync-per-1-MiB
#    ceiling.
# 3. Failover, on a topic of 1 partition, RF=3, while `failover-probe` (benches/src/bin) sends one
#    record at a time (weir-client defaults, acks=all) and logs every acknowledgement: KILLS times
#    SIGKILL the partition's leader, then TERMS times stop it with SIGTERM (it hands leadership
#    over first); after each, restart the node and wait until leader balancing has handed the
#    partition back to its first replica. Per event: time from the signal to the first
#    acknowledgement of a record sent after it, and the longest time without any
#    acknowledgement around it; also the gap while leadership is handed back. Medians.
#
# Usage: benches/e2e-cluster.sh [RECORDS]   (default 400000 records per produce run)
# Environment: ROUNDS (default 3), KILLS (default 7), TERMS (default 5), WEIR_BENCH_DIR (where
# the temp data dirs go; default ./target), QUIET_WAIT_S (how long to wait for other weir-broker
# processes, and for the rest of the machine to use less than QUIET_CORES cores (default 0.5),
# before measuring; default 600, shared by all the waits), KEEP_LOGS (a directory to
# copy the broker logs, the probe's log and the raw results into before cleaning up).
# Everything runs on 127.0.0.1; every process this script starts is killed and the data dirs
# removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-400000}
rounds=${ROUNDS:-3}
kills=${KILLS:-7}
terms=${TERMS:-5}
quiet_wait=${QUIET_WAIT_S:-600}
quiet_cores=${QUIET_CORES:-0.5}
# --bins: every binary of the three packages (`--bin NAME` would build that one alone).
cargo build --release -q -p weir-broker -p weir-cli -p weir-benches --bins
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d "${WEIR_BENCH_DIR:-$PWD/target}/weir-e2e-cluster.XXXXXX")
declare -A node_pid=()
single_pid=
probe_pid=
cleanup() {
  exec 2>/dev/null
  for pid in "${node_pid[@]}" $single_pid $probe_pid; do kill -9 "$pid" || true; done
  wait
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$work"/*.txt "$work"/*.tsv "$KEEP_LOGS"/ || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ns() { date +%s%N; }
source benches/lib/quiet.sh # after the cd above: paths are from the repository root
wait_quiet
echo "== machine: $(nproc) cores, $(uname -r), data on $(df -h "$work" | awk 'NR==2 {print $1}')"
echo "== code: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- broker client cli proto || echo " + uncommitted changes in $(git diff --name-only HEAD -- broker client cli proto | paste -sd' ')")"
echo "== load: $(cut -d' ' -f1-3 /proc/loadavg); other weir-broker processes: $(pgrep -xc weir-broker || true)"
echo "== busiest processes now:"
ps -eo pcpu,comm --sort=-pcpu | sed -n '2,4p' | sed 's/^/   /'

echo "== ceilings (same file system)"
if [ -x ../shared/tools/ceilings.sh ]; then
  ../shared/tools/ceilings.sh "$work" | tee "$work/ceilings.txt"
else
  dd if=/dev/zero of="$work/probe" bs=1M count=256 oflag=dsync 2>&1 | tail -n 1 \
    | sed 's/.*, \([0-9.,]* [GMk]B\/s\)$/fdatasync after every 1 MiB: \1/' | tee "$work/ceilings.txt"
  rm -f "$work/probe"
fi

# Starts (or restarts, same port and data dir) node $1 of the three-node cluster. Raft's
# leadership changes are logged (a handful of lines per election), for the failover timeline.
start_node() {
  "$bin/weir-broker" --node-id "$1" --peers "$peers" --listen "127.0.0.1:${ports[$(($1 - 1))]}" \
    --data-dir "$work/n$1" --http-listen off --log warn,raft=info,weir_broker::raft=info >>"$work/n$1.log" 2>&1 &
  node_pid[$1]=$!
}
ports=($(free_port) $(free_port) $(free_port))
peers="1=127.0.0.1:${ports[0]},2=127.0.0.1:${ports[1]},3=127.0.0.1:${ports[2]}"
bootstrap="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
for i in 1 2 3; do start_node $i; done
single_port=$(free_port)
single="127.0.0.1:$single_port"
"$bin/weir-broker" --data-dir "$work/single" --listen "$single" --http-listen off --log warn >"$work/single.log" 2>&1 &
single_pid=$!
weir3() { timeout 30 "$bin/weir" --bootstrap "$bootstrap" "$@"; }
weir1() { timeout 30 "$bin/weir" --bootstrap "$single" "$@"; }
deadline=$((SECONDS + 60))
until weir3 topic create rf3-p1 --partitions 1 --replication-factor 3 >/dev/null 2>&1; do
  ((SECONDS < deadline)) || { echo "the three-node cluster did not come up; logs:" >&2; tail -n 20 "$work"/n?.log >&2; exit 1; }
  sleep 0.2
done
weir3 topic create rf3-p8 --partitions 8 --replication-factor 3 >/dev/null
until weir1 topic create rf1-p1 --partitions 1 --replication-factor 1 >/dev/null 2>&1; do
  ((SECONDS < deadline)) || { echo "the single node did not come up" >&2; exit 1; }
  sleep 0.2
done
weir1 topic create rf1-p8 --partitions 8 --replication-factor 1 >/dev/null

# One produce run: bench RF PARTITIONS BUFFER_BYTES ROUND. Appends a line to results.tsv:
# rf partitions buffer round json-file wall_s then CPU seconds of n1 n2 n3 single client other.
bench() {
  local rf=$1 partitions=$2 buffer=$3 round=$4 target=$bootstrap
  [ "$rf" = 1 ] && target=$single
  local out="$work/bench-rf$rf-p$partitions-b$buffer-r$round.json"
  local before=() after=() t0 t1 m0 m1
  for pid in "${node_pid[1]}" "${node_pid[2]}" "${node_pid[3]}" "$single_pid"; do before+=("$(cpu_ticks "$pid")"); done
  m0=$(machine_ticks)
  t0=$(now_ns)
  { TIMEFORMAT='%U %S'; time timeout 600 "$bin/weir" --bootstrap "$target" --output json bench produce \
      --topic "rf$rf-p$partitions" --records "$records" --partitions-from-topic --acks all \
      --buffer-bytes-max "$buffer" >"$out" 2>"$work/bench.err"; } 2>"$work/time.txt" \
    || { echo "bench failed:" >&2; cat "$work/bench.err" >&2; exit 1; }
  t1=$(now_ns)
  m1=$(machine_ticks)
  for pid in "${node_pid[1]}" "${node_pid[2]}" "${node_pid[3]}" "$single_pid"; do after+=("$(cpu_ticks "$pid")"); done
  python3 - "$out" "$rf" "$partitions" "$buffer" "$round" "$t0" "$t1" "$m0" "$m1" "$hz" "$(cat "$work/time.txt")" \
    "${before[@]}" "${after[@]}" >>"$work/results.tsv" <<'EOF'
import json, sys
out, rf, parts, buf, rnd, t0, t1, m0, m1, hz, client = sys.argv[1:12]
before, after = [int(x) for x in sys.argv[12:16]], [int(x) for x in sys.argv[16:20]]
hz, wall = int(hz), (int(t1) - int(t0)) / 1e9
brokers = [(a - b) / hz for a, b in zip(after, before)]
client_s = sum(float(x) for x in client.split())
other = (int(m1) - int(m0)) / hz - sum(brokers) - client_s
r = json.load(open(out))
lat = r["latency"]
print("\t".join(str(x) for x in [rf, parts, buf, rnd, r["msgs_per_s"], r["mb_per_s"], lat["p50_ms"], lat["p99_ms"],
      lat["p999_ms"], r["errors"], wall, *brokers, client_s, other]))
w = lambda s: f"{s / wall:.2f}"
cpu = f"n1 {w(brokers[0])} n2 {w(brokers[1])} n3 {w(brokers[2])}" if rf == "3" else f"broker {w(brokers[3])}"
print(f"   RF={rf} {parts:>1}p buffer {int(buf) >> 20:>2} MiB round {rnd}: {r['msgs_per_s']:9.0f} msgs/s {r['mb_per_s']:7.1f} MB/s"
      f"  p50 {lat['p50_ms']:7.1f}  p99 {lat['p99_ms']:7.1f}  p999 {lat['p999_ms']:7.1f} ms"
      f"  | cores: {cpu} client {w(client_s)} other {w(other)}", file=sys.stderr)
EOF
}

echo "== produce: $records x 1 KiB per run, acks=all, one producer process, $rounds rounds"
echo "   (cores = CPU seconds / wall seconds of each process during the run; other = the rest of the"
echo "   machine's busy time: kernel threads, interrupts, every other process)"
for round in $(seq "$rounds"); do
  wait_quiet
  for buffer in 67108864 4194304; do
    for partitions in 1 8; do
      # RF=1 first in odd rounds, RF=3 first in even ones: drift in the machine's load cancels.
      if ((round % 2)); then order="1 3"; else order="3 1"; fi
      for rf in $order; do bench "$rf" "$partitions" "$buffer" "$round"; done
    done
  done
done

echo "== produce summary (median over rounds; ranges min-max)"
python3 - "$work/results.tsv" "$work/ceilings.txt" <<'EOF'
import re, statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
ceiling = None
for line in open(sys.argv[2]):
    if "fdatasync after every 1 MiB" in line:
        m = re.search(r"([0-9.,]+) ([GMk])B/s", line)
        if m:
            ceiling = float(m.group(1).replace(",", ".")) * {"G": 1000, "M": 1, "k": 1e-3}[m.group(2)]
runs = {}
for r in rows:
    key = (r[0], r[1], r[2])
    runs.setdefault(key, {})[r[3]] = [float(x) for x in r[4:]]
def med(key, i):
    return st.median(v[i] for v in runs[key].values())
def rng(key, i, fmt):
    vals = [v[i] for v in runs[key].values()]
    return f"{fmt(min(vals))}-{fmt(max(vals))}"
k = lambda x: f"{x / 1000:.0f}k"
f0 = lambda x: f"{x:.0f}"
f1 = lambda x: f"{x:.1f}"
print("| run | msgs/s | MB/s | p50 ms | p99 ms | p999 ms | cores: brokers + client (other) |")
print("|---|---|---|---|---|---|---|")
for buf in ("67108864", "4194304"):
    for parts in ("1", "8"):
        for rf in ("1", "3"):
            key = (rf, parts, buf)
            if key not in runs:
                continue
            # v: msgs/s, MB/s, p50, p99, p999, errors, wall, n1, n2, n3, single, client, other
            cores = st.median((sum(v[7:10]) if rf == "3" else v[10]) / v[6] for v in runs[key].values())
            client = st.median(v[11] / v[6] for v in runs[key].values())
            other = st.median(v[12] / v[6] for v in runs[key].values())
            print(f"| RF={rf}, {parts} partition{'s' if parts != '1' else ''}, {int(buf) >> 20} MiB buffer "
                  f"| {k(med(key, 0))} ({rng(key, 0, k)}) | {f0(med(key, 1))} ({rng(key, 1, f0)}) "
                  f"| {f1(med(key, 2))} | {f1(med(key, 3))} | {f1(med(key, 4))} | {cores:.2f} + {client:.2f} ({other:.2f}) |")
print()
for buf in ("67108864", "4194304"):
    for parts in ("1", "8"):
        a, b = runs.get(("3", parts, buf)), runs.get(("1", parts, buf))
        if not a or not b:
            continue
        ratios = [a[r][1] / b[r][1] for r in a if r in b]
        line = (f"RF3/RF1 throughput, {parts} partition(s), {int(buf) >> 20} MiB buffer: median {st.median(ratios):.2f}"
                f" (per round {', '.join(f'{x:.2f}' for x in ratios)})")
        if ceiling:
            line += (f"; MB/s / fdatasync-per-1-MiB ceiling ({ceiling:.0f} MB/s): RF=1 {med(('1', parts, buf), 1) / ceiling:.3f},"
                     f" RF=3 {med(('3', parts, buf), 1) / ceiling:.3f} (x3 copies on this disk: {3 * med(('3', parts, buf), 1) / ceiling:.3f})")
        print(line)
EOF

# Failover. The single node is no longer needed.
kill "$single_pid"; wait "$single_pid" 2>/dev/null || true; single_pid=
weir3 topic create failover --partitions 1 --replication-factor 3 >/dev/null
describe() { weir3 --output json topic describe failover 2>/dev/null; }
# The node that leads failover/0 as every node sees it (waits until all three agree, bounded).
current_leader() {
  local views until=$((SECONDS + 30))
  while ((SECONDS < until)); do
    views=$(for port in "${ports[@]}"; do
      timeout 10 "$bin/weir" --bootstrap "127.0.0.1:$port" --output json topic describe failover 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitions"][0]["leader"])' 2>/dev/null || echo none
    done | sort -u)
    [[ $views =~ ^[123]$ ]] && { echo "$views"; return; }
    sleep 0.5
  done
}
# Every node up, failover/0 led by its first replica and no replica lagging: balanced.
balanced() {
  weir3 --output json cluster status 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
p = [p for p in s["partitions"] if p["topic"] == "failover"][0]
sys.exit(not (all(n["state"] == "up" for n in s["nodes"]) and p["leader"] == p["replicas"][0] and not p["under_replicated"]))' 2>/dev/null
}
# Waits until the probe has an acknowledgement of a record sent at or after $1 (ns); bounded.
acked_after() {
  local until=$((SECONDS + 30))
  until awk -v t="$1" '$1 == "ok" && $2 >= t {found = 1; exit} END {exit !found}' "$work/probe.log"; do
    ((SECONDS < until)) || { echo "   (no acknowledgement within 30 s)"; return 0; }
    sleep 0.5
  done
}
# Restarts node $1 and waits (bounded) until the partition is balanced again.
restart_and_rebalance() {
  local r b ok=1 until=$((SECONDS + 60))
  r=$(now_ns)
  start_node "$1"
  until balanced; do
    ((SECONDS < until)) || { ok=0; break; }
    sleep 0.5
  done
  b=$(now_ns)
  echo "restart $1 $r $b $ok" >>"$work/events.txt"
  sleep 1
}

"$bin/failover-probe" "$bootstrap" failover 0 3600 >"$work/probe.log" 2>"$work/probe.err" &
probe_pid=$!
until balanced && [ "$(grep -c '^ok' "$work/probe.log")" -ge 100 ]; do
  kill -0 "$probe_pid" 2>/dev/null || { echo "failover-probe stopped:" >&2; cat "$work/probe.err" >&2; exit 1; }
  sleep 0.5
done
: >"$work/events.txt"
echo "== failover: $kills x SIGKILL of the leader of failover/0, then $terms x SIGTERM (restart + rebalance after each)"
for event in $(seq "$kills" | sed 's/.*/kill9/') $(seq "$terms" | sed 's/.*/term/'); do
  leader=$(current_leader)
  [ -n "$leader" ] || { echo "the nodes did not agree on a leader of failover/0 within 30 s" >&2; exit 1; }
  pid=${node_pid[$leader]}
  if [ "$event" = kill9 ]; then
    t=$(now_ns); kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    acked_after "$t"
    echo "kill9 $leader $t" >>"$work/events.txt"
  else
    t=$(now_ns); kill -TERM "$pid"
    (sleep 30; kill -9 "$pid" 2>/dev/null) & watchdog=$!
    wait "$pid" 2>/dev/null || true
    e=$(now_ns)
    kill "$watchdog" 2>/dev/null || true; wait "$watchdog" 2>/dev/null || true
    acked_after "$t"
    sleep 1
    echo "term $leader $t $e" >>"$work/events.txt"
  fi
  unset "node_pid[$leader]"
  restart_and_rebalance "$leader"
done
kill "$probe_pid"; wait "$probe_pid" 2>/dev/null || true; probe_pid=

group=$(sed -n 's/.*opened log group=\([0-9]*\) dir=.*\/partitions\/failover-0\.g.*/\1/p' "$work/n1.log" | head -n 1)
python3 - "$work/probe.log" "$work/events.txt" "$group" "$work"/n?.log <<'EOF'
import datetime, re, statistics as st, sys
oks, errs = [], []
for line in open(sys.argv[1]):
    f = line.split()
    if f and f[0] == "ok":
        oks.append((int(f[1]), int(f[2])))
    elif f and f[0] == "err":
        errs.append((int(f[1]), int(f[2]), " ".join(f[3:])))
acks = sorted(a for _, a in oks)
events = [l.split() for l in open(sys.argv[2]) if l.strip()]
# Leadership changes of the failover partition's raft group, from the brokers' logs.
changes = []
pattern = re.compile(r"^(\S+Z) +INFO \S+ (.*?) raft_id=(\d+) group=" + re.escape(sys.argv[3]) + r" ")
for path in sys.argv[4:]:
    for line in open(path, errors="replace"):
        m = pattern.match(line)
        if not m:
            continue
        what = m.group(2)
        short = ("leader" if what.startswith("became leader") else "candidate" if what.startswith("became candidate")
                 else "pre-candidate" if what.startswith("became pre-candidate") else "transfer" if "transfer leadership" in what
                 else None)
        if short:
            t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
            changes.append((int(t.timestamp()) * 10**9 + t.microsecond * 1000, f"n{m.group(3)} {short}"))
changes.sort()
def timeline(start, end):
    return ", ".join(f"+{(t - start) / 1e6:.0f} {what}" for t, what in changes if start <= t <= end) or "(no change)"
ms = lambda ns: ns / 1e6
def first_ack_after(t):
    """From t to the first acknowledgement of a record sent at or after t."""
    after = [a for s, a in oks if s >= t]
    return min(after) - t if after else None
def longest_silence(start, end):
    """Longest time without an acknowledgement in [start, end], counted from the last one before."""
    prev = max([a for a in acks if a <= start], default=start)
    longest = 0
    for a in acks:
        if start < a <= end:
            longest = max(longest, a - prev)
            prev = a
    return max(longest, min(end, max(acks)) - prev)
windows, rows = [], {"kill9": [], "term": [], "restart": []}
for i, e in enumerate(events):
    kind, node, t = e[0], e[1], int(e[2])
    # Each event's window ends where the next one begins (the restart after a kill, ...).
    end = int(events[i + 1][2]) if i + 1 < len(events) else max(acks)
    if kind == "kill9":
        first, silence = first_ack_after(t), longest_silence(t, end)
        windows.append((t, end))
        rows[kind].append((first, silence))
        print(f"   SIGKILL node {node}: first ack of a record sent after the kill {ms(first):7.0f} ms;"
              f" longest time without an ack {ms(silence):7.0f} ms\n      raft: {timeline(t, end)}")
    elif kind == "term":
        exited = int(e[3])
        first, silence = first_ack_after(t), longest_silence(t, end)
        windows.append((t, end))
        rows[kind].append((first, silence))
        print(f"   SIGTERM node {node}: first ack of a record sent after the signal {ms(first):7.0f} ms;"
              f" longest time without an ack {ms(silence):7.0f} ms; process exited after {ms(exited - t):6.0f} ms"
              f"\n      raft: {timeline(t, end)}")
    else:
        balanced_at, ok = int(e[3]), e[4] == "1"
        silence = longest_silence(t, end)
        windows.append((t, end))
        rows[kind].append((None, silence))
        print(f"   restart node {node}: {'balanced' if ok else 'NOT balanced (60 s)'} after {ms(balanced_at - t):6.0f} ms;"
              f" longest time without an ack meanwhile (incl. the hand-back) {ms(silence):6.0f} ms"
              f"\n      raft: {timeline(t, end)}")
quiet = [a - s for s, a in oks if not any(w0 - 1e9 <= s <= w1 for w0, w1 in windows)]
print(f"   probe: {len(oks)} acknowledged, {len(errs)} failed sends; round trip outside the events: "
      f"median {ms(st.median(quiet)):.1f} ms, p99 {ms(sorted(quiet)[int(len(quiet) * 0.99)]):.1f} ms" if quiet else "")
for s, e, message in errs:
    near = [ev for ev in events if int(ev[2]) <= s]
    where = f"{ms(s - int(near[-1][2])):.0f} ms after {near[-1][0]} of node {near[-1][1]}" if near else "before the first event"
    print(f"   failed send, sent {where}, failed after {ms(e - s):.0f} ms: {message}")
def summary(name, values):
    values = [v for v in values if v is not None]
    if values:
        print(f"{name}: median {ms(st.median(values)):.0f} ms (min {ms(min(values)):.0f}, max {ms(max(values)):.0f}, n={len(values)})")
print("== failover summary")
summary("SIGKILL leader -> first ack of a record sent after the kill", [f for f, _ in rows["kill9"]])
summary("SIGKILL leader -> longest time without an ack", [s for _, s in rows["kill9"]])
summary("SIGTERM leader -> first ack of a record sent after the signal", [f for f, _ in rows["term"]])
summary("SIGTERM leader -> longest time without an ack (produce gap)", [s for _, s in rows["term"]])
summary("restart + hand-back to the first replica -> longest time without an ack", [s for _, s in rows["restart"]])
EOF
