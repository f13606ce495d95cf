"""Kill rate per module of the last ``make mutate`` run (mutmut 3), from ``mutmut results --all true``.

Prints, per mutated module: mutants checked, killed (a test failed, or the mutant timed out —
an infinite loop is caught too), survived, and the kill rate; then the survivors by name, to
be read with ``mutmut show NAME`` and either killed by a new test or explained as equivalent
in the README.

Run: ``python benchmarks/mutation_report.py`` from the repository root after ``make mutate``.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from pathlib import Path

#: mutmut's statuses, as they count here
KILLED = {"killed", "timeout"}
SURVIVED = {"survived", "suspicious"}


def results() -> list[tuple[str, str, str]]:
    """``(module, mutant name, status)`` for every mutant of the last run."""
    mutmut = Path(sys.executable).with_name("mutmut")
    out = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=True)
    rows = []
    for line in out.stdout.splitlines():
        m = re.match(r"\s*(\S+__mutmut_\d+):\s*(.+?)\s*$", line)
        if m:
            name, status = m.groups()
            module = re.sub(r"\.x[_ǁ].*$", "", name)
            rows.append((module, name, status))
    return rows


def main() -> int:
    rows = results()
    if not rows:
        print("no mutation results: run `make mutate` first")
        return 1
    by_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for module, _, status in rows:
        by_module[module][status] += 1
    print(f"{'module':<44} {'checked':>7} {'killed':>7} {'survived':>8} {'no tests':>8} {'kill rate':>9}")
    total = collections.Counter()
    for module in sorted(by_module):
        c = by_module[module]
        total.update(c)
        killed, survived = sum(c[s] for s in KILLED), sum(c[s] for s in SURVIVED)
        checked = killed + survived
        rate = f"{killed / checked:.1%}" if checked else "—"
        print(f"{module:<44} {checked:>7} {killed:>7} {survived:>8} {c['no tests']:>8} {rate:>9}")
    killed, survived = sum(total[s] for s in KILLED), sum(total[s] for s in SURVIVED)
    print(f"{'all':<44} {killed + survived:>7} {killed:>7} {survived:>8} {total['no tests']:>8} "
          f"{killed / max(killed + survived, 1):>9.1%}")
    other = {s: n for s, n in total.items() if s not in KILLED | SURVIVED | {"no tests"}}
    if other:
        print("not counted:", ", ".join(f"{s} {n}" for s, n in sorted(other.items())))
    print("\nsurvivors (mutmut show NAME):")
    for _, name, status in rows:
        if status in SURVIVED:
            print(f"  {name}  [{status}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
