"""Kill rate per module of the last ``make mutate`` run (mutmut 3), from ``mutmut results --all true``.

Prints, per mutated module: mutants checked, killed (a test failed, or the mutant timed out —
an infinite loop is caught too), survived, the survivors explained as equivalent (no test can
tell them from the original: ``benchmarks/mutation_equivalents/<module>.csv``, one
``mutant,reason`` row each) and the kill rate over the non-equivalent mutants; then the
unexplained survivors by name, to be read with ``mutmut show NAME`` and either killed by a new
test or explained, and the listed equivalents that no longer survive (stale rows: mutant numbers
shift when a function changes).

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


EQUIVALENTS = Path(__file__).resolve().parent / "mutation_equivalents"


def equivalents() -> dict[str, str]:
    """``{mutant name: why it is equivalent}`` from ``mutation_equivalents/*.csv``."""
    import csv

    out = {}
    for path in sorted(EQUIVALENTS.glob("*.csv")):
        with open(path, newline="") as fh:
            out.update({row["mutant"].strip(): row["reason"].strip() for row in csv.DictReader(fh)})
    return out


def main() -> int:
    rows = results()
    explained = equivalents()
    if not rows:
        print("no mutation results: run `make mutate` first")
        return 1
    by_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for module, _, status in rows:
        by_module[module][status] += 1
    equivalent = collections.Counter(module for module, name, status in rows
                                     if status in SURVIVED and name in explained)
    print(f"{'module':<40} {'checked':>7} {'killed':>7} {'survived':>8} {'equiv.':>6} {'no tests':>8} "
          f"{'kill rate*':>10}")
    total = collections.Counter()
    for module in sorted(by_module):
        c = by_module[module]
        total.update(c)
        killed, survived = sum(c[s] for s in KILLED), sum(c[s] for s in SURVIVED)
        checked, eq = killed + survived, equivalent[module]
        rate = f"{killed / (checked - eq):.1%}" if checked > eq else "—"
        print(f"{module:<40} {checked:>7} {killed:>7} {survived:>8} {eq:>6} {c['no tests']:>8} {rate:>10}")
    killed, survived = sum(total[s] for s in KILLED), sum(total[s] for s in SURVIVED)
    eq = sum(equivalent.values())
    print(f"{'all':<40} {killed + survived:>7} {killed:>7} {survived:>8} {eq:>6} {total['no tests']:>8} "
          f"{killed / max(killed + survived - eq, 1):>10.1%}")
    print("* killed / (checked - equivalent)")
    other = {s: n for s, n in total.items() if s not in KILLED | SURVIVED | {"no tests"}}
    if other:
        print("not counted:", ", ".join(f"{s} {n}" for s, n in sorted(other.items())))
    print("\nunexplained survivors (mutmut show NAME):")
    for _, name, status in rows:
        if status in SURVIVED and name not in explained:
            print(f"  {name}  [{status}]")
    status_of = {name: status for _, name, status in rows}
    stale = [n for n in explained if n in status_of and status_of[n] not in SURVIVED]
    if stale:
        print("\nlisted as equivalent but killed now (remove the rows):", *stale, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
