# Sourced by bench scripts that run a lab (after bench/lab_env.sh): servers
# and a mixed load through the mesh, from pod mesh/client.
#   mesh_servers POD...      iperf3 on 5201 and nginx on 8080 in each pod
#   mesh_load SECONDS POD... to each pod: iperf3 1 and 16 streams both ways,
#                            wrk -c32 keep-alive and with Connection: close
. bench/nginx.sh
. bench/wait_port.sh
mesh_servers() {
  local p
  for p in "$@"; do
    nginx_conf "$work/nginx-$p.conf" "$work/nginx-$p.pid" "$work"
    $LAB exec "mesh/$p" -- iperf3 -s -p 5201 >/dev/null 2>&1 &
    $LAB exec "mesh/$p" -- nginx -c "$work/nginx-$p.conf" -p "$work" >/dev/null 2>&1 &
  done
}
mesh_load() {
  local dur=$1 p ip port args
  shift
  for p in "$@"; do
    ip=$($LAB pod ip mesh "$p")
    for port in 5201 8080; do wait_port mesh/client "$ip" "$port"; done
    for args in "-P 1" "-P 16" "-P 16 -R"; do
      # shellcheck disable=SC2086
      $LAB exec mesh/client -- iperf3 -c "$ip" -p 5201 -t "$dur" $args >/dev/null
    done
    $LAB exec mesh/client -- wrk -t2 -c32 -d"${dur}s" "http://$ip:8080/" >/dev/null
    $LAB exec mesh/client -- wrk -t2 -c32 -d"${dur}s" -H "Connection: close" "http://$ip:8080/" >/dev/null
  done
}
