# Sourced by the bench scripts: CPU seconds (utime + stime from
# /proc/PID/stat, all threads) of the given processes, summed.
cpu_seconds() {  # pid...
  local t=0 s
  for p in "$@"; do
    s=$(sed 's/.*) //' "/proc/$p/stat")
    t=$((t + $(awk '{print $12 + $13}' <<<"$s")))
  done
  echo "$t $(getconf CLK_TCK)" | awk '{printf "%.2f", $1 / $2}'
}
