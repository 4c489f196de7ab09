"""Shell scripts that run on a board (POSIX sh + coreutils), sent over SSH on stdin.

Layout under the install directory (``/opt/edgefl`` by default)::

    current -> releases/<id>     the running release, switched atomically (rename)
    releases/<id>/               one bundle: client wheel, settings, password, unit, venv link
    venvs/<id>/                  virtual environments, named by what is installed in them
    wheelhouse/                  dependency wheels, shared by releases, checked by sha256
    state/                       the client's state directory (kept across releases)
    service-manager              systemd or supervisor: what started the client
    fedge-service, run/, log/    the supervisor, where systemd does not run

A release directory is the staging area: it is used only once ``.complete`` exists and
``current`` points to it; a failed install removes it (and a venv it was building) and
leaves ``current`` alone. A release that changes only settings reuses the venv.
"""

from __future__ import annotations

# Prints key=value lines describing the board and the installed release. Read-only.
PROBE = r"""
DIR=$1 PY=$2 UNIT_DIR=$3 UNIT=$4
echo "machine=$(uname -m)"
if command -v "$PY" >/dev/null 2>&1; then
  "$PY" -c 'import platform, struct, sys
print("python=%d.%d" % sys.version_info[:2])
print("bits=%d" % (8 * struct.calcsize("P")))
print("glibc=%s" % (platform.libc_ver()[1] or "none"))' 2>/dev/null || echo "python=broken"
else
  echo "python=none"
fi
echo "user=$(id -un)"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  echo "systemd=yes"; else echo "systemd=no"; fi
cur=$(readlink "$DIR/current" 2>/dev/null || true)
echo "current=${cur##*/}"
if [ -n "$cur" ] && [ -f "$DIR/$cur/.complete" ]; then echo "complete=yes"; else echo "complete=no"; fi
manager=$(cat "$DIR/service-manager" 2>/dev/null || true)
echo "manager=$manager"
if [ -f "$UNIT_DIR/$UNIT" ]; then
  echo "unit=$(sha256sum < "$UNIT_DIR/$UNIT" | cut -d' ' -f1)"; else echo "unit="; fi
running=no
case "$manager" in
  systemd) systemctl is-active --quiet "$UNIT" 2>/dev/null && running=yes ;;
  supervisor) [ -x "$DIR/fedge-service" ] && "$DIR/fedge-service" status && running=yes ;;
esac
echo "running=$running"
# healthy: the running client (not just its supervisor) wrote state/connected, i.e. it
# reached its broker; a client that loops failing to connect never does
pid=""
case "$manager" in
  systemd) pid=$(systemctl show -p MainPID --value "$UNIT" 2>/dev/null || true) ;;
  supervisor) pid=$(cat "$DIR/run/fedge.child.pid" 2>/dev/null || true) ;;
esac
if [ -x "$DIR/state" ]; then said=$(cat "$DIR/state/connected" 2>/dev/null || true)
else said=$(sudo -n cat "$DIR/state/connected" 2>/dev/null || true); fi  # another service user
client=no
if [ "$running" = yes ] && [ -n "$pid" ] && [ "$pid" != 0 ] && [ -d "/proc/$pid" ]; then client=yes; fi
echo "client=$client"
if [ "$client" = yes ] && [ "${said%% *}" = "$pid" ]; then echo "connected=yes"; else echo "connected=no"; fi
echo "wheels=$(ls "$DIR/wheelhouse" 2>/dev/null | tr '\n' ' ')"
echo "venvs=$(for v in "$DIR"/venvs/*; do [ -f "$v/.complete" ] && printf '%s ' "${v##*/}"; done)"
"""

# Creates the install directory (with sudo if needed) and clears a stale staging release.
PREPARE = r"""
set -eu
DIR=$1 REL=$2
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
if ! mkdir -p "$DIR" 2>/dev/null || [ ! -w "$DIR" ]; then
  $SUDO install -d -o "$(id -un)" -m 755 "$DIR" 2>/dev/null || {
    echo "ERROR: cannot create $DIR: no write access and no passwordless sudo" >&2; exit 1; }
fi
mkdir -p "$DIR/releases" "$DIR/wheelhouse" "$DIR/state"
chmod 700 "$DIR/state"
cur=$(readlink "$DIR/current" 2>/dev/null || true)
[ "${cur##*/}" = "$REL" ] || rm -rf "$DIR/releases/$REL"
"""

# Builds the release's virtual environment (unless one with the same content exists:
# venvs/<id> is named by the client wheel, the pinned wheels and the Python), links it into
# the release and smoke-tests the client. Never switches `current`.
INSTALL = r"""
set -eu
DIR=$1 REL=$2 PY=$3 WHEEL=$4 RUNTIME=$5 SVC_USER=$6 VID=$7
R="$DIR/releases/$REL" V="$DIR/venvs/$VID"
building=""
fail() { echo "ERROR: $*" >&2; [ -z "$building" ] || rm -rf "$V"; exit 1; }
if [ -d "$R/incoming" ]; then
  for f in "$R"/incoming/*.whl; do [ -e "$f" ] && mv -f "$f" "$DIR/wheelhouse/"; done
  rmdir "$R/incoming"
fi
if [ ! -f "$V/.complete" ]; then
  bad=""
  while read -r sum file; do
    w="$DIR/wheelhouse/$file"
    if [ ! -f "$w" ] || [ "$(sha256sum < "$w" | cut -d' ' -f1)" != "$sum" ]; then
      rm -f "$w"; bad="$bad $file"; fi
  done < "$R/wheels.sha256"
  [ -z "$bad" ] || fail "missing or damaged wheels on the board:$bad (flash again to upload them)"
  unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CONSTRAINT PIP_REQUIRE_VIRTUALENV
  export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  command -v "$PY" >/dev/null 2>&1 || fail "no Python at $PY on the board"
  rm -rf "$V"; mkdir -p "$DIR/venvs"; building=yes
  "$PY" -m venv --without-pip "$V" >"$R/install.log" 2>&1 ||
    fail "$PY -m venv failed: $(tail -n 1 "$R/install.log")"
  pipwhl=$(awk '$2 ~ /^pip-/ {print $2; exit}' "$R/wheels.sha256")
  "$V/bin/python" "$DIR/wheelhouse/$pipwhl/pip" install --no-index \
    --find-links "$DIR/wheelhouse" -r "$R/requirements.txt" "$R/$WHEEL" >>"$R/install.log" 2>&1 ||
    fail "pip install failed: $(grep '^ERROR' "$R/install.log" | tail -n 1)"
  "$V/bin/python" -c "from edge_client.runtime import load_runtime as l; r = l('$RUNTIME'); print('runtime', r.name, r.version)" >>"$R/install.log" 2>&1 ||
    fail "the installed client cannot load $RUNTIME: $(tail -n 1 "$R/install.log")"
  touch "$V/.complete"
  building=""
fi
ln -sfn "../../venvs/$VID" "$R/venv"
# with the release's own trusted key: fails if it cannot check signatures (no cryptography)
TK=""; [ ! -f "$R/signing.pub" ] || TK="$R/signing.pub"
EDGEFL_TRUST_KEY="$TK" "$R/venv/bin/fedge" info >"$R/fedge-info.txt" 2>&1 ||
  fail "fedge info failed: $(tail -n 1 "$R/fedge-info.txt")"
if [ "$SVC_USER" != "$(id -un)" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  $SUDO chown "$SVC_USER" "$R/password" "$DIR/state" || fail "cannot hand the password to $SVC_USER"
fi
touch "$R/.complete"
"""

# The journal needs root or the adm / systemd-journal group (Raspberry Pi OS's first user
# is in adm); otherwise ask sudo.
_JOURNAL = r"""J=journalctl
if [ "$(id -u)" != 0 ] && ! id -nG | grep -qwE 'adm|systemd-journal'; then J="sudo -n journalctl"; fi
"""

# `prune releases` removes releases other than `current` and the previous one; `prune`
# alone only the venvs and wheels that no release uses (after a failed activation).
_PRUNE = r"""
prune() {
  cur=$(readlink "$DIR/current" 2>/dev/null || true)
  if [ "${1:-}" = releases ]; then
    for r in "$DIR"/releases/*; do
      [ -e "$r" ] || continue
      n="releases/${r##*/}"; [ "$n" = "$cur" ] || [ "$n" = "$prev" ] || rm -rf "$r"
    done
  fi
  used=$(for r in "$DIR"/releases/*; do readlink "$r/venv" 2>/dev/null || true; done)
  for v in "$DIR"/venvs/*; do
    [ -e "$v" ] || continue
    printf '%s\n' "$used" | grep -qxF "../../venvs/${v##*/}" || rm -rf "$v"
  done
  keep=$(cat "$DIR"/releases/*/wheels.sha256 2>/dev/null | awk '{print $2}')
  for w in "$DIR"/wheelhouse/*; do
    [ -e "$w" ] || continue
    printf '%s\n' "$keep" | grep -qxF "${w##*/}" || rm -f "$w"
  done
}
"""

# Switches `current`, installs the unit, (re)starts the client and checks it stays up;
# on failure goes back to the previous release (or removes the service entirely).
ACTIVATE = _PRUNE + (
    r"""
set -eu
DIR=$1 REL=$2 UNIT=$3 UNIT_DIR=$4 WANT=$5 CHECK=$6 CONNECT=$7 BROKER=$8
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
# the unit directory needs sudo only when this user cannot write it
USUDO=$SUDO
if [ -n "$SUDO" ] && mkdir -p "$UNIT_DIR" 2>/dev/null && [ -w "$UNIT_DIR" ]; then USUDO=""; fi
"""
    + _JOURNAL
    + r"""
has_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }
if [ "$WANT" = auto ]; then if has_systemd; then WANT=systemd; else WANT=supervisor; fi; fi
if [ "$WANT" = systemd ] && ! has_systemd; then
  echo "ERROR: systemd is not running on this board (set service = \"auto\" or \"supervisor\")" >&2
  exit 1
fi
if [ "$WANT" = systemd ] && [ -n "$SUDO" ] && ! sudo -n true 2>/dev/null; then
  echo "ERROR: starting a systemd service needs root: give $(id -un) passwordless sudo, or set service = \"supervisor\"" >&2
  exit 1
fi
prev=$(readlink "$DIR/current" 2>/dev/null || true)
old=$(cat "$DIR/service-manager" 2>/dev/null || true)
switch() { ln -sfn "$1" "$DIR/.current.new" && mv -Tf "$DIR/.current.new" "$DIR/current"; }
install_unit() {
  $USUDO mkdir -p "$UNIT_DIR"
  $USUDO cp "$DIR/$1/$UNIT" "$UNIT_DIR/.$UNIT.new"
  $USUDO chmod 644 "$UNIT_DIR/.$UNIT.new"
  $USUDO mv -f "$UNIT_DIR/.$UNIT.new" "$UNIT_DIR/$UNIT"
}
stop_service() {
  case "$1" in
    systemd) $SUDO systemctl stop "$UNIT" 2>/dev/null || true ;;
    supervisor) if [ -x "$DIR/fedge-service" ]; then "$DIR/fedge-service" stop || true; fi ;;
  esac
}
start_service() {
  if [ "$WANT" = systemd ]; then
    $SUDO systemctl daemon-reload
    $SUDO systemctl enable --quiet "$UNIT"
    $SUDO systemctl restart "$UNIT"
  else
    cp "$DIR/current/supervise.sh" "$DIR/.fedge-service.new"
    chmod 755 "$DIR/.fedge-service.new"
    mv -f "$DIR/.fedge-service.new" "$DIR/fedge-service"
    "$DIR/fedge-service" restart
  fi
  echo "$WANT" > "$DIR/service-manager"
}
running() {
  if [ "$WANT" = systemd ]; then systemctl is-active --quiet "$UNIT"
  else "$DIR/fedge-service" client; fi
}
# the running client wrote state/connected (PID TIME URL) once it reached its broker
connected() {
  if [ "$WANT" = systemd ]; then p=$(systemctl show -p MainPID --value "$UNIT" 2>/dev/null || true)
  else p=$(cat "$DIR/run/fedge.child.pid" 2>/dev/null || true); fi
  if [ -x "$DIR/state" ]; then said=$(cat "$DIR/state/connected" 2>/dev/null || true)
  else said=$($SUDO cat "$DIR/state/connected" 2>/dev/null || true); fi  # another service user
  [ -n "$p" ] && [ "$p" != 0 ] && [ "${said%% *}" = "$p" ]
}
last_words() {
  if [ "$WANT" = systemd ]; then out=$($J -u "$UNIT" -n 20 --no-pager -o cat 2>/dev/null || true)
  else out=$(tail -n 20 "$DIR/log/fedge.log" 2>/dev/null || true); fi
  line=$(printf '%s\n' "$out" | grep -i 'error' | tail -n 1 || true)
  [ -n "$line" ] || line=$(printf '%s\n' "$out" | tail -n 1)
  printf '%s' "$line"
}
install_unit "releases/$REL" || {
  echo "ERROR: cannot write $UNIT_DIR/$UNIT: no write access and no passwordless sudo" >&2; exit 1; }
if [ -n "$old" ] && [ "$old" != "$WANT" ]; then stop_service "$old"; fi
switch "releases/$REL"
start_service || true  # judged below
# healthy: still running after CHECK seconds, and connected to its broker within CONNECT
sleep "$CHECK"
problem="" i=0
while :; do
  if ! running; then why=$(last_words); problem="did not stay running (${why:-no log})"; break; fi
  if connected; then break; fi
  if [ "$i" -ge $((CONNECT * 2)) ]; then
    why=$(last_words)
    problem="did not connect to its broker $BROKER within $CONNECT s (${why:-no log})"; break
  fi
  sleep 0.5; i=$((i + 1))
done
if [ -n "$problem" ]; then
  if [ "$prev" = "releases/$REL" ]; then
    # a restart of the installed release: nothing to go back to; it stays and keeps trying
    echo "ERROR: the client $problem; release $REL stays installed and keeps retrying" >&2
  elif [ -n "$prev" ] && [ -f "$DIR/$prev/.complete" ]; then
    switch "$prev"; install_unit "$prev" || true; start_service || true
    rm -rf "$DIR/releases/$REL"
    prune
    echo "ERROR: the new client $problem; went back to ${prev##*/}" >&2
  else
    stop_service "$WANT"
    [ "$WANT" = systemd ] && $SUDO systemctl disable --quiet "$UNIT" 2>/dev/null || true
    $USUDO rm -f "$UNIT_DIR/$UNIT"
    [ "$WANT" != systemd ] || $SUDO systemctl daemon-reload || true
    rm -f "$DIR/current" "$DIR/service-manager" "$DIR/fedge-service"
    rm -rf "$DIR/releases/$REL"
    prune
    echo "ERROR: the client $problem; the service was removed" >&2
  fi
  exit 1
fi
prune releases
"""
)

# Shows the last lines of the client's log, from journald or the supervisor's file.
LOGS = (
    r"""
DIR=$1 UNIT=$2 LINES=$3 FOLLOW=$4
"""
    + _JOURNAL
    + r"""
case "$(cat "$DIR/service-manager" 2>/dev/null)" in
  systemd)
    if [ "$FOLLOW" = yes ]; then exec $J -u "$UNIT" -n "$LINES" --no-pager -f; fi
    exec $J -u "$UNIT" -n "$LINES" --no-pager ;;
  supervisor)
    if [ "$FOLLOW" = yes ]; then exec tail -n "$LINES" -F "$DIR/log/fedge.log"; fi
    exec tail -n "$LINES" "$DIR/log/fedge.log" ;;
  *) echo "ERROR: the client is not installed in $DIR" >&2; exit 1 ;;
esac
"""
)

# The supervisor for boards without systemd: nohup + pid files, restarts on failure.
SUPERVISOR = r"""#!/bin/sh
# fedge-service: runs the edgefl client where systemd does not (made by fedcoord devices flash).
# Usage: fedge-service start|stop|restart|status|client   (status: supervisor alive;
# client: the fedge process alive). Restarts the client 10 s after a failure (exit != 0).
DIR=__DIR__
PIDF="$DIR/run/fedge.pid" CHILDF="$DIR/run/fedge.child.pid" LOG="$DIR/log/fedge.log"
RESTART_S=10
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
case "${1:-}" in
start)
  alive "$PIDF" && exit 0
  mkdir -p "$DIR/run" "$DIR/log"
  if [ -f "$LOG" ] && [ "$(wc -c < "$LOG")" -gt 5000000 ]; then mv -f "$LOG" "$LOG.1"; fi
  S=""; command -v setsid >/dev/null 2>&1 && S=setsid
  nohup $S "$0" _loop >>"$LOG" 2>&1 </dev/null &
  echo $! > "$PIDF"
  ;;
stop)
  if alive "$PIDF"; then
    kill -TERM "$(cat "$PIDF")"
    i=0
    while alive "$PIDF" && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    if alive "$PIDF"; then
      loop=$(cat "$PIDF")
      alive "$CHILDF" && kill -KILL "$(cat "$CHILDF")"
      kill -KILL "$loop" 2>/dev/null
      i=0
      while kill -0 "$loop" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    fi
  fi
  rm -f "$PIDF" "$CHILDF"
  ;;
restart) "$0" stop; "$0" start ;;
status) alive "$PIDF" ;;
client) alive "$CHILDF" ;;
_loop)
  stopping="" child=""
  trap 'stopping=1; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null' TERM INT
  while [ -z "$stopping" ]; do
    set -a; . "$DIR/current/fedge.env"; set +a
    "$DIR/current/venv/bin/fedge" run &
    child=$!
    echo "$child" > "$CHILDF"
    rc=0; wait "$child" || rc=$?
    while kill -0 "$child" 2>/dev/null; do rc=0; wait "$child" || rc=$?; done
    : > "$CHILDF"; child=""  # a builtin: a killed loop cannot empty a later loop's file
    if [ -n "$stopping" ] || [ "$rc" -eq 0 ]; then break; fi
    echo "$(date '+%F %T') fedge-service: fedge exited with $rc; restarting in $RESTART_S s"
    sleep "$RESTART_S" & wait $! || true
  done
  : > "$PIDF"
  ;;
*) echo "usage: $0 start|stop|restart|status|client" >&2; exit 2 ;;
esac
"""
