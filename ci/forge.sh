#!/usr/bin/env bash
# A real forge (Gitea) on loopback, for the pull-request flows.
#
#   ci/forge.sh up DIR [USER...]
#                       build gitea when missing (ci/build-tools.sh forge), start it with its
#                       state in DIR (sqlite, no SSH, no registration, offline), create the admin
#                       `kars-admin` and the users given (default: alice bob) with an API token
#                       each, and write DIR/env; returns once the API answers
#   ci/forge.sh down DIR
#                       stop it (SIGTERM, then SIGKILL after 10 s)
#   ci/forge.sh status DIR
#                       print whether it runs and where
#
# DIR/env (shell syntax, also read by the Rust tests):
#   FORGE_URL=http://127.0.0.1:PORT       the forge (HTTP API under /api/v1)
#   FORGE_ADMIN=kars-admin                an administrator
#   FORGE_USERS="alice bob"               the other users
#   FORGE_TOKEN_FILE_<user>=DIR/tokens/<user>   one API token per user (all scopes), mode 0600
#   FORGE_PASSWORD=…                      every user's password (Git over HTTP)
# The port is picked free at start. Everything the forge writes stays under DIR.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
log() { printf '[forge] %s\n' "$*" >&2; }
die() { printf '[forge] error: %s\n' "$*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

running() { [ -f "$1/gitea.pid" ] && kill -0 "$(cat "$1/gitea.pid")" 2>/dev/null; }

up() {
  local dir="$1"; shift
  local users=("$@")
  [ ${#users[@]} -gt 0 ] || users=(alice bob)
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if running "$dir"; then log "already running: $(grep FORGE_URL "$dir/env")"; return 0; fi
  local bin share
  bin="$("$here/build-tools.sh" forge | tail -1)"
  share="$(dirname "$bin")/share/gitea"
  [ -x "$bin/gitea" ] || die "gitea was not built into $bin"
  local port; port="$(free_port)"
  local url="http://127.0.0.1:$port"
  local password; password="kars-$(openssl rand -hex 12)"
  mkdir -p "$dir/data" "$dir/repos" "$dir/log" "$dir/tokens" "$dir/custom"
  cat >"$dir/app.ini" <<INI
APP_NAME = kars forge (test)
RUN_MODE = prod
RUN_USER = $(id -un)
WORK_PATH = $dir

[server]
PROTOCOL = http
HTTP_ADDR = 127.0.0.1
HTTP_PORT = $port
ROOT_URL = $url/
DOMAIN = 127.0.0.1
DISABLE_SSH = true
START_SSH_SERVER = false
OFFLINE_MODE = true
LFS_START_SERVER = false
APP_DATA_PATH = $dir/data
STATIC_ROOT_PATH = $share

[database]
DB_TYPE = sqlite3
PATH = $dir/data/gitea.db
SQLITE_JOURNAL_MODE = WAL

[repository]
ROOT = $dir/repos
DEFAULT_BRANCH = main

[security]
INSTALL_LOCK = true
SECRET_KEY = $(openssl rand -hex 32)
INTERNAL_TOKEN = $(openssl rand -hex 48)
PASSWORD_HASH_ALGO = pbkdf2_hi
MIN_PASSWORD_LENGTH = 8
; webhooks to the agent on loopback
ALLOWED_HOST_LIST = loopback

[service]
DISABLE_REGISTRATION = true
REQUIRE_SIGNIN_VIEW = false
ENABLE_NOTIFY_MAIL = false

[mailer]
ENABLED = false

[oauth2]
ENABLED = false

[session]
PROVIDER = memory

[cache]
ADAPTER = memory

[queue]
TYPE = channel

[indexer]
ISSUE_INDEXER_TYPE = db
REPO_INDEXER_ENABLED = false

[cron]
ENABLED = false

[cron.update_checker]
ENABLED = false

[actions]
ENABLED = false

[packages]
ENABLED = false

[log]
MODE = file
LEVEL = Info
ROOT_PATH = $dir/log
INI
  export GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT=true GITEA_WORK_DIR="$dir" GITEA_CUSTOM="$dir/custom"
  local gitea=("$bin/gitea" --config "$dir/app.ini" --work-path "$dir" --custom-path "$dir/custom")
  "${gitea[@]}" migrate >"$dir/log/migrate.log" 2>&1 || { tail -20 "$dir/log/migrate.log" >&2; die "gitea migrate failed (log: $dir/log/migrate.log)"; }
  setsid "${gitea[@]}" web >"$dir/log/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/gitea.pid"
  local i
  for i in $(seq 1 300); do
    if curl -fsS "$url/api/healthz" >/dev/null 2>&1; then break; fi
    running "$dir" || { tail -30 "$dir/log/stdout.log" >&2; die "gitea exited during start (logs: $dir/log)"; }
    sleep 0.2
  done
  curl -fsS "$url/api/healthz" >/dev/null 2>&1 || die "gitea did not answer on $url within 60 s (logs: $dir/log)"
  {
    echo "FORGE_URL=$url"
    echo "FORGE_ADMIN=kars-admin"
    echo "FORGE_USERS=\"${users[*]}\""
    echo "FORGE_PASSWORD=$password"
  } >"$dir/env.tmp"
  local user admin
  for user in kars-admin "${users[@]}"; do
    admin=()
    [ "$user" != kars-admin ] || admin=(--admin)
    "${gitea[@]}" admin user create --username "$user" --password "$password" \
      --email "$user@forge.test" "${admin[@]}" --must-change-password=false >>"$dir/log/users.log" 2>&1 \
      || { tail -5 "$dir/log/users.log" >&2; die "could not create forge user $user"; }
    (umask 077; "${gitea[@]}" admin user generate-access-token --username "$user" --token-name kars \
      --scopes all --raw >"$dir/tokens/$user" 2>>"$dir/log/users.log") \
      || die "could not create a token for $user"
    echo "FORGE_TOKEN_FILE_${user//-/_}=$dir/tokens/$user" >>"$dir/env.tmp"
  done
  mv "$dir/env.tmp" "$dir/env"
  log "forge ready on $url (users: kars-admin ${users[*]}; env: $dir/env)"
}

down() {
  local dir="$1"
  [ -f "$dir/gitea.pid" ] || return 0
  local pid; pid="$(cat "$dir/gitea.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/gitea.pid"
  log "forge stopped"
}

status() {
  local dir="$1"
  if running "$dir"; then echo "running: $(sed -n 's/^FORGE_URL=//p' "$dir/env" 2>/dev/null)"; else echo "stopped"; fi
}

case "${1:-}" in
  up) [ $# -ge 2 ] || { usage; exit 2; }; shift; up "$@" ;;
  down) [ $# -eq 2 ] || { usage; exit 2; }; down "$2" ;;
  status) [ $# -eq 2 ] || { usage; exit 2; }; status "$2" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
