"""The outputs of the commands the README, docs/ and --help texts show are ignored by git, and the sources
are not: `git check-ignore` on paths collected from those commands."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
# --state/--out name folders, --json a file; `trainnet report X.json` writes X-report/ next to it.
OPTION = re.compile(r"--(state|out|json)[ =]([^\s`'\")\]]+)")
REPORT_OF_JSON = re.compile(r"trainnet report ([^\s`'\")\]]+)\.json")


def _git_root() -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    res = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if res.returncode != 0 or Path(res.stdout.strip()).resolve() != ROOT.resolve():
        pytest.skip("not a git checkout of the project")
    return ROOT


def _ignored(paths: list[str]) -> set[str]:
    # --no-index: judge the patterns alone, whether or not a path happens to be tracked or exist
    res = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", *paths], capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr
    return set(res.stdout.split())


def command_outputs() -> set[str]:
    """Relative output paths of the `trainnet ...` command lines in README.md, docs/*.md and src/ (the
    --help texts), plus the demo's default --out; folders end with '/'."""
    from trainnet.worker.demo import demo_cmd

    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "src").rglob("*.py"))]
    out = {next(p.default for p in demo_cmd.params if p.name == "out_dir") + "/"}
    for f in files:
        for line in f.read_text().splitlines():
            if "trainnet " not in line:
                continue
            for m in OPTION.finditer(line):
                out.add(m.group(2).rstrip("/") + ("" if m.group(1) == "json" else "/"))
            out |= {m.group(1) + "-report/" for m in REPORT_OF_JSON.finditer(line)}
    tracked_dirs = {p.name for p in ROOT.iterdir() if p.is_dir()}
    keep = set()
    for p in out:
        p = p.removeprefix("./")
        if p in ("-", "-/") or p.startswith(("/", "~")) or re.fullmatch(r"[A-Z_]+(/.*)?", p) or "{" in p:
            continue  # stdout, paths outside the checkout, placeholders
        if p.split("/")[0] in tracked_dirs and "/" in p.rstrip("/"):
            continue  # inside the project's own folders (e.g. bench/results/*.md are committed on purpose)
        keep.add(p)
    return keep


def test_command_outputs_are_ignored() -> None:
    _git_root()
    outputs = command_outputs()
    # the list must be among what the commands create (the collection itself works)
    assert {"trainnet-demo/", "state/", "worker0/", "run.json"} <= outputs, outputs
    wanted = sorted(outputs | {"worker1/", "worker2/", "run-report/", "plan.json"})
    assert set(wanted) - _ignored(wanted) == set()


def test_sources_are_not_ignored() -> None:
    _git_root()
    sources = ["src/trainnet/worker/node.py", "src/trainnet/worker/", "src/trainnet/store/state.py", "README.md",
               "bench/standard.toml", "bench/results/load.md", "tests/worker/", "docs/PROTOCOL.md", "pyproject.toml"]
    assert _ignored(sources) == set()
