#!/usr/bin/env bash
# Runs pymongo's own test files (collection, cursor, bulk, database, change stream) of one
# release against a fresh `ferry sandbox`. Not run by CI: it needs the pymongo sdist.
#
#   sandbox/tests/pymongo/run.sh [PYMONGO_SRC_DIR] [extra pytest args...]
#
# PYMONGO_SRC_DIR is an unpacked pymongo sdist (default /tmp/pym/pymongo-4.10.1, i.e.
# `pip download --no-deps --no-binary :all: pymongo==4.10.1` then `tar xzf`). It needs
# pytest and pytest-asyncio (`pip install pytest pytest-asyncio dnspython`). The summary
# and the junit report land in target/pymongo/. See docs/pymongo.md for what fails, and why.
set -euo pipefail

repo="$(cd "$(dirname "$0")/../../.." && pwd)"
src="${1:-/tmp/pym/pymongo-4.10.1}"
shift || true
out="$repo/target/pymongo"
mkdir -p "$out"

(cd "$repo" && cargo build --quiet --bin ferry)
"$repo/target/debug/ferry" sandbox --port 0 >"$out/sandbox.log" 2>&1 &
sandbox_pid=$!
trap 'kill "$sandbox_pid" 2>/dev/null || true' EXIT

uri=""
for _ in $(seq 1 100); do
    uri="$(sed -n 's/^ready //p' "$out/sandbox.log" | head -n1)"
    [ -n "$uri" ] && break
    sleep 0.1
done
if [ -z "$uri" ]; then
    echo "the sandbox did not print 'ready <uri>'; see $out/sandbox.log" >&2
    exit 1
fi
hostport="${uri#mongodb://}"
hostport="${hostport%%/*}"
export DB_IP="${hostport%:*}"
export DB_PORT="${hostport##*:}"

cd "$src"
python3 -m pytest -p no:cacheprovider -p no:asyncio -W ignore::pytest.PytestConfigWarning -o addopts="" -m "default" -q -rfE \
    --junitxml="$out/junit.xml" \
    test/test_collection.py test/test_cursor.py test/test_bulk.py \
    test/test_database.py test/test_change_stream.py "$@" | tee "$out/summary.txt"
