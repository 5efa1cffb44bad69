"""The `batchgen` command. Turns BatchgenError into messages and exit codes; holds no logic."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import socket
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from batchgen.errors import EXIT_INTERRUPTED, BatchgenError
from batchgen.job.load import FLAG_PATHS, load_job
from batchgen.job.spec import JobSpec
from batchgen.work.ranks import rank_from_environment

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Offline batch LLM inference over vLLM: Parquet prompt shards in, checkpointed Parquet out. "
    f"Rerunning the same command resumes an interrupted job: no row lost, none twice (exit code {EXIT_INTERRUPTED} means "
    "'interrupted, rerun to resume').",
)

JOB = typer.Argument(..., help="Job file (YAML). `batchgen init job.yaml` writes a commented one.", exists=False)
SET = typer.Option(None, "--set", help="Override any job key: --set runtime.window=256 (repeatable; values are YAML).")
_ENGINE = "Engine (as vLLM)"
_SAMPLING = "Sampling (as vLLM)"
_SCALE = "Scale-out"
# Engine and sampling flags, named as vLLM names them: one per job/load.py FLAG_PATHS entry, typed by
# the spec field it sets, declared once (engine_flags) for every command that takes them.
_FLAG_HELP = {
    "model": "Model folder or HF id.", "max_model_len": "Context length.",
    "gpu_memory_utilization": "Fraction of GPU memory for vLLM.", "tensor_parallel_size": "GPUs per engine.",
    "quantization": "awq, gptq, fp8, ...", "trust_remote_code": "Allow the model's own code.",
    "max_num_seqs": "Sequences per engine step.", "max_num_batched_tokens": "Tokens per engine step.",
    "top_p": "Nucleus sampling mass.", "top_k": "Top-k (0: off).", "max_tokens": "Most tokens per completion.",
    "presence_penalty": "-2..2.", "frequency_penalty": "-2..2.",
    "seed": "Job seed (each row's seed derives from it and the row id).",
}
_FLAG_SHORT = {"tensor_parallel_size": ("-tp",), "quantization": ("-q",)}


def _scalar(annotation: Any) -> type:
    """The option's type from the spec field's: `int | None` -> int, a Literal -> str."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _scalar(args[0])
    return annotation


def _engine_flag_parameters() -> list[inspect.Parameter]:
    params = []
    for name, path in FLAG_PATHS.items():
        section, key = path.split(".")
        field = JobSpec.model_fields[section].annotation.model_fields[key]  # type: ignore[union-attr]
        option = typer.Option(None, f"--{name.replace('_', '-')}", *_FLAG_SHORT.get(name, ()),
                              help=_FLAG_HELP.get(name) or field.description or "",
                              rich_help_panel=_ENGINE if section == "model" else _SAMPLING)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[_scalar(field.annotation)]))
    return params


def engine_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` run's engine and sampling flags; it gets those given as `flags` ({"max_tokens": 64}),
    the overrides load_job takes. Both `--help` pages list them, and they cannot drift apart."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != "flags"]

    @functools.wraps(command)
    def with_flags(**kwargs: Any) -> None:
        given = {name: kwargs.pop(name) for name in FLAG_PATHS}
        command(**kwargs, flags={k: v for k, v in given.items() if v is not None})

    with_flags.__signature__ = inspect.Signature(own + _engine_flag_parameters())  # type: ignore[attr-defined]
    return with_flags


def _rank(rank: Optional[int], world_size: Optional[int]) -> tuple[int, int, str]:
    if rank is not None or world_size is not None:
        return rank or 0, world_size or 1, "flags"
    return rank_from_environment(os.environ)


def _with_model_cache(spec: JobSpec) -> JobSpec:
    """runtime.model_cache defaults to the user's cache folder (env vars are read here, not in the library)."""
    if spec.runtime.model_cache is None:
        base = os.environ.get("BATCHGEN_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "batchgen")
        spec.runtime.model_cache = os.path.join(base, "models")
    return spec


def _fail(err: BatchgenError) -> None:
    typer.echo(f"batchgen: error: {err.render()}", err=True)
    raise typer.Exit(err.exit_code)


def _setup_logging(verbose: bool) -> str:
    """Log lines on stderr, each naming its logger; returns vLLM's own level: WARNING unless -v (or the environment says)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="[%(name)s] %(levelname)s %(message)s")
    # Their debug logs echo signed request headers and credential sources; batchgen logs what matters.
    for name in ("botocore", "aiobotocore", "boto3", "s3fs", "fsspec", "urllib3", "aiohttp"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Set before vLLM is first imported: 0.26 reads it then, and so do engine processes started with
    # spawn; 0.32 takes it from EngineArgs (engine/vllm.py). A level already in the environment wins.
    level = os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "WARNING").upper()
    # vLLM logs to stdout by default, into the summary that scripts read there: to stderr with ours.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    # 0.32 configures its loggers only when the engine starts; until then they log through ours.
    logging.getLogger("vllm").setLevel(level)
    return level


def _version(value: bool) -> None:
    if value:
        from batchgen.node.versions import version_lines

        typer.echo("\n".join(version_lines()))
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                          help="Print the batchgen, vLLM and torch versions and the device, then exit.")) -> None:
    pass


@app.command()
@engine_flags
def run(
    job: Path = JOB,
    flags: dict[str, Any] | None = None,
    sets: Optional[list[str]] = SET,
    force: bool = typer.Option(False, "--force", help="Go on even if the output was written with settings that change results, or from other input (the manifest keeps both jobs)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="This worker's rank (default: from SLURM / k8s variables, else 0).", rich_help_panel=_SCALE),
    world_size: Optional[int] = typer.Option(None, "--world-size", help="Number of workers (default: from SLURM / k8s, else 1).", rich_help_panel=_SCALE),
    worker_id: Optional[str] = typer.Option(None, "--worker-id", help="Name in stats and leases (default: host-rank).", rich_help_panel=_SCALE),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging, and vLLM's own INFO lines."),
    state_dir: Path = typer.Option(Path("~/.cache/batchgen"), "--state-dir", envvar="BATCHGEN_STATE_DIR",
                                   help="This host's folder for worker locks and the record of engine processes "
                                        "(a rerun ends what a killed run left running)."),
    engine_of_node: Optional[int] = typer.Option(None, "--engine-of-node", hidden=True, help="Set by the node supervisor for its engines."),
    ready_file: Optional[Path] = typer.Option(None, "--ready-file", hidden=True, help="Set by the node supervisor: written once the engine is up."),
    start_file: Optional[Path] = typer.Option(None, "--start-file", hidden=True, help="Set by the node supervisor: start the engine once this exists."),
) -> None:
    """Run a job: read prompts, generate with vLLM, commit Parquet parts. Rerun the same command to resume.

    With several GPUs (runtime.num_engines), one engine process per GPU group runs under this one.
    Exit 0 means this worker's share is committed; `_SUCCESS.json` in the output marks the whole job
    done (written by whichever worker commits last). An elastic worker exits 0 only once the job is done.

    Exit codes: 0 done (error rows are data, counted in the summary); 1 failed; 2 bad job (nothing started);
    75 interrupted by SIGTERM/SIGINT, or the object store stayed unreachable through every retry, after
    committing finished rows: rerun to resume.
    """
    from batchgen.engine import start_engine
    from batchgen.run.runner import Runner, RunOptions

    vllm_log_level = _setup_logging(verbose)
    flags = flags or {}
    try:
        spec = _with_model_cache(load_job(job, flags, sets))
        r, w, source = _rank(rank, world_size)
        worker = worker_id or f"{socket.gethostname()}-r{r}"
        logging.getLogger("batchgen").info("worker %s: rank %d of %d (%s)", worker, r, w, source)
        if engine_of_node is None:
            from batchgen.node.gpus import visible_gpus
            from batchgen.node.mps import mps_available
            from batchgen.node.supervisor import NodeRun, engine_layout, run_node

            layout = engine_layout(spec.runtime, spec.model, visible_gpus(os.environ) if spec.runtime.num_engines != 1 else [],
                                   mps=mps_available(spec.runtime.mps, os.environ))
            if layout.num_engines > 1:
                node = NodeRun(job, flags, list(sets or []), r, w, worker, dict(os.environ), force, verbose,
                               state_dir=state_dir.expanduser())
                result = run_node(spec, node, layout)
                for line in result.lines():
                    typer.echo(line)
                raise typer.Exit(result.exit_code)
        else:
            from batchgen.node.sharing import gated_engine_factory
            from batchgen.run.signals import die_with_parent

            die_with_parent()
        factory = functools.partial(start_engine, log_level=vllm_log_level)
        if ready_file or start_file:  # an engine sharing its GPU: starts after the one before it (node/sharing.py)
            factory = gated_engine_factory(factory, start_file, ready_file)
        summary = Runner(spec, RunOptions(rank=r, world_size=w, worker=worker, force=force, claim=engine_of_node is not None,
                                          engine_factory=factory, state_dir=state_dir.expanduser())).run()
    except BatchgenError as e:
        _fail(e)
        return
    for line in summary.lines():
        typer.echo(line)
    typer.echo(f"  output    {spec.output.path}/parts/*.parquet")


@app.command()
def plan(
    job: Path = JOB,
    world_size: int = typer.Option(1, "--world-size", help="Number of workers to split the job across."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    sets: Optional[list[str]] = SET,
) -> None:
    """Print which worker (rank) does which work units: deterministic, no coordinator."""
    from batchgen.io.shards import InputFiles
    from batchgen.io.store import Store
    from batchgen.work.ranks import assign
    from batchgen.work.resume import resume

    try:
        spec = load_job(job, None, sets)
        files = InputFiles.open(spec.input)
        try:
            store: Store | None = Store.open(spec.output.path, spec.output.storage)
        except BatchgenError:
            store = None
        found = resume(spec, files, store, strict=False, schemas=False)
        plan, source = found.plan, found.plan_source
        units = plan.units
        shares = {r: assign(units, r, world_size) for r in range(world_size)}
    except BatchgenError as e:
        _fail(e)
        return
    if as_json:
        typer.echo(json.dumps({r: [{"unit": u.key, "shard": u.shard, "rows": [u.row_start, u.row_end]} for u in us]
                               for r, us in shares.items()}, indent=1))
        return
    typer.echo(f"{len(units)} work units, {sum(u.rows for u in units)} rows, {world_size} worker(s); "
               f"units of about {plan.unit_rows} rows ({source})")
    for r, us in shares.items():
        typer.echo(f"rank {r}: {len(us)} units, {sum(u.rows for u in us)} rows")
        for u in us:
            typer.echo(f"  {u.key}  rows {u.row_start}..{u.row_end}  ({u.shard})")


# -- operator commands: validate before the GPU starts, status while it runs, a report after ---------
JSON = typer.Option(False, "--json", help="Machine-readable output.")


@app.command("validate")
@engine_flags
def validate_cmd(
    job: Path = JOB,
    flags: dict[str, Any] | None = None,
    sets: Optional[list[str]] = SET,
    as_json: bool = JSON,
    sample: Optional[int] = typer.Option(None, "--sample", min=1, help="Render and tokenize at most N rows per work unit (ids are still all checked)."),
    engine_check: bool = typer.Option(True, "--engine-check/--no-engine-check", help="Check engine_kwargs and sampling.extra against vLLM (imports it)."),
) -> None:
    """Check a job without a GPU: spec, inputs, columns, ids, prompts and their lengths, output, resume state.

    Takes run's engine and sampling flags (e.g. `--max-model-len 4096`), so it checks what `run` would run.
    Exit codes: 0 no problems; 1 only rows that would become error rows; 2 the run would refuse, or ids clash.
    """
    from batchgen.ops.validate import render_text, spec_problem, validate_job

    try:
        spec = _with_model_cache(load_job(job, flags, sets))
    except BatchgenError as e:
        result = spec_problem(e)
    else:
        result = validate_job(spec, sample_rows=sample, engine_check=engine_check)
    typer.echo(json.dumps(result.as_dict(), indent=1, default=str) if as_json else "\n".join(render_text(result)))
    raise typer.Exit(result.exit_code)


@app.command()
def status(
    job: Path = JOB,
    sets: Optional[list[str]] = SET,
    as_json: bool = JSON,
    all_units: bool = typer.Option(False, "--all", help="List every work unit (default: unfinished first, 30 at most)."),
) -> None:
    """Where a job stands, from its output folder: rows per unit and worker, errors, last commits, throughput.

    Works while workers run, after they finish, and after they were killed (`--json` has `complete` for scripts).
    """
    from batchgen.ops.status import job_status, render_text

    try:
        st = job_status(load_job(job, None, sets))
    except BatchgenError as e:
        _fail(e)
        return
    typer.echo(json.dumps(st.as_dict(), indent=1) if as_json else "\n".join(render_text(st, all_units)))


@app.command()
def report(
    job: Path = JOB,
    sets: Optional[list[str]] = SET,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for report.png and report.html (default: the output's _batchgen/)."),
    gpu_hour_price: Optional[float] = typer.Option(None, "--gpu-hour-price", min=0,
                                                   help="Price of one GPU-hour: the report adds the job's cost and the cost per 1M output tokens."),
) -> None:
    """The morning-after report (PNG + one self-contained HTML page): what ran, how long, how it ended, what it cost;
    rates over time, finish reasons, errors, token histograms, upload backlog, workers and units."""
    from batchgen.ops.report import make_report, save_report

    try:
        spec = load_job(job, None, sets)
        rep = make_report(spec, gpu_hour_price)
        written = save_report(spec, rep, str(out) if out else None)
    except BatchgenError as e:
        _fail(e)
        return
    for line in rep.lines + [f"wrote {w}" for w in written]:
        typer.echo(line)


@app.command()
def init(
    path: Path = typer.Argument(Path("job.yaml"), help="Where to write the job file."),
    model: str = typer.Option("Qwen/Qwen2.5-0.5B-Instruct", "--model", help="Model folder or HF id."),
    input_path: str = typer.Option("./data", "--input", help="Parquet prompts (file, folder, glob, s3://...)."),
    output: str = typer.Option("./out", "--output", help="Output folder (local or s3://...)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented job file to start from."""
    from batchgen.ops.template import write_template

    try:
        write_template(path, model, input_path, output, force)
    except BatchgenError as e:
        _fail(e)
        return
    typer.echo(f"wrote {path}: edit input, prompt and model, then `batchgen validate {path}`")


# Commands that only read and print. Once one has answered, its process ends without the interpreter's native
# teardown, where pyarrow's thread pools now and then abort a finished process ("terminate called without an
# active exception", apache/arrow#34314): `status` exited -6 in CI after printing its whole answer.
QUICK_EXIT_COMMANDS = frozenset({"status", "plan", "validate", "report"})


def main() -> None:
    """The `batchgen` command. Tests call `app` in-process; only a real process takes the quick exit."""
    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if command not in QUICK_EXIT_COMMANDS:
        app()
        return
    try:
        app()
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
