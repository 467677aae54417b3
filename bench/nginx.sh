# Sourced by the bench scripts: the nginx every HTTP figure is measured
# against (one worker, "ok" on 8080, no logs, temp files under WORKDIR).
nginx_conf() {  # out pidfile workdir [extra http directive...]
  local out=$1 pid=$2 dir=$3 extra
  shift 3
  extra=$(printf '  %s\n' "$@")
  [ $# -gt 0 ] || extra=""
  {
    cat <<NGINX
daemon off;
pid $pid;
worker_processes 1;
error_log /dev/null;
events { worker_connections 4096; }
http {
  access_log off;
NGINX
    [ -z "$extra" ] || echo "$extra"
    cat <<NGINX
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  server { listen 8080 reuseport; location / { return 200 "ok\n"; } }
}
NGINX
  } > "$out"
}
