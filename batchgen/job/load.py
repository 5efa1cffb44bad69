"""Reading a job: YAML file, then overrides (CLI flags > YAML > defaults), validated into a JobSpec."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from batchgen.errors import SpecError
from batchgen.job.spec import JobSpec

# CLI flags named as vLLM names them, and where each lands in the spec (cli.py makes one option of each,
# typed and documented by the field it sets, for `run` and `validate` alike).
FLAG_PATHS: dict[str, str] = {
    "model": "model.path",
    "max_model_len": "model.max_model_len",
    "gpu_memory_utilization": "model.gpu_memory_utilization",
    "tensor_parallel_size": "model.tensor_parallel_size",
    "dtype": "model.dtype",
    "quantization": "model.quantization",
    "trust_remote_code": "model.trust_remote_code",
    "max_num_seqs": "model.max_num_seqs",
    "max_num_batched_tokens": "model.max_num_batched_tokens",
    "temperature": "sampling.temperature",
    "top_p": "sampling.top_p",
    "top_k": "sampling.top_k",
    "max_tokens": "sampling.max_tokens",
    "presence_penalty": "sampling.presence_penalty",
    "frequency_penalty": "sampling.frequency_penalty",
    "seed": "sampling.seed",
}


def load_job(path: str | Path, overrides: dict[str, Any] | None = None, sets: list[str] | None = None) -> JobSpec:
    """Read a job file and apply overrides: named flags (`{"max_tokens": 64}`) and `--set a.b=value`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"cannot read the job file ({e.strerror})", where=str(path),
                        fix="check the path; `batchgen init job.yaml` writes a commented one to start from") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = str(getattr(e, "problem", e))
        tabs = "'\\t'" in problem  # YAML forbids tabs for indentation; the scanner's words do not say so
        raise SpecError(f"not valid YAML: {problem}", where=where,
                        fix="indent with spaces, not tabs" if tabs else "check indentation and quoting around that line") from e
    if not isinstance(data, dict):
        raise SpecError("a job file must be a mapping with keys input, prompt, model, output, ...", where=str(path))
    data = _resolve_relative_paths(data, path.parent)
    for flag, value in (overrides or {}).items():
        if value is not None:
            set_path(data, FLAG_PATHS[flag], value)
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set expects path.to.key=value, got {item!r}", fix="e.g. --set runtime.window=256")
        set_path(data, key.strip(), yaml.safe_load(raw) if raw else None)
    return validate(data, source=str(path))


def validate(data: dict[str, Any], source: str = "job") -> JobSpec:
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_describe(e), where=source,
                        fix="see `batchgen run --help` and schemas/job.schema.json for every key") from None


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative local paths in a job file are relative to the file, so jobs run from any directory."""
    def fix(p: Any) -> Any:
        if isinstance(p, str) and "://" not in p and not Path(p).is_absolute() and p.startswith("."):
            return str((base / p).resolve())
        return p

    for section, key in (("input", "path"), ("output", "path"), ("model", "path"), ("model", "tokenizer"),
                         ("runtime", "model_cache")):
        part = data.get(section)
        if isinstance(part, dict) and key in part:
            value = part[key]
            part[key] = [fix(v) for v in value] if isinstance(value, list) else fix(value)
    structured = (data.get("sampling") or {}).get("structured") if isinstance(data.get("sampling"), dict) else None
    if isinstance(structured, dict) and isinstance(structured.get("json_schema"), str):
        structured["json_schema"] = fix(structured["json_schema"])  # a schema file next to the job file
    adapters = data.get("model", {}).get("lora") if isinstance(data.get("model"), dict) else None
    if isinstance(adapters, dict):
        data["model"]["lora"] = {name: fix(folder) for name, folder in adapters.items()}
    return data


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    keys = dotted.split(".")
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SpecError(f"cannot set {dotted}: {key} is not a section", fix="check the key path")
        node = child
    node[keys[-1]] = value


# Parts of an error's location that name a branch of a union type (`int | Literal["auto"]`), not a key.
_UNION_BRANCH = re.compile(r"^(function-\w+\[.*|constrained-\w+|literal\[.*\]|int|float|str|bool|none)$")


def _describe(err: ValidationError) -> str:
    lines: list[str] = []
    # A union's branches fail one by one: one line per key, their messages joined by "or".
    merged: dict[str, tuple[int, list[str], str]] = {}  # loc -> (its line, messages, what it got)
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"] if not _UNION_BRANCH.match(str(p)))
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key {loc}{_suggest(loc)}")
        elif item["type"] == "missing":
            lines.append(f"missing required key {loc}")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            if loc in merged:
                index, msgs, shown = merged[loc]
                msgs.append(msg.removeprefix("Input should be "))
            else:
                got = item.get("input")
                secret = item["loc"][-1:] == ("secret",)  # a mistyped secret key must not be echoed to logs
                shown = "" if isinstance(got, (dict, list)) or got is None or secret else f" (got {got!r})"
                index, msgs = len(lines), [msg]
                merged[loc] = (index, msgs, shown)
                lines.append("")
            lines[index] = f"{loc or 'job'}: {', or '.join(msgs)}{shown}"
    return "invalid job file:\n  " + "\n  ".join(lines)


def _suggest(loc: str) -> str:
    *parents, leaf = loc.split(".")
    model: type[BaseModel] = JobSpec
    for p in parents:
        field = model.model_fields.get(p)
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    close = difflib.get_close_matches(leaf, list(model.model_fields), n=1)
    return f" (did you mean {'.'.join([*parents, close[0]])}?)" if close else ""
