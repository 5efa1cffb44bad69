"""runtime.mps: when batchgen starts a private MPS control daemon, how engines find it, how it ends.

No GPU here, so a stand-in `nvidia-cuda-mps-control` (a script of the same command line: `-f` runs the
daemon and makes its control pipe; commands on stdin: get_server_list, quit) isolates the lifecycle
logic. On a GPU, the node records `engine_options.mps` from the real daemon's server list (benchmarks).
"""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from batchgen.errors import SpecError
from batchgen.node import mps as mps_mod
from batchgen.node.mps import PIPE_ENV, start_mps

FAKE = textwrap.dedent("""\
    #!{python}
    import os, sys, time
    pipe = os.environ["CUDA_MPS_PIPE_DIRECTORY"]
    if sys.argv[1:] == ["-f"]:
        if os.environ.get("FAKE_MPS_FAIL"):
            sys.exit(3)
        open(os.path.join(pipe, "control"), "w").close()
        while not os.path.exists(os.path.join(pipe, "quit")):
            time.sleep(0.05)
        sys.exit(0)
    for line in sys.stdin:
        if line.strip() == "get_server_list" and os.path.exists(os.path.join(pipe, "client")):
            print(4242)
        if line.strip() == "quit":
            open(os.path.join(pipe, "quit"), "w").close()
    """)


@pytest.fixture()
def fake_control(tmp_path: Path) -> str:
    path = tmp_path / "bin" / "nvidia-cuda-mps-control"
    path.parent.mkdir()
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_daemon_lifecycle(fake_control: str) -> None:
    daemon = start_mps("auto", 2, True, dict(os.environ), which=lambda _: fake_control)
    assert daemon is not None and daemon.proc.poll() is None
    env = daemon.client_env({"CUDA_VISIBLE_DEVICES": "0"})
    assert env[PIPE_ENV] == str(daemon.pipe_dir) and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert daemon.servers() == []  # no client yet: the node records mps: false
    (daemon.pipe_dir / "client").touch()
    assert daemon.servers() == ["4242"]
    daemon.stop()
    assert daemon.proc.returncode == 0 and not daemon.folder.exists()


@pytest.mark.parametrize("mode,k,on_gpus", [("off", 2, True), ("auto", 1, True), ("on", 1, True), ("auto", 2, False)])
def test_not_started_when_not_needed(fake_control: str, mode: str, k: int, on_gpus: bool) -> None:
    assert start_mps(mode, k, on_gpus, {}, which=lambda _: fake_control) is None


def test_users_own_daemon_is_used(fake_control: str, tmp_path: Path) -> None:
    assert start_mps("on", 2, True, {PIPE_ENV: str(tmp_path)}, which=lambda _: fake_control) is None


def test_missing_control_program() -> None:
    assert start_mps("auto", 2, True, {}, which=lambda _: None) is None
    with pytest.raises(SpecError) as e:
        start_mps("on", 2, True, {}, which=lambda _: None)
    assert "nvidia-cuda-mps-control is not on PATH" in str(e.value) and e.value.where == "runtime.mps"


def test_daemon_that_fails(fake_control: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    env = {**os.environ, "FAKE_MPS_FAIL": "1"}
    assert start_mps("auto", 2, True, env, which=lambda _: fake_control) is None
    with pytest.raises(SpecError, match=r"did not start \(exit 3\)") as e:
        start_mps("on", 2, True, env, which=lambda _: fake_control)
    assert "runtime.mps: auto or off" in (e.value.fix or "")
    assert list(tmp_path.glob("batchgen-mps-*")) == []  # what a failed start made is removed


def test_engines_sharing_a_gpu_get_the_daemons_pipe(fake_control: str, tiny_model, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor hands every engine the daemon's pipe folder beside its GPU (Popen recorded, then a no-op
    child runs in place of the engine)."""
    import subprocess
    from types import SimpleNamespace

    from batchgen.job.load import validate
    from batchgen.node import supervisor as sup_mod
    from tests.conftest import job_dict

    spec = validate(job_dict(tiny_model, tmp_path / "in", tmp_path / "out", runtime={"cpu_affinity": "off"}))
    run = sup_mod.NodeRun(job=tmp_path / "job.yaml", flags={}, sets=[], rank=0, world_size=1, worker="node", env={"PATH": "/bin"})
    layout = sup_mod.EngineLayout(num_engines=2, gpus_per_engine=1, groups=(("0",), ("0",)), engines_per_gpu=2)
    prep = SimpleNamespace(store=SimpleNamespace(delete=lambda _rel: None))
    daemon = start_mps("auto", 2, True, dict(os.environ), which=lambda _: fake_control)
    envs: list[dict] = []
    real = subprocess.Popen

    def record(cmd, *args, env=None, **kw):
        if "batchgen" not in cmd:  # the daemon's own commands go through Popen too
            return real(cmd, *args, env=env, **kw)
        envs.append(env)
        return real([sys.executable, "-c", "pass"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    monkeypatch.setattr(sup_mod.subprocess, "Popen", record)
    sup = sup_mod.Supervisor(spec, run, layout, prep, daemon)
    try:
        sup.start()
        for p in sup.procs:
            p.wait()
    finally:
        daemon.stop()
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "0"]
    assert {e[PIPE_ENV] for e in envs} == {str(daemon.pipe_dir)}
