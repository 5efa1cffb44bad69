"""Writes schemas/job.schema.json from JobSpec, so editors can complete job files.

    python -m batchgen.job.schema            # rewrite schemas/job.schema.json
    python -m batchgen.job.schema --check    # exit 1 if it is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from batchgen.job.spec import JobSpec

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "job.schema.json"


def job_schema_text() -> str:
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "batchgen job"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = job_schema_text()
    if "--check" in argv:
        if not SCHEMA_PATH.exists() or SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH} is stale: run `python -m batchgen.job.schema`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
