# Sourced by the bench scripts that run a lab, from the repository's root:
#   . bench/lab_env.sh NAME
# LAB (the lab command), LAB_DIR, SLUICE_BUILD_DIR, a scratch directory $work
# (/tmp/sluice-bench-NAME.*), and on exit, whatever way the script ends: the
# script's own bench_cleanup if it defines one, then the lab taken down and
# $work removed. lab_up N [lab up flags] starts a fresh lab of N nodes.
export SLUICE_BUILD_DIR="${SLUICE_BUILD_DIR:-$PWD/build}"
LAB="/usr/bin/python3 tools/lab"
LAB_DIR="${SLUICE_LAB_DIR:-/run/sluice-lab}"
work=$(mktemp -d "/tmp/sluice-bench-$1.XXXXXX")
bench_exit() {
  if declare -F bench_cleanup >/dev/null; then bench_cleanup || true; fi
  disown -a 2>/dev/null || true  # servers die with the lab; no job notices
  $LAB down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap bench_exit EXIT
lab_up() {  # nodes [lab up flags...]
  $LAB down >/dev/null 2>&1 || true
  $LAB up --nodes "$@" >/dev/null
}
# Restarts the agents of the given nodes with --sockmap=on (beside
# $SLUICE_AGENT_ARGS) and stops the bench when one does not run with it.
sockmap_on() {  # node...
  local n mode
  for n in "$@"; do
    SLUICE_AGENT_ARGS="${SLUICE_AGENT_ARGS:-} --sockmap=on" $LAB agent restart "$n" >/dev/null
    mode=$($LAB node exec "$n" -- curl -sf http://127.0.0.1:15000/config_dump |
      /usr/bin/python3 -c 'import json,sys; s=json.load(sys.stdin)["bpf"]["sockmap"]; print(s["mode"], s.get("detail", ""))')
    if [ "${mode%% *}" != on ]; then
      echo "bench: the $n agent runs with sockmap '$mode' after --sockmap=on (see $LAB_DIR/$n/agent.log)" >&2
      exit 1
    fi
  done
}
