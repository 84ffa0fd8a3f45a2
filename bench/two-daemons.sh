# Sourced by the bench scripts that need two devices: makes $W (a fresh folder under /tmp
# named after $NAME) with A and B, a relay on 127.0.0.1, A made a workspace and B joined,
# both daemons started; stops them and the relay when the script exits. Needs $BIN (the
# folder of `cue` and `cue-relay`). Defines `listing DIR` (each synced file's md5).
W=$(mktemp -d "/tmp/cue-${NAME:-bench}.XXXXXX")
cd "$W" && mkdir A B
PORT=$((20000 + RANDOM % 20000))
"$BIN/cue-relay" --listen 127.0.0.1:$PORT >relay.log 2>&1 &
RELAY=$!
stop() {
    timeout 20 "$BIN/cue" -C A sync stop >/dev/null 2>&1
    timeout 20 "$BIN/cue" -C B sync stop >/dev/null 2>&1
    kill $RELAY 2>/dev/null
    [ -n "${KEEP_W:-}" ] || rm -rf "$W"
}
trap stop EXIT
sleep 0.5
"$BIN/cue" -C A sync init --relay ws://127.0.0.1:$PORT --name a >/dev/null 2>&1
TOKEN=$("$BIN/cue" -C A sync invite 2>/dev/null | tail -1)
"$BIN/cue" -C A sync start >/dev/null
"$BIN/cue" -C B sync join "$TOKEN" --name b >/dev/null 2>&1
"$BIN/cue" -C B sync start >/dev/null

listing() { (cd "$1" && find . -path ./.cuedeck -prune -o -type f ! -name '.cue-tmp-*' -print0 | sort -z | xargs -0 -r md5sum); }
