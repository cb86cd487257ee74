"""Fuzz the three binary readers for a while: the properties of tests/test_fuzz_readers.py, run longer.

    python tests/fuzz_readers.py --minutes 10

Runs Hypothesis rounds (fresh random seed, --examples examples each) of the four properties in turn --
mutated token file, mutated checkpoint, forged checkpoint metadata, mutated tokenizer file -- until the
time budget is spent. Prints, per property: executions, executions per second, how many mutants the
reader accepted or rejected with BadInput, and findings: rounds that failed (any exception other than
BadInput, an oversized allocation, a result inconsistent with the file, or a hang past the deadline),
each with Hypothesis's minimal example.
"""
import argparse
import collections
import time

from hypothesis import given, settings

import test_fuzz_readers as fuzz  # the properties, beside this script (its folder is on sys.path)

PROPERTIES = {  # name -> (reader kind, strategy)
    "token file": ("tokens", fuzz.mutated("tokens")),
    "checkpoint": ("model", fuzz.mutated("model")),
    "checkpoint metadata": ("model", fuzz.forged_metadata()),
    "tokenizer file": ("tokenizer", fuzz.mutated("tokenizer")),
}


def run_round(name: str, examples: int, outcomes: collections.Counter) -> str | None:
    """One Hypothesis run of a property; the failure text when it finds something, else None."""
    kind, strategy = PROPERTIES[name]

    def prop(data):
        outcomes[(name, "executions")] += 1
        outcomes[(name, fuzz.check_reader(kind, data))] += 1

    test = given(strategy)(settings(fuzz.CI_SETTINGS, max_examples=examples, derandomize=False)(prop))
    try:
        test()
    except Exception as e:  # a finding: report it and keep fuzzing
        notes = "\n".join(getattr(e, "__notes__", []))  # Hypothesis's minimal failing example
        return f"{type(e).__name__}: {str(e).strip()[:500]}\n{notes[:2000]}"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="time budget (default: %(default)s)")
    p.add_argument("--examples", type=int, default=500, help="examples per Hypothesis round (default: %(default)s)")
    args = p.parse_args()
    outcomes, findings, seconds = collections.Counter(), [], collections.Counter()
    deadline = time.monotonic() + 60 * args.minutes
    while time.monotonic() < deadline:
        for name in PROPERTIES:
            start = time.monotonic()
            failure = run_round(name, args.examples, outcomes)
            seconds[name] += time.monotonic() - start
            if failure:
                findings.append((name, failure))
                print(f"FINDING in {name}:\n{failure}\n", flush=True)
    print(f"{'property':<22}{'executions':>12}{'exec/s':>9}{'accepted':>10}{'rejected':>10}{'findings':>10}")
    for name in PROPERTIES:
        runs = outcomes[(name, "executions")]
        found = sum(1 for n, _ in findings if n == name)
        print(f"{name:<22}{runs:>12,}{runs / seconds[name]:>9.0f}{outcomes[(name, 'accepted')]:>10,}"
              f"{outcomes[(name, 'rejected')]:>10,}{found:>10}")
    total = sum(outcomes[(n, "executions")] for n in PROPERTIES)
    print(f"total: {total:,} executions in {sum(seconds.values()):.0f} s, {len(findings)} findings")


if __name__ == "__main__":
    main()
