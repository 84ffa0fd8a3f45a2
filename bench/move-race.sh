#!/usr/bin/env bash
# Moves made on one device while a program on the other appends to the same notes every
# 20 ms: the data-safety checks of session 30 (docs/ARCHITECTURE.md, "Known gaps"). Two
# daemons and a relay on 127.0.0.1, five tries of CASE; then every line the appender
# wrote, and each note's first line, is looked for in A (for `over`, but for what A held of
# the replaced note when its user moved the other over it), A and B are compared, and
# notes found in two files counted.
#
# Usage: bench/move-race.sh CASE [BIN]
#   CASE: rename (mv n.md renamed.md), chain (mv n.md N.md; mv N.md m.md),
#         into-folder (mv n.md d/; mv d e), swap-files, swap-folders (mv p t; mv q p;
#         mv t q), over (mv src.md dst.md, a note moved over another), out-and-back
#         (mv n.md elsewhere; mv it back 0.3 s later), restore (rm n.md, then a backup
#         copied back 0.3 s later)
#   BIN: the folder of `cue` and `cue-relay` (default target/debug).
# Prints `lost: N lines`, `split: N`, `same: yes|NO`.
set -uo pipefail

CASE=${1:?usage: bench/move-race.sh CASE [BIN]}
BIN=$(realpath "${2:-target/debug}")
NAME=move-race
. "$(dirname "$(realpath "$0")")/two-daemons.sh"

# appender PATH TAG: appends "TAG i" lines, logging each one written to written.TAG.
appender() {
    python3 - "$1" "$2" "$W/written.$2" <<'PY' &
import os, sys, time
path, tag, log = sys.argv[1], sys.argv[2], sys.argv[3]
with open(log, "a") as out:
    for i in range(60):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"%s %d\n" % (tag.encode(), i))
            os.close(fd)
            out.write("%s %d\n" % (tag, i))
            out.flush()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        time.sleep(0.02)
PY
}

for k in 1 2 3 4 5; do
    case $CASE in
        swap-folders) mkdir -p A/p$k A/q$k; echo "p$k" >A/p$k/x.md; echo "q$k" >A/q$k/x.md ;;
        swap-files) echo "p$k" >A/p$k.md; echo "q$k" >A/q$k.md ;;
        over) echo "src$k" >A/src$k.md; echo "dst$k" >A/dst$k.md ;;
        *) echo "note $k" >A/n$k.md; mkdir -p A/d$k ;;
    esac
done
# The notes' first lines are looked for at the end too (a note's text lost whole).
cat $(find A -name "*.md") >"$W/written.first"
sleep 3
for k in 1 2 3 4 5; do
    WRITERS=()
    case $CASE in
        swap-folders) appender B/p$k/x.md Bp$k; WRITERS+=($!); appender B/q$k/x.md Bq$k ;;
        swap-files) appender B/p$k.md Bp$k; WRITERS+=($!); appender B/q$k.md Bq$k ;;
        over) appender B/src$k.md Bs$k; WRITERS+=($!); appender B/dst$k.md Bd$k ;;
        *) appender B/n$k.md Bn$k ;;
    esac
    WRITERS+=($!)
    sleep 0.7
    case $CASE in
        rename) mv A/n$k.md A/renamed$k.md ;;
        chain) mv A/n$k.md A/N$k.md; mv A/N$k.md A/m$k.md ;;
        into-folder) mv A/n$k.md A/d$k/; mv A/d$k A/e$k ;;
        swap-folders) mv A/p$k A/t$k; mv A/q$k A/p$k; mv A/t$k A/q$k ;;
        swap-files) mv A/p$k.md A/t$k.md; mv A/q$k.md A/p$k.md; mv A/t$k.md A/q$k.md ;;
        # (What A holds of dst just before is what its user deletes: not looked for.)
        over) cp A/dst$k.md "$W/seen.dst$k"; mv A/src$k.md A/dst$k.md ;;
        out-and-back) mv A/n$k.md "$W/out$k.md"; sleep 0.3; mv "$W/out$k.md" A/n$k.md ;;
        restore) cp A/n$k.md "$W/bak$k.md"; rm A/n$k.md; sleep 0.3; cp "$W/bak$k.md" A/n$k.md ;;
    esac
    wait "${WRITERS[@]}"
    sleep 1.5
done

for _ in $(seq 40); do
    [ "$(listing A)" = "$(listing B)" ] && break
    sleep 0.5
done
[ "$(listing A)" = "$(listing B)" ] && echo "same: yes" || echo "same: NO"
python3 - "$W" <<'PY'
import glob, os, sys
root = sys.argv[1]
have = set()
for d, dirs, files in os.walk(os.path.join(root, "A")):
    dirs[:] = [x for x in dirs if x != ".cuedeck"]
    for n in files:
        if not n.startswith(".cue-tmp-"):
            have.update(open(os.path.join(d, n), errors="replace").read().splitlines())
seen = {l for f in glob.glob(os.path.join(root, "seen.*")) for l in open(f).read().splitlines()}
lost = [l for f in glob.glob(os.path.join(root, "written.*")) for l in open(f).read().splitlines() if l not in have and l not in seen]
print("lost: %d lines%s" % (len(lost), (" (" + " ".join(lost[:8]) + ")") if lost else ""))
PY
split=0
for k in 1 2 3 4 5; do
    [ "$(grep -rlx --exclude-dir=.cuedeck --exclude='.cue-tmp-*' "note $k" A | wc -l)" -gt 1 ] && split=$((split + 1))
done
echo "split: $split"
[ "$split" -gt 0 ] && echo "A: $(cd A && find . -path ./.cuedeck -prune -o -type f -print | sort | tr '\n' ' ')"
true
