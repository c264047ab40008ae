#!/usr/bin/env bash
# Prints the ram_block benchmark as a table with ratios to vm-memory, from criterion's
# last run (target/criterion). Run `cargo bench -p ram-block --bench ram_block` first.
set -euo pipefail
dir="${CARGO_TARGET_DIR:-$(dirname "$0")/../../target}/criterion"

# The time per iteration criterion reports (the slope estimate, else the mean), in ns.
estimate() {
  local f="$dir/$1/new/estimates.json"
  [ -f "$f" ] || { echo "-"; return; }
  sed -nE 's/.*"slope":\{"confidence_interval":\{[^}]*\},"point_estimate":([0-9.eE+-]+).*/\1/p' "$f" | grep . ||
    sed -nE 's/.*"mean":\{"confidence_interval":\{[^}]*\},"point_estimate":([0-9.eE+-]+).*/\1/p' "$f"
}

echo "| group | blocks | ram-block read() | ram-block memory() | vm-memory memory() | read() / vm-memory | memory() / vm-memory |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for group in "lookup MRU hit:find:find_region" "lookup MRU miss:find:find_region" "translate MRU hit:translate:get_slice"; do
  IFS=: read -r name ours theirs <<<"$group"
  for n in 1 8 64; do
    a=$(estimate "$name/ram-block read()+$ours/$n")
    b=$(estimate "$name/ram-block memory()+$theirs/$n")
    v=$(estimate "$name/vm-memory memory()+$theirs/$n")
    awk -v g="$name" -v n="$n" -v a="$a" -v b="$b" -v v="$v" 'BEGIN {
      printf "| %s | %d | %.2f ns | %.2f ns | %.2f ns | %.2f | %.2f |\n", g, n, a, b, v, a / v, b / v }'
  done
done
