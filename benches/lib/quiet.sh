# Shared by the cluster benchmark scripts (source it): how busy the rest of the machine is, and
# waiting (within a budget) for it to be quiet before measuring.
#
# Needs: node_pid (array of this script's broker pids, may be empty), optionally single_pid
# (one more pid of ours), quiet_wait (seconds to wait in all), quiet_cores (the most the rest
# of the machine may use to count as quiet).

# Busy ticks of one process (user + system).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Busy ticks of the whole machine (every CPU, every process and the kernel).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
hz=$(getconf CLK_TCK)

# Cores the rest of the machine (everything but this script's brokers) used over 3 s.
other_cores() {
  local m0 m1 ours0=0 ours1=0 pid
  m0=$(machine_ticks)
  for pid in "${node_pid[@]}" ${single_pid:-}; do ours0=$((ours0 + $(cpu_ticks "$pid"))); done
  sleep 3
  m1=$(machine_ticks)
  for pid in "${node_pid[@]}" ${single_pid:-}; do ours1=$((ours1 + $(cpu_ticks "$pid"))); done
  echo "scale=2; ($m1 - $m0 - $ours1 + $ours0) / $hz / 3" | bc
}

# Other brokers on the machine (another benchmark) or other heavy work (builds, tests) would skew
# the figures: wait for them, within the shared quiet_wait budget, then measure anyway.
quiet_deadline=$((SECONDS + quiet_wait))
wait_quiet() {
  local other
  while ((SECONDS < quiet_deadline)); do
    other=$(other_cores)
    if ((${#node_pid[@]} == 0)) && pgrep -x weir-broker >/dev/null; then
      echo "(waiting: $(pgrep -xc weir-broker) weir-broker process(es) of someone else are running)"
    elif (($(echo "$other > $quiet_cores" | bc))); then
      echo "(waiting: the rest of the machine uses $other cores; busiest: $(ps -eo pcpu,comm --sort=-pcpu | sed -n 2p | xargs))"
    else
      echo "(the rest of the machine uses $other cores)"
      return
    fi
    sleep 7
  done
  echo "(measuring anyway after waiting ${quiet_wait}s in all: the rest of the machine uses $(other_cores) cores)"
}
