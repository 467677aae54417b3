#!/usr/bin/env bash
# A python3 earlier in PATH that is not Debian's (a version manager's shim,
# lacking python3-h2/yaml/jsonschema) must not be what the scripts run.
set -euo pipefail
repo="$1"
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
cat >"$shim/python3" <<'SHIM'
#!/bin/sh
echo "python3 shim from PATH was run: $*" >&2
exit 97
SHIM
chmod +x "$shim/python3"
export PATH="$shim:$PATH"
fail=0
# The lab (run directly, as README and the tests do).
if ! out=$("$repo/tools/lab" --help 2>&1) || ! grep -q "lab up --nodes" <<<"$out"; then
  echo "FAIL: tools/lab did not run under Debian's python3: $out"; fail=1
fi
# Test apps run as executables.
for app in tests/e2e/apps/tcpapp.py; do
  if ! "$repo/$app" --help >/dev/null 2>&1; then
    echo "FAIL: $app did not run under Debian's python3"; fail=1
  fi
done
# Shell scripts: no bare python3 (it would resolve to the shim).
if bad=$(grep -nE '(^|[^/[:alnum:]_-])python3 ' "$repo"/tools/*.sh "$repo"/bench/*.sh | grep -v '^\s*#' | grep -vE 'python3-[a-z]' ); then
  echo "FAIL: scripts call python3 from PATH:"; echo "$bad"; fail=1
fi
# deps.sh checks that Debian's interpreter has the modules.
if ! grep -q "/usr/bin/python3 -c 'import h2, yaml, jsonschema'" "$repo/tools/deps.sh"; then
  echo "FAIL: tools/deps.sh does not check Debian's python3 modules"; fail=1
fi
/usr/bin/python3 -c 'import h2, yaml, jsonschema' || { echo "FAIL: Debian's python3 lacks h2/yaml/jsonschema"; fail=1; }
[ $fail = 0 ] && echo "ok: scripts run /usr/bin/python3"
exit $fail
