"""Mutation testing of the modules that hold agci's math (``make mutation``; not part of ``make test``).

Each module is mutated by mutmut in its own copy of the working tree, and each mutant is run against that
module's test files only (mutmut runs just the tests that reach the mutated function). Writes
``mutation/report.json`` and ``mutation/report.md``: killed / survived / timeout / no test per module, and
the surviving mutants by name (``mutmut show NAME`` in the module's copy prints the change). A run with
``--only`` replaces those modules' rows and keeps the others'.

Survivors judged equivalent (no test can tell them from the original) are listed with a reason in
``mutation/equivalent/<module>.json`` (``{"mutant name": "why"}``); the report's goal column counts
killed among the non-equivalent ones. Non-equivalent survivors left alive on purpose are listed with the
reason in ``mutation/left/<module>.json`` and still count against the goal.

    python mutation/run.py [--minutes 10] [--only agci/bias/metrics.py ...]
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = {  # module -> the pytest arguments that select its tests
    "agci/kernels/reference.py": ["tests/test_op_reference.py"],
    # the patch core, split by idea: each module against the patch tests
    **{
        m: ["tests/test_patches.py", "tests/test_patches_units.py"]
        for m in (
            "agci/grouping.py",
            "agci/patches/hooks.py",
            "agci/patches/lifecycle.py",
            "agci/patches/discovery.py",
            "agci/patches/handles.py",
        )
    },
    "agci/bias/metrics.py": ["tests/test_bias_sets.py"],
    "agci/bias/model_runs.py": [
        "tests/test_scoring_units.py",
        "tests/test_bias_probe.py",
        "-k",
        "not cli and not distributed and not every_family",
    ],  # fmt: skip
    "agci/resampler_probes/report.py": ["tests/test_resampler_report.py"],
    "agci/resampler_probes/boxes.py": ["tests/test_resampler_report.py"],
    "agci/ris/spatial.py": ["tests/test_ris_spatial.py"],
    "agci/eval/scoring.py": ["tests/test_eval_scoring.py"],
}
EQUIVALENT = ROOT / "mutation" / "equivalent"
LEFT = ROOT / "mutation" / "left"  # survivors that are not equivalent but left alive on purpose, with why
STATUSES = ("killed", "survived", "timeout", "no tests", "suspicious", "skipped", "not checked")


def _config(module: str, tests: list[str]) -> str:
    def toml_list(items):
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["agci"]\n'
        f"only_mutate = {toml_list([module])}\n"
        f"pytest_add_cli_args = {toml_list(['-p', 'no:cacheprovider', '-q', '-x'])}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        'also_copy = ["tests", "agci"]\n'
    )


def run_module(module: str, tests: list[str], work: Path, minutes: float, children: int) -> dict:
    copy = work / module.replace("/", "_").removesuffix(".py")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv*", ".git", "mutants", "mutation", "__pycache__",
                                                              "agci-*", "*.egg-info", ".mutation-work"))  # fmt: skip
    with (copy / "pyproject.toml").open("a") as f:
        f.write(_config(module, tests))
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    started = time.time()
    try:
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children)], cwd=copy,
                       env=env, timeout=minutes * 60, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        finished = True
    except subprocess.TimeoutExpired:
        finished = False
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=copy, env=env,
                             capture_output=True, text=True).stdout  # fmt: skip
    prefix = module.removesuffix(".py").replace("/", ".") + "."
    by_status: dict[str, list[str]] = collections.defaultdict(list)
    for line in listing.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name.startswith(prefix):
            by_status[status].append(name)
    counts = {s: len(by_status.get(s, [])) for s in STATUSES if by_status.get(s)}
    tested = counts.get("killed", 0) + counts.get("survived", 0) + counts.get("timeout", 0)
    return {
        "module": module, "tests": tests, "finished": finished, "minutes": round((time.time() - started) / 60, 1),
        "counts": counts, "killed_share": round((counts.get("killed", 0) + counts.get("timeout", 0)) / tested, 3)
        if tested else None, "survived": sorted(by_status.get("survived", [])), "copy": str(copy),
    }  # fmt: skip


def equivalents(module: str, folder: Path = EQUIVALENT) -> dict[str, str]:
    path = folder / (module.removesuffix(".py").replace("/", "_") + ".json")
    return json.loads(path.read_text()) if path.exists() else {}


def with_equivalents(result: dict) -> dict:
    """Split the survivors into equivalent (listed with a reason) and not; the share that the goal is about."""
    known = equivalents(result["module"])
    short = {n: n.rpartition(".")[2] for n in result["survived"]}
    result["equivalent"] = {s: known[s] for s in short.values() if s in known}
    result["survived_not_equivalent"] = sorted(n for n, s in short.items() if s not in known)
    c = result["counts"]
    killed = c.get("killed", 0) + c.get("timeout", 0)
    live = killed + len(result["survived_not_equivalent"])
    result["killed_share_non_equivalent"] = round(killed / live, 3) if live else None
    return result


def markdown(results: list[dict], versions: dict) -> str:
    lines = ["# Mutation testing (mutmut)", "",
             f"mutmut {versions['mutmut']}, Python {versions['python']}, {versions['cpus']} CPUs; "
             f"run {versions['date']} with `make mutation`.", "",
             "| module | tests | killed | survived | of them equivalent | timeout | no tests | not checked | "
             "killed share | of non-equivalent | finished |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        c = r["counts"]
        r = with_equivalents(r)
        share = "n/a" if r["killed_share"] is None else f"{100 * r['killed_share']:.0f}%"
        goal = "n/a" if r["killed_share_non_equivalent"] is None else f"{100 * r['killed_share_non_equivalent']:.0f}%"
        lines.append(f"| `{r['module']}` | `{' '.join(r['tests'])}` | {c.get('killed', 0)} | {c.get('survived', 0)} | "
                     f"{len(r['equivalent'])} | {c.get('timeout', 0)} | {c.get('no tests', 0)} | "
                     f"{c.get('not checked', 0)} | {share} | {goal} | "
                     f"{'yes' if r['finished'] else 'no, stopped'} ({r['minutes']} min) |")  # fmt: skip
    lines += ["", "Killed share = (killed + timeout) / (killed + survived + timeout); of non-equivalent: the same "
              "without the survivors listed as equivalent in `mutation/equivalent/` (the goal is 90%). Not checked: "
              "left when the module's time limit ran out.", "",
              "Survivors not (yet) judged equivalent:", ""]  # fmt: skip
    for r in results:
        if r["survived_not_equivalent"]:
            why = equivalents(r["module"], LEFT)
            names = (n.rpartition(".")[2] for n in r["survived_not_equivalent"])
            lines.append(f"- `{r['module']}`: " + ", ".join(f"`{n}`" + (f" ({why[n]})" if n in why else "")
                                                          for n in names))  # fmt: skip
    lines += ["", "Equivalent survivors, with the reason:", ""]
    for r in results:
        for name, why in sorted(r["equivalent"].items()):
            lines.append(f"- `{r['module']}` `{name}`: {why}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="time limit per module")
    parser.add_argument("--only", nargs="*", help="modules to run (default: all)")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2, help="mutants run at once")
    parser.add_argument("--work", default=str(ROOT / ".mutation-work"), help="where the copies go")
    args = parser.parse_args()
    import importlib.metadata as md
    import platform

    modules = {m: t for m, t in MODULES.items() if not args.only or m in args.only}
    work = Path(args.work)
    work.mkdir(exist_ok=True)
    versions = {"mutmut": md.version("mutmut"), "python": platform.python_version(), "cpus": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    results = []
    for module, tests in modules.items():
        print(f"mutating {module} against {' '.join(tests)} ...", flush=True)
        results.append(run_module(module, tests, work, args.minutes, args.children))
        print(f"  {results[-1]['counts']} in {results[-1]['minutes']} min", flush=True)
    out = ROOT / "mutation"
    with (work / ".report-lock").open("w") as lock:  # runs of other modules may finish at the same time
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_report(out, results, versions)
    print(f"wrote {out / 'report.md'}")
    return 0


def write_report(out: Path, results: list[dict], versions: dict) -> None:
    previous = json.loads((out / "report.json").read_text())["modules"] if (out / "report.json").exists() else []
    ran = {r["module"] for r in results}
    results = [r for r in previous if r["module"] not in ran and r["module"] in MODULES] + results
    results.sort(key=lambda r: list(MODULES).index(r["module"]))
    results = [with_equivalents(r) for r in results]
    (out / "report.json").write_text(json.dumps({"versions": versions, "modules": results}, indent=1) + "\n")
    (out / "report.md").write_text(markdown(results, versions))


if __name__ == "__main__":
    sys.exit(main())
