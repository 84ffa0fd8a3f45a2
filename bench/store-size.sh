#!/usr/bin/env bash
# Store size of a folder after `cue sync init`: copies FOLDER to a temporary place (the
# original is not touched), imports it, and prints the store over the raw bytes (everything
# in .cuedeck/ but logs, as cue-bench counts it) with SQLite's own breakdown by table and
# index (the dbstat virtual table: pages, payload and unused bytes).
#
# Usage: bench/store-size.sh FOLDER [CUE]
#   CUE defaults to target/release/cue (cargo build --release -p cue-cli).
# Needs python3 (its sqlite3 module with dbstat, as Debian's has).
set -euo pipefail

SRC=${1:?usage: bench/store-size.sh FOLDER [CUE]}
CUE=$(realpath "${2:-target/release/cue}")
WORK=$(mktemp -d /tmp/cue-store-size.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cp -r "$SRC" "$WORK/ws"
rm -rf "$WORK/ws/.cuedeck"
# No relay is needed to import; the address is only recorded in the config.
(cd "$WORK/ws" && "$CUE" sync init --relay ws://127.0.0.1:9 >/dev/null)

python3 - "$WORK/ws" <<'EOF'
import os, sqlite3, sys

root = sys.argv[1]
deck = os.path.join(root, ".cuedeck")
raw = 0
for d, dirs, files in os.walk(root):
    if os.path.abspath(d) == os.path.abspath(deck):
        dirs[:] = []
        continue
    dirs[:] = [x for x in dirs if os.path.join(d, x) != deck]
    raw += sum(os.path.getsize(os.path.join(d, f)) for f in files)
store = sum(
    os.path.getsize(os.path.join(deck, f))
    for f in os.listdir(deck)
    if not f.endswith(".log") and os.path.isfile(os.path.join(deck, f))
)
print(f"raw bytes {raw}, store bytes {store}, store/raw {store / raw:.3f}")
c = sqlite3.connect(os.path.join(deck, "store.sqlite3"))
page = c.execute("PRAGMA page_size").fetchone()[0]
print(f"page size {page}")
print(f"{'table or index':<40} {'pages':>6} {'bytes':>10} {'payload':>10} {'unused':>9} {'/raw':>6}")
for name, pages, size, payload, unused in c.execute(
    "SELECT name, count(*), sum(pgsize), sum(payload), sum(unused) FROM dbstat "
    "GROUP BY name ORDER BY 3 DESC"
):
    print(f"{name:<40} {pages:>6} {size:>10} {payload:>10} {unused:>9} {size / raw:>6.3f}")
EOF
