#!/usr/bin/env bash
# Compares two agentd binaries on `agentd bench serve`, alternating them run by run so that a
# noisy machine's drift hits both alike. Prints one line of figures per run; compare the
# medians of each side, and the pairs.
#
#   scripts/bench-ab.sh PAIRS BASE_BINARY NEW_BINARY [bench serve options...]
#   scripts/bench-ab.sh 5 /tmp/agentd-before target/release/agentd --max-running 32
#
# Figures (ms unless noted): node overhead p50/p90/p99, the first wave's median, the p99 after
# it, routing and write-back p50, process CPU (s, user + system), failed runs.
set -euo pipefail

if [ "$#" -lt 3 ]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
pairs=$1
base=$2
new=$3
shift 3
for bin in "$base" "$new"; do
    if [ ! -x "$bin" ]; then
        echo "bench-ab: $bin is not an executable" >&2
        exit 2
    fi
done
command -v python3 >/dev/null || { echo "bench-ab: needs python3" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for i in $(seq 1 "$pairs"); do
    for side in base new; do
        if [ "$side" = base ]; then bin=$base; else bin=$new; fi
        /usr/bin/env time -f "%U %S" -o "$work/time" "$bin" bench serve --json "$@" \
            2>"$work/stderr" >"$work/report.json" || {
            echo "bench-ab: $bin failed:" >&2
            tail -5 "$work/stderr" >&2
            exit 1
        }
        python3 - "$side" "$i" "$work/report.json" "$work/time" <<'PY'
import json, sys
side, i, report, timing = sys.argv[1:5]
d = json.load(open(report))
user, system = map(float, open(timing).read().split()[-2:])
print(
    f"{side:4s} {i:>2s}  p50 {d['overhead_per_node_p50_ms']:5.2f}  p90 {d['overhead_per_node_p90_ms']:5.2f}"
    f"  p99 {d['overhead_per_node_p99_ms']:6.2f}  first {d['first_wave_overhead_p50_ms']:6.2f}"
    f"  after99 {d['after_first_wave_overhead_p99_ms']:6.2f}"
    f"  route50 {d['phase_p50_ms']['routing']:.3f}  wb50 {d['phase_p50_ms']['write_back']:.2f}"
    f"  cpu {user + system:5.2f}  failed {d['failed']}"
)
PY
    done
done
