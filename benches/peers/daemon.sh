# Sourced by the per-job scripts: start a private `opsd serve` for P
# concurrent command jobs in a fresh state directory, wait until it
# answers, and stop it and remove the directory on exit. Needs $OPSD and
# $P; sets $st (the state directory, socket $st/s.sock) and $daemon (pid).
#
#   . "$here/daemon.sh" NAME    # NAME: part of the temporary directory's name
st=$(mktemp -d "${TMPDIR:-/tmp}/opsd-$1.XXXXXX")
printf 'workers = 64\n[concurrency]\ncommand = %s\n' "$P" > "$st/cfg.toml"
"$OPSD" serve --state-dir "$st" --socket "$st/s.sock" --config "$st/cfg.toml" 2>/dev/null &
daemon=$!
trap 'kill $daemon 2>/dev/null || true; wait $daemon 2>/dev/null || true; rm -rf "$st"' EXIT
while ! "$OPSD" health --socket "$st/s.sock" >/dev/null 2>&1; do sleep 0.05; done
