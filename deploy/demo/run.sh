#!/usr/bin/env bash
# `make run`: two demo backends on 127.0.0.1:9001/9002, then the gateway on :8080 in the
# foreground, serving deploy/demo/aiogate.yaml. Ctrl-C stops all three.
#
# The demo's secrets come from the environment. Unset ones are made up here (random, never a
# published value) and kept in deploy/demo/.env (mode 0600, not in git), so they stay the same
# from run to run and `. deploy/demo/.env` gives them to the shell you run curl in.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py="$root/.venv/bin/python"
config="${1:-$here/aiogate.yaml}"
env_file="${AIOGATE_DEMO_ENV:-$here/.env}"

if [ -f "$env_file" ]; then
  # shellcheck disable=SC1090
  . "$env_file"
fi
new_secret() { "$py" -c 'import secrets; print(secrets.token_urlsafe(32))'; }
: "${JWT_SECRET:=$(new_secret)}"
: "${DEMO_API_KEY:=$(new_secret)}"
export JWT_SECRET DEMO_API_KEY
(
  umask 077
  printf 'export JWT_SECRET=%q\nexport DEMO_API_KEY=%q\n' "$JWT_SECRET" "$DEMO_API_KEY" >"$env_file"
)
chmod 600 "$env_file"

"$py" "$here/backend.py" --name backend-1 --port 9001 & b1=$!
"$py" "$here/backend.py" --name backend-2 --port 9002 & b2=$!
trap 'kill $b1 $b2 2>/dev/null || true; wait 2>/dev/null || true' EXIT INT TERM

rel_env=${env_file#"$root/"}
cat >&2 <<EOF
demo backends: backend-1 on :9001, backend-2 on :9002
secrets: $rel_env (JWT_SECRET, DEMO_API_KEY). In another terminal, from $root:
  curl -i localhost:8080/api/users ; curl -i localhost:8080/api/orders
  . $rel_env
  curl -i -H "X-API-Key: \$DEMO_API_KEY" localhost:8080/api/protected
  TOKEN=\$(.venv/bin/python -c 'import jwt, os, time; print(jwt.encode({"sub": "alice",
    "exp": int(time.time()) + 600}, os.environ["JWT_SECRET"], "HS256"))')
  curl -i -H "Authorization: Bearer \$TOKEN" localhost:8080/api/protected
EOF
"$root/.venv/bin/aiogate" run --config "$config"
