#!/usr/bin/env bash
# Prints a markdown row per fuzz log in target/fuzz/logs (scripts/fuzz-all writes them):
# target | executions | wall s | exec/s | cov | ft | corpus | crashes.
cd "$(dirname "$0")/../.."
for log in target/fuzz/logs/*.log; do
  t=$(basename "$log" .log)
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  rate=$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  wall=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | grep -Eo 'in [0-9]+' | grep -Eo '[0-9]+' | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1)
  crash=$(grep -c 'ERROR: libFuzzer' "$log")
  echo "| $t | ${execs:-?} | ${wall:-?} | ${rate:-?} | ${cov:-?} | $crash |"
done
