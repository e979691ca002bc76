#!/usr/bin/env bash
# `make run`: two demo backends on 127.0.0.1:9001/9002, then the gateway on :8080 in the
# foreground. Ctrl-C stops all three.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py="$root/.venv/bin/python"
config="${1:-$root/etc/aiogate.yaml}"

"$py" "$here/backend.py" --name backend-1 --port 9001 & b1=$!
"$py" "$here/backend.py" --name backend-2 --port 9002 & b2=$!
trap 'kill $b1 $b2 2>/dev/null || true; wait 2>/dev/null || true' EXIT INT TERM

echo "demo backends: backend-1 on :9001, backend-2 on :9002" >&2
echo "try: curl -i localhost:8080/api/users ; curl -i localhost:8080/api/orders" >&2
"$root/.venv/bin/aiogate" run --config "$config"
