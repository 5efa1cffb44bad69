"""The job spec: generated schema is current, overrides win over YAML, every flag has help."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.job.load import FLAG_PATHS, load_job
from batchgen.job.schema import SCHEMA_PATH, job_schema_text
from tests.conftest import ROOT


def test_schema_file_is_current():
    assert SCHEMA_PATH.read_text() == job_schema_text(), "schemas/job.schema.json is stale: run `python -m batchgen.job.schema`"


def test_precedence_flags_over_set_over_yaml_over_defaults():
    spec = load_job(ROOT / "jobs" / "label.yaml", {"max_tokens": 9, "temperature": 0.5}, ["runtime.window=33", "sampling.top_p=0.9"])
    assert spec.sampling.max_tokens == 9          # flag over YAML (4)
    assert spec.sampling.temperature == 0.5       # flag over YAML (0)
    assert spec.sampling.top_p == 0.9             # --set over default
    assert spec.runtime.window == 33
    assert spec.model.max_model_len == 4096       # YAML over default
    assert spec.model.enable_prefix_caching and spec.model.enable_chunked_prefill  # on by default


def test_bare_on_off_words_in_yaml(tmp_path):
    """YAML 1.1 reads on/off as booleans; the choices spelled with those words take them as written."""
    job = tmp_path / "job.yaml"
    job.write_text((ROOT / "jobs" / "label.yaml").read_text() + "\nruntime: {mps: on, cpu_affinity: off, progress: off}\n")
    runtime = load_job(job).runtime
    assert (runtime.mps, runtime.cpu_affinity, runtime.progress) == ("on", "off", "off")
    assert load_job(job, sets=["runtime.mps=off"]).runtime.mps == "off"
    with pytest.raises(Exception, match="runtime.cpu_affinity: Input should be 'auto' or 'off' .got 'on'."):
        load_job(job, sets=["runtime.cpu_affinity=on"])


def test_a_union_of_choices_is_one_line_naming_each(tmp_path):
    """`int | 'auto'` fails branch by branch in pydantic: the user reads one line per key, no branch names."""
    with pytest.raises(Exception) as e:
        load_job(ROOT / "jobs" / "label.yaml", sets=["runtime.window=abc"])
    text = str(e.value)
    assert "runtime.window: Input should be a valid integer, unable to parse string as an integer, or 'auto' (got 'abc')" in text
    assert "constrained-int" not in text and "literal[" not in text and text.count("runtime.window") == 1


@pytest.mark.parametrize("job", ["jobs/label.yaml", "jobs/synth.yaml", "examples/quickstart.yaml"])
def test_shipped_jobs_are_valid(job):
    load_job(ROOT / job)


def test_run_help_is_complete():
    res = CliRunner().invoke(app, ["run", "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", res.output)
    for flag in FLAG_PATHS:
        assert "--" + flag.replace("_", "-") in text, flag
    for flag in ("--set", "--force", "--rank", "--world-size"):
        assert flag in text
    assert "75" in text and "rerun" in text  # the exit codes are documented


def test_every_command_has_help():
    res = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    commands = re.findall(r"│ (\w+)\s+\S", re.sub(r"\x1b\[[0-9;]*m", "", res.output))
    assert "run" in commands
    for cmd in commands:
        sub = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert sub.exit_code == 0 and len(sub.output) > 200, cmd
