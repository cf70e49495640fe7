"""The report as a table, JSON, CSV or Markdown, and what it must say loudly."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict

from ..errors import UsageError
from .runner import BenchReport, ReportHeader
from .summary import OVERALL, MethodRow

FORMATS = ("table", "json", "csv", "md")
_COLUMNS = ("method", "category", "prompts", "tok/s", "speedup", "vs server", "e2e s", "e2e vs server",
            "tok/step", "rows/tok", "TTFT ms", "RSS MB", "= none", "= server")


def _fmt(value: float | None, pattern: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, pattern) + suffix


def _same_cell(count: int | None, row: MethodRow, reference: str) -> str:
    if row.method == reference:
        return "ref"
    return "-" if count is None else f"{count}/{row.n_prompts}"


def _row_cells(row: MethodRow) -> list[str]:
    return [row.method, row.category, str(row.n_prompts), _fmt(row.tokens_per_s, ".1f"),
            _fmt(row.speedup, ".2f", "x"), _fmt(row.vs_server, ".2f", "x"), _fmt(row.e2e_s, ".2f"),
            _fmt(row.e2e_vs_server, ".2f", "x"), _fmt(row.tokens_per_step, ".2f"),
            _fmt(row.rows_per_token, ".2f"), _fmt(row.ttft_ms, ".0f"),
            _fmt(row.peak_rss_mb, ".0f"), _same_cell(row.same_as_none, row, "none"),
            _same_cell(row.same_as_server, row, "server")]


def header_lines(header: ReportHeader) -> list[tuple[str, str]]:
    engine = ("exact (batched verification bit-identical to one-token decoding)" if header.engine == "exact"
              else "fast (llama.cpp's fastest kernels; greedy output equals plain decoding up to near-ties)")
    lines = [("device", f"{header.device}, {header.cores}, {header.backend}"),
             ("model", f"{header.model} sha256 {header.model_sha256}"),
             ("llama.cpp", f"{header.llama_cpp_version}; {header.llama_system_info}"),
             ("engine", engine), ("threads", str(header.threads)), ("KV cache", header.kv_cache),
             ("date", header.date),
             ("protocol", f"{header.n_prompts} prompts ({header.prompts}), {header.sampling}, {header.max_tokens} "
                          f"new tokens, repeat {header.repeat}, methods interleaved per prompt; speedup = median "
                          "of per-prompt paired ratios vs the family's plain decoding (none / server / lcp); "
                          "vs server = the same against llama-server without speculation; e2e = TTFT + decoding")]
    if header.llama_server:
        lines.append(("llama-server", header.llama_server))
    lines += [("note", note) for note in header.notes]
    return lines


def lossless_warning(report: BenchReport) -> str | None:
    """Exact mode promises bit-identical output: any difference is a bug, said loudly."""
    failures = report.lossless_failures()
    if not failures:
        return None
    cases = ", ".join(f"{s.method} on {s.category} #{s.question_id}" for s in failures)
    return f"LOSSLESS MISMATCH in exact mode: output differs from `none`: {cases}"


def divergence_lines(report: BenchReport) -> list[str]:
    """Every place a method's greedy output left its plain decoding's, with the logit gap
    there (in the fast mode: near-ties where batched and one-row kernels round differently)."""
    lines = []
    for d in report.divergences:
        pair = "" if d.pair_gap is None else f", {d.pair_gap:.4f} between the two tokens"
        lines.append(f"{d.method} differs from {d.reference} on {d.category} #{d.question_id} at token "
                     f"{d.position}: top-2 logit gap {d.top2_gap:.4f}{pair}")
    return lines


def to_json(report: BenchReport) -> str:
    doc = {"header": asdict(report.header), "warning": lossless_warning(report),
           "divergences": [asdict(d) for d in report.divergences],
           "results": [asdict(r) for r in report.rows],
           "samples": [asdict(s) for s in report.samples]}
    return json.dumps(doc, indent=2) + "\n"


def to_csv(report: BenchReport) -> str:
    """Comment lines (#) with the header and divergences, then one CSV row per method and
    category (read with pandas.read_csv(..., comment='#'))."""
    buffer = io.StringIO()
    for key, value in header_lines(report.header):
        buffer.write(f"# {key}: {value}\n")
    warning = lossless_warning(report)
    if warning:
        buffer.write(f"# {warning}\n")
    for line in divergence_lines(report):
        buffer.write(f"# divergence: {line}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    fields = list(MethodRow.__dataclass_fields__)
    writer.writerow(fields)
    for row in report.rows:
        writer.writerow(["" if getattr(row, f) is None else getattr(row, f) for f in fields])
    return buffer.getvalue()


def to_markdown(report: BenchReport) -> str:
    lines = [f"- **{key}**: {value}" for key, value in header_lines(report.header)]
    warning = lossless_warning(report)
    if warning:
        lines += ["", f"> **WARNING — {warning}**"]
    lines += ["", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in report.rows:
        cells = _row_cells(row)
        if row.category == OVERALL:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    divergences = divergence_lines(report)
    if divergences:
        lines += ["", "Divergences from plain decoding:", ""] + [f"- {line}" for line in divergences]
    return "\n".join(lines) + "\n"


def render_table(report: BenchReport, console) -> None:
    from rich.table import Table

    for key, value in header_lines(report.header):
        console.print(f"[bold]{key}[/bold]: {value}", soft_wrap=True, highlight=False)
    warning = lossless_warning(report)
    if warning:
        console.print(f"[bold red]!! {warning}[/bold red]", soft_wrap=True, highlight=False)
    table = Table(show_lines=False)
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("method", "category") else "right")
    for row in report.rows:
        table.add_row(*_row_cells(row), style="bold" if row.category == OVERALL else None,
                      end_section=row.category == OVERALL)
    console.print(table)
    for line in divergence_lines(report):
        console.print(f"divergence: {line}", soft_wrap=True, highlight=False)


def render(report: BenchReport, fmt: str) -> str:
    """The report as text in json, csv or md; `table` renders Rich without colour."""
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "md":
        return to_markdown(report)
    if fmt == "table":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=200, no_color=True, highlight=False)
        render_table(report, console)
        return console.file.getvalue()
    raise UsageError(f"unknown --format {fmt!r} (choose from {', '.join(FORMATS)})")
