"""``report.html``: one self-contained page per run for a person reviewing it (no network, no script).

It holds the configuration, the report table (every row of ``report.csv``, the columns of ``report.md``),
the metric curves, target test images with prediction overlays and reward maps (the worst, median and best
images by mean reward), the reward network's reliability diagrams and the anatomical criteria the
predictions fail. Figures are the run directory's PNGs, embedded as base64 data; the style sheet is inline.
The loop rewrites the page after the baselines and after every iteration.
"""
from __future__ import annotations

import base64
import datetime
import html
import re
from collections.abc import Sequence
from pathlib import Path

from pipeline.report import COLUMNS, _fmt, present_columns
from rl4seg_env.io import atomic_write_text

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
td:nth-child(2), th:nth-child(2) { text-align: left; }
tr.selected td { background: #eef7ee; font-weight: 600; }
.scroll { overflow-x: auto; max-height: 36em; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.8em; }
.meta { color: #555; font-size: 0.9em; }
"""


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    alt = html.escape(caption, quote=True)
    return (f'<figure><img src="{_png(path)}" alt="{alt}"><figcaption>{html.escape(caption)}</figcaption>'
            "</figure>")


def _iteration_figures(run_dir: Path, prefix: str) -> list[tuple[int, Path]]:
    found = []
    for path in run_dir.glob(f"{prefix}_iter_*.png"):
        match = re.fullmatch(rf"{prefix}_iter_(\d+)\.png", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _table(rows: Sequence[dict]) -> str:
    cols = present_columns(rows)
    head = "".join(f"<th>{html.escape(COLUMNS[c])}</th>" for c in cols)
    body = []
    for r in rows:
        cls = ' class="selected"' if r.get("iteration") == "selected" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _failures(rows: Sequence[dict]) -> str:
    criteria = sorted({k[len("failed_"):] for r in rows for k in r if k.startswith("failed_")})
    if not criteria:
        return "<p>No test prediction fails an anatomical criterion.</p>"
    head = "<th>iter</th><th>model</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in criteria)
    body = []
    for r in rows:
        if "validity_pct" not in r:
            continue
        cells = [_fmt(r.get("iteration")), _fmt(r.get("model"))] + [_fmt(r.get(f"failed_{c}", 0)) for c in criteria]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<p>Target test images whose prediction fails each criterion (an image can fail several).</p>"
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def write_html_report(run_dir: str | Path, rows: Sequence[dict], config_text: str = "",
                      title: str = "RL4Seg run report") -> Path:
    """Write ``run_dir/report.html`` (atomic) from the report rows, the configuration's YAML text and the
    figures already in ``run_dir`` (``metrics.png``, ``cases_iter_*.png``, ``predictions_iter_*.png``,
    ``reliability_iter_*.png``); returns its path."""
    from rl4seg_env import __version__

    run_dir = Path(run_dir)
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">run directory <code>{html.escape(str(run_dir.resolve()))}</code> &middot; '
             f"rl4seg {html.escape(__version__)} &middot; written {html.escape(now)}</p>",
             "<h2>Results on the target test split</h2>",
             "<p>One row per model: source-only (iteration 0), the oracle and label-free baselines, each RL4Seg "
             "iteration (and its test-time-optimised predictions), and the model chosen without target labels "
             "(<b>selected</b>, highlighted).</p>", _table(rows) if rows else "<p>No results yet.</p>",
             "<h2>Curves</h2>", _figure(run_dir / "metrics.png", "Dice, anatomical validity and reward-network "
                                                                  "calibration per iteration") or "<p>-</p>"]
    cases = _iteration_figures(run_dir, "cases")
    preds = _iteration_figures(run_dir, "predictions")
    parts.append("<h2>Target test images</h2>")
    if cases:
        i, path = cases[-1]
        parts.append(_figure(path, f"iteration {i}: the worst, median and best test images by the reward "
                                   "network's mean reward (image | prediction | reward map, green = judged right "
                                   "| ground truth)"))
    for i, path in preds[:1] + preds[-1:] if len(preds) > 1 else preds:
        parts.append(_figure(path, f"iteration {i}: the first test images"
                                   + (" (source-only model)" if i == 0 else "")))
    reliability = _iteration_figures(run_dir, "reliability")
    parts.append("<h2>Reward network: reliability diagrams</h2>")
    parts += ([_figure(p, f"iteration {i}: predicted error probability (1 - reward) against the observed error "
                          "rate on target test predictions") for i, p in reliability] or ["<p>-</p>"])
    parts += ["<h2>Failing anatomical criteria</h2>", _failures(rows)]
    if config_text:
        parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(config_text)}</pre>"]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    return atomic_write_text(run_dir / "report.html", page)
