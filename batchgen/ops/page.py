"""The report as one self-contained HTML file: the header, the PNG inlined as base64, and the tables.

No external resources (no scripts, fonts or images fetched), so it opens anywhere, attached to a
mail or copied off a cluster. Every table that shows fewer rows than it has says so.
"""

from __future__ import annotations

import base64
import html
from typing import Any, Sequence

from batchgen.ops.charts import PANELS

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1250px; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; vertical-align: top; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
table.header th { text-align: left; width: 11em; } table.header td { text-align: left; }
td.text { text-align: left; max-width: 40em; overflow-wrap: anywhere; white-space: normal; }
table.header td { white-space: normal; }
p.more { color: #a40; margin-top: -0.8em; }
.complete { color: #070; font-weight: bold; } .incomplete { color: #a40; font-weight: bold; }
img { max-width: 100%; border: 1px solid #ddd; }
"""
MEANING = {
    "stop": "the model ended the text (end-of-sequence token or a stop string)",
    "length": "cut at sampling.max_tokens (raise it if these texts should be longer)",
    "abort": "aborted by the engine",
}


def render_page(title: str, header: Sequence[tuple[str, str]], png: bytes, sections: Sequence[tuple[str, str]],
                read: str) -> str:
    """`header`: (key, value) rows; `sections`: (heading, HTML) in order."""
    esc = html.escape
    head = "".join(f'<tr data-key="{esc(k)}"><th>{esc(k)}</th><td>{_state(k, v)}</td></tr>' for k, v in header)
    panels = "".join(f"<li><b>{esc(name)}</b>: {esc(what)}</li>" for name, what in PANELS)
    body = "".join(f"<h2>{esc(h)}</h2>{content}" for h, content in sections)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title><style>{STYLE}</style></head><body>
<h1>{esc(title)}</h1>
<table class="header">{head}</table>
<img alt="batchgen charts" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<ul class="panels">{panels}</ul>
{body}
<h2>What this report read</h2><p class="read">{esc(read)}</p>
</body></html>
"""


def _state(key: str, value: str) -> str:
    if key == "state":
        cls = "complete" if value.startswith("complete") else "incomplete"
        return f'<span class="{cls}">{html.escape(value)}</span>'
    return html.escape(value)


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, limit: int | None = None, what: str = "rows",
          more: str = "", text_columns: Sequence[int] = ()) -> str:
    """An HTML table of at most `limit` rows; when cut, a line below says how many of how many it shows."""
    if not rows:
        return f'<p class="none">no {html.escape(what)}</p>'
    shown = rows if limit is None else rows[:limit]
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(
        f'<td class="text">{html.escape(str(c))}</td>' if i in text_columns else f"<td>{html.escape(str(c))}</td>"
        for i, c in enumerate(r)) + "</tr>" for r in shown)
    out = f"<table><tr>{th}</tr>{body}</table>"
    if len(shown) < len(rows):
        out += f'<p class="more">showing {len(shown):,} of {len(rows):,} {html.escape(what)}{html.escape(more)}</p>'
    return out


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def finish_meaning(reason: str) -> str:
    return MEANING.get(reason, "")
