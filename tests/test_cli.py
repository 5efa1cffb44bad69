"""The command line itself: `--version`, one set of engine/sampling flags for run and validate, a quiet run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import typer
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.job.load import FLAG_PATHS
from batchgen.node.gpus import nvml_gpus
from tests.conftest import ROOT, job_dict, write_job, write_shards

# A log line of vLLM's own format, from this process or an engine process: "(EngineCore pid=12) INFO 12-02 ..."
VLLM_LINE = re.compile(r"^(\([\w-]+ pid=\d+\) )?(DEBUG|INFO|WARNING|ERROR) \d\d-\d\d \d\d:\d\d:\d\d ")
# One of vLLM's loggers through ours, before its engine configures its own: "[vllm.x.y] INFO ..."
VLLM_VIA_OURS = re.compile(r"^\[vllm[\w.]*\] (DEBUG|INFO|WARNING|ERROR) ")


def option_names(command: str) -> set[str]:
    params = typer.main.get_command(app).commands[command].params
    return {opt for p in params for opt in p.opts}


def test_version_names_each_part_without_importing_the_engine():
    probe = ("import sys, time; t = time.monotonic(); from batchgen.node.versions import version_lines; "
             "print('\\n'.join(version_lines())); print(time.monotonic() - t); "
             "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout.splitlines()
    assert out[0].startswith("batchgen 0.") and out[1].startswith("vllm 0.") and out[2].startswith("torch 2.")
    # The GPUs' names from NVML; "cpu" where there is no NVIDIA driver (as on CI).
    assert out[3] == "device cpu" if nvml_gpus() is None else "NVIDIA" in out[3]
    assert float(out[4]) < 1.0 and out[5] == "[]", "versions from package metadata: nothing heavy imported"

    t0 = time.monotonic()
    shown = subprocess.run([sys.executable, "-m", "batchgen", "--version"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert shown.stdout.splitlines() == out[:4] and time.monotonic() - t0 < 10


def test_run_and_validate_take_the_same_engine_flags():
    flags = {f"--{name.replace('_', '-')}" for name in FLAG_PATHS}
    assert flags <= option_names("run") and flags <= option_names("validate")
    engine_options = {o for o in option_names("run") & option_names("validate") if o.startswith("--")}
    assert engine_options - {"--set", "--help", "--json"} == flags
    for command in ("run", "validate"):
        page = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        for section in ("Engine (as vLLM)", "Sampling (as vLLM)"):
            assert section in page
        assert all(re.search(rf"{re.escape(flag)}\b", page) for flag in flags), f"{command} --help lists every flag"


def test_validate_applies_every_flag(tiny_model, tmp_path, monkeypatch):
    """Each flag lands where FLAG_PATHS says (validate_job replaced to see the spec it is given)."""
    write_shards(tmp_path / "in", shards=1, rows=4)
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "out"))
    values = {"model": str(tiny_model), "max_model_len": 300, "gpu_memory_utilization": 0.5, "tensor_parallel_size": 2,
              "dtype": "float32", "quantization": "fp8", "trust_remote_code": True, "max_num_seqs": 7,
              "max_num_batched_tokens": 640, "temperature": 0.5, "top_p": 0.9, "top_k": 5, "max_tokens": 3,
              "presence_penalty": 0.25, "frequency_penalty": -0.5, "seed": 11}
    assert set(values) == set(FLAG_PATHS)
    args = [a for name, v in values.items() for a in
            ([f"--{name.replace('_', '-')}"] if v is True else [f"--{name.replace('_', '-')}", str(v)])]
    seen = []

    class Result:
        exit_code = 0

        def as_dict(self):
            return {}

    monkeypatch.setattr("batchgen.ops.validate.validate_job", lambda spec, **_: seen.append(spec) or Result())
    monkeypatch.setattr("batchgen.ops.validate.render_text", lambda _r: ["checked"])
    result = CliRunner().invoke(app, ["validate", str(job), *args])
    assert result.exit_code == 0, result.output
    spec = seen[0].model_dump()
    for name, path in FLAG_PATHS.items():
        section, key = path.split(".")
        assert spec[section][key] == values[name], name


def _run(job, *args: str, env: dict[str, str]) -> tuple[list[str], list[str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LOGGING")}
    p = subprocess.run([sys.executable, "-m", "batchgen", "run", str(job), *args], capture_output=True, text=True,
                       timeout=300, env={**base, **env}, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.splitlines(), p.stderr.splitlines()


@pytest.mark.engine
def test_a_run_is_quiet_unless_verbose(tiny_model, tmp_path):
    """A real run, stderr not a terminal: vLLM says only warnings, on stderr; `-v` brings its INFO lines back.
    Neither has the 'raw prompts' deprecation warning (the engine gets vLLM's token-input type)."""
    write_shards(tmp_path / "in", shards=1, rows=6)
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "out"))
    # The default engine layout (engine core and worker in their own processes): they must be quiet too.
    out, err = _run(job, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    vllm_info = [line for line in out + err if (m := VLLM_LINE.match(line) or VLLM_VIA_OURS.match(line)) and "INFO" in m[0]]
    assert vllm_info == []
    assert not any("Passing raw prompts" in line for line in out + err)
    assert out[0].startswith("batchgen summary [test / ") and all(line.startswith("  ") for line in out[1:]), \
        "stdout holds the summary only: vLLM logs to stderr"
    assert sum(bool(VLLM_LINE.match(line)) for line in err) < 25, "warnings only"
    # The host's CPU while generating: this process, and vLLM's engine core in its own process.
    assert any(line.startswith("  host CPU  ") and "busiest thread" in line for line in out), out
    (saved,) = (tmp_path / "out" / "_batchgen").glob("summary-*.json")
    procs = {p["process"]: p for p in json.loads(saved.read_text())["host_cpu"]}
    assert "batchgen" in procs and any("EngineCore" in name for name in procs), procs

    out, err = _run(job, "-v", "--set", f"output.path={tmp_path / 'out-v'}", env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    info = [line for line in err if (m := VLLM_LINE.match(line)) and "INFO" in m[0]]
    assert len(info) >= 10, "-v: vLLM's INFO lines are back"
    assert not any("Passing raw prompts" in line for line in out + err)
    assert any(line.startswith("[batchgen] DEBUG ") for line in err)


@pytest.mark.parametrize("argv, quick, code", [(["status", "{job}", "--json"], True, 0),
                                               (["status", "{missing}"], True, 2), (["--version"], False, 0)])
def test_read_only_commands_end_without_the_interpreters_teardown(tmp_path, argv, quick, code):
    """status, plan, validate and report end with os._exit once answered (pyarrow's thread pools can abort a
    finished process in the interpreter's teardown): the answer is whole, the exit code kept, and teardown
    (here an atexit hook) skipped; other commands end normally."""
    import shutil

    job_dir = tmp_path / "job"
    shutil.copytree(ROOT / "tests" / "fixtures" / "install", job_dir)
    mark = tmp_path / "teardown-ran"
    args = [a.format(job=job_dir / "job.yaml", missing=tmp_path / "nope.yaml") for a in argv]
    script = (f"import atexit, sys; atexit.register(lambda: open({str(mark)!r}, 'w').close()); "
              f"sys.argv = ['batchgen', *{args!r}]; from batchgen.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert mark.exists() != quick
    if argv[0] == "status" and code == 0:
        assert json.loads(proc.stdout)["units_done"] >= 1  # the whole JSON answer reached the pipe
    if code == 2:
        assert "nope.yaml" in proc.stdout + proc.stderr
