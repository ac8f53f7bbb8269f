"""Result tables laid out like GOAE's Tables 1-3: one row per method / ablation / checkpoint.

Columns are grouped (Input view; or yaw = ±60° and yaw = 0° for MEAD novel views), and inside a group
ordered like Table 2/3: PSNR, SSIM, MSE, LPIPS, FID, ID, Geo. Err., then Time (s) (Table 1). Only metrics
that some row has are shown. Failure counts (ID pairs without a face, flat depths) and image counts are
kept in the CSV and JSON and listed under the Markdown table, never dropped.

Each table is written as Markdown, CSV and JSON, each atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evaluation.protocols import ProtocolResult, group_labels


@dataclass(frozen=True)
class MetricColumn:
    name: str  # metric name as in metrics.build_metric_suite ("mse", ...) or "time"
    label: str
    higher_is_better: bool
    decimals: int

    @property
    def header(self) -> str:
        return f"{self.label} {'↑' if self.higher_is_better else '↓'}"


# Order of Tables 2/3, then Table 1's Time.
PAPER_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("psnr", "PSNR", True, 2),
    MetricColumn("ssim", "SSIM", True, 4),
    MetricColumn("mse", "MSE", False, 4),
    MetricColumn("lpips", "LPIPS", False, 4),
    MetricColumn("fid", "FID", False, 1),
    MetricColumn("id", "ID", True, 4),
    MetricColumn("geometry", "Geo. Err.", False, 4),
    MetricColumn("time", "Time (s)", False, 4),
)
_KNOWN = {column.name: column for column in PAPER_COLUMNS}


@dataclass(frozen=True)
class ColumnGroup:
    key: str  # "input_view", "yaw60", "yaw0"
    label: str


@dataclass
class TableRow:
    """values: "<group>/<metric>" -> score; counts: "<group>/<metric>/<count>" and "<group>/images"."""

    name: str
    checkpoint: str | None
    values: dict[str, float]
    counts: dict[str, float]


@dataclass
class ResultTable:
    protocol: str
    title: str
    groups: list[ColumnGroup]
    rows: list[TableRow] = field(default_factory=list)
    metadata: dict[str, object] = field(default_factory=dict)

    def columns(self) -> list[tuple[ColumnGroup, MetricColumn]]:
        """(group, metric) pairs that at least one row has, in paper order (unknown metrics after)."""
        present = {key for row in self.rows for key in row.values}
        columns = []
        for group in self.groups:
            names = {key.split("/", 1)[1] for key in present if key.startswith(group.key + "/")}
            ordered = [column for column in PAPER_COLUMNS if column.name in names]
            extra = [MetricColumn(name, name, False, 4) for name in sorted(names - set(_KNOWN))]
            columns.extend((group, column) for column in ordered + extra)
        return columns


def row_from_result(name: str, checkpoint: str | None, result: ProtocolResult) -> TableRow:
    """Split a protocol result into table values (plain metric names) and counts (names with a '/')."""
    values: dict[str, float] = {}
    counts: dict[str, float] = {}
    for group, scores in result.groups.items():
        for key, value in scores.values.items():
            if "/" in key or key == "images":
                counts[f"{group}/{key}"] = value
            else:
                values[f"{group}/{key}"] = value
    return TableRow(name=name, checkpoint=checkpoint, values=values, counts=counts)


def table_for(result_protocol: str, rows: Sequence[TableRow], metadata: Mapping[str, object] | None = None) -> ResultTable:
    from evaluation.protocols import Protocol

    protocol = Protocol(result_protocol)
    titles = {
        Protocol.INPUT_VIEW: "Reconstruction quality (input view)",
        Protocol.MEAD_NOVEL_VIEW: "Novel view quality (MEAD): the yaw is the input view's; each number averages "
                                  "the four other views",
    }
    groups = [ColumnGroup(key, label) for key, label in group_labels(protocol).items()]
    return ResultTable(protocol.value, titles[protocol], groups, list(rows), dict(metadata or {}))


# ------------------------------------------------------------------------------------------ formats
def _format(value: float, decimals: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def to_markdown(table: ResultTable) -> str:
    columns = table.columns()
    multi_group = len(table.groups) > 1
    headers = ["Method"] + [f"{group.label} {column.header}" if multi_group else column.header
                            for group, column in columns]
    lines = [f"**{table.title}**", "", "| " + " | ".join(headers) + " |",
             "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    for row in table.rows:
        cells = [row.name] + [_format(row.values.get(f"{group.key}/{column.name}", math.nan), column.decimals)
                              for group, column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_markdown_notes(table)]
    return "\n".join(lines).rstrip() + "\n"


def _markdown_notes(table: ResultTable) -> list[str]:
    notes = []
    for row in table.rows:
        counts = ", ".join(f"{key} = {value:g}" for key, value in sorted(row.counts.items())
                           if _is_reported_count(key, value))
        if counts:
            notes.append(f"- {row.name}: {counts}")
    for key, value in table.metadata.items():
        notes.append(f"- {key}: {value}")
    return notes


def _is_reported_count(key: str, value: float) -> bool:
    """Image counts and any non-zero failure count (a zero failure count is noise in a paper table)."""
    if key.endswith("/images") or key.endswith("/evaluated"):
        return True
    return ("/failed" in key or key.endswith("/failures")) and value != 0


def to_csv(table: ResultTable) -> str:
    """Machine-readable: one row per method, raw keys ("yaw60/lpips"), then every count."""
    value_keys = [f"{group.key}/{column.name}" for group, column in table.columns()]
    count_keys = sorted({key for row in table.rows for key in row.counts})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "checkpoint", *value_keys, *count_keys])
    for row in table.rows:
        writer.writerow([row.name, row.checkpoint or "",
                         *[_csv_number(row.values.get(key)) for key in value_keys],
                         *[_csv_number(row.counts.get(key)) for key in count_keys]])
    return buffer.getvalue()


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def to_json(table: ResultTable) -> str:
    """JSON with NaN written as null (JSON has no NaN)."""
    payload = {
        "protocol": table.protocol,
        "title": table.title,
        "groups": [asdict(group) for group in table.groups],
        "columns": [{"group": group.key, "metric": column.name, "label": column.header}
                    for group, column in table.columns()],
        "rows": [{"name": row.name, "checkpoint": row.checkpoint, "values": _json_numbers(row.values),
                  "counts": _json_numbers(row.counts)} for row in table.rows],
        "metadata": table.metadata,
    }
    return json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n"


def _json_numbers(values: Mapping[str, float]) -> dict[str, float | None]:
    return {key: (float(value) if math.isfinite(value) else None) for key, value in values.items()}


# ------------------------------------------------------------------------------------------ files
@dataclass(frozen=True)
class TableFiles:
    markdown: Path
    csv: Path
    json: Path


def write_text_atomically(path: Path, text: str) -> None:
    """Readers never see a half-written table: write a temporary file beside it, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_tables(table: ResultTable, directory: Path, stem: str) -> TableFiles:
    files = TableFiles(markdown=directory / f"{stem}.md", csv=directory / f"{stem}.csv",
                       json=directory / f"{stem}.json")
    write_text_atomically(files.markdown, to_markdown(table))
    write_text_atomically(files.csv, to_csv(table))
    write_text_atomically(files.json, to_json(table))
    return files
