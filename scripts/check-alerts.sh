#!/usr/bin/env bash
# Checks the packaged Prometheus alerting rules: `promtool check rules` (syntax, PromQL,
# templates), `promtool test rules` (the unit tests: each alert fires where it must and not
# where it must not), and that every alert has a test, a `for`, a severity and an entry in
# docs/operations.md "Alerts". promtool comes with Debian's `prometheus` package
# (scripts/test.sh installs it when missing); without it this fails rather than skips.
set -euo pipefail
cd "$(dirname "$0")/.."
rules=packaging/prometheus/corepost-rules.yml
tests=packaging/prometheus/corepost-rules.test.yml
fail() { echo "check-alerts: $*" >&2; exit 1; }

command -v promtool >/dev/null 2>&1 || fail "promtool not found (apt-get install prometheus)"
promtool check rules "$rules"
promtool test rules "$tests"

# promtool checks what each test says, not that every alert has one.
alerts=$(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\) *$/\1/p' "$rules")
[[ -n $alerts ]] || fail "no alerts found in $rules"
n_alerts=$(wc -l <<<"$alerts")
n_for=$(grep -cE '^ +for: *[0-9]+[smhd]$' "$rules")
n_severity=$(grep -cE '^ +severity: *(critical|warning)$' "$rules")
((n_for == n_alerts)) || fail "$n_alerts alerts but $n_for 'for:' lines in $rules"
((n_severity == n_alerts)) || fail "$n_alerts alerts but $n_severity severity labels in $rules"
for a in $alerts; do
    fires=$(grep -A2 -E "^ +alertname: $a\$" "$tests" | grep -cE '^ +exp_alerts:$' || true)
    quiet=$(grep -A2 -E "^ +alertname: $a\$" "$tests" | grep -cE '^ +exp_alerts: \[\]$' || true)
    ((fires > 0)) || fail "$a: no test case in $tests where it fires"
    ((quiet > 0)) || fail "$a: no test case in $tests where it must not fire"
    grep -q "\*\*$a\*\*" docs/operations.md || fail "$a is not described in docs/operations.md (Alerts)"
done
echo "check-alerts: $n_alerts alerts checked and tested ($(paste -sd ' ' <<<"$alerts"))"
