"""The deployment examples: cron wrapper run for real, manifests checked for what batchgen relies on.

(examples/slurm runs on a real SLURM cluster in test_slurm.py; Docker cannot run here.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import yaml

from batchgen.job.spec import RuntimeSpec
from tests.conftest import ROOT, job_dict, write_job, write_shards

EXAMPLES = ROOT / "examples"


def test_cron_wrapper_runs_one_at_a_time_and_resumes(tiny_model, tmp_path):
    wrapper = EXAMPLES / "cron" / "batchgen-cron.sh"
    slow = tmp_path / "slow-batchgen"
    slow.write_text("#!/bin/sh\nsleep 3\nexit 75\n")
    slow.chmod(0o755)
    env = {**os.environ, "BATCHGEN_CMD": str(slow), "BATCHGEN_LOCK": str(tmp_path / "lock")}
    first = subprocess.Popen(["bash", str(wrapper), "job.yaml"], env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    second = subprocess.run(["bash", str(wrapper), "job.yaml"], env=env, capture_output=True, text=True, timeout=30)
    assert second.returncode == 0 and "still going; skipping" in second.stdout
    out, _ = first.communicate(timeout=30)
    assert first.returncode == 75 and "interrupted after committing; the next tick resumes" in out

    # A real tick: batchgen runs the job to the end.
    write_shards(tmp_path / "in", shards=1, rows=12)
    job = write_job(tmp_path / "job.yaml", job_dict(tiny_model, tmp_path / "in", tmp_path / "out", runtime={"engine": "instant"}))
    env["BATCHGEN_CMD"] = f"{sys.executable} -m batchgen"
    tick = subprocess.run(["bash", str(wrapper), str(job)], env=env, capture_output=True, text=True, timeout=300)
    assert tick.returncode == 0, tick.stderr[-2000:]
    assert "done (see _SUCCESS.json" in tick.stdout and (tmp_path / "out" / "_SUCCESS.json").exists()


def test_slurm_script_requeues_itself():
    script = (EXAMPLES / "slurm" / "batchgen-array.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(EXAMPLES / "slurm" / "batchgen-array.sbatch")]).returncode == 0
    for directive in ("--requeue", "--open-mode=append", "--signal=B:TERM@", "--array="):
        assert f"#SBATCH {directive}" in script
    assert 'scontrol requeue "$SELF"' in script


def test_k8s_indexed_job_matches_what_batchgen_reads():
    job = yaml.safe_load((EXAMPLES / "k8s" / "indexed-job.yaml").read_text())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["BATCHGEN_WORLD_SIZE"]) == spec["completions"]  # plan.rank_from_environment needs it
    assert container["args"][0] == "run"
    # Room for the grace period (in-flight rows) and the final commit after SIGTERM.
    assert pod["terminationGracePeriodSeconds"] > RuntimeSpec().grace_seconds + 30
    assert pod["restartPolicy"] == "Never" and spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]


def test_dockerfile_builds_on_the_vllm_image():
    lines = [line.strip() for line in (EXAMPLES / "docker" / "Dockerfile").read_text().splitlines()]
    assert any(line.startswith("FROM vllm/vllm-openai:") for line in lines)
    assert 'ENTRYPOINT ["batchgen"]' in lines
    ignored = (EXAMPLES / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and ".cache" in ignored
