# Sourced by the bench scripts (after LAB is set): waits up to 10 s until
# POD (NAMESPACE/NAME) can open a TCP connection to IP:PORT; exits the
# script with an error otherwise.
wait_port() {  # pod ip port
  for _ in $(seq 100); do
    $LAB exec "$1" -- bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: $2:$3 not reachable from $1" >&2
  exit 1
}
