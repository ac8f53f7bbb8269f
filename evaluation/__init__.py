"""The paper's evaluation protocols and result tables (docs/evaluation.md); ``evaluate.py`` drives them."""

from evaluation.protocols import (
    INPUT_VIEW_GROUP,
    MEAD_INPUT_VIEW_GROUPS,
    ComparisonOptions,
    GroupScores,
    InputViewGroup,
    Protocol,
    ProtocolResult,
    ReferenceDepthSource,
    ViewTargets,
    build_reference_depth,
    datamodule_for_input_view,
    deterministic_draws,
    run_input_view,
    run_mead_novel_view,
    update_input_view,
    update_novel_views,
)
from evaluation.tables import (
    PAPER_COLUMNS,
    ColumnGroup,
    MetricColumn,
    ResultTable,
    TableFiles,
    TableRow,
    row_from_result,
    table_for,
    to_csv,
    to_json,
    to_markdown,
    write_tables,
)

__all__ = [
    "INPUT_VIEW_GROUP", "MEAD_INPUT_VIEW_GROUPS", "PAPER_COLUMNS", "ColumnGroup", "ComparisonOptions",
    "GroupScores", "InputViewGroup", "MetricColumn", "Protocol", "ProtocolResult", "ReferenceDepthSource",
    "ResultTable", "TableFiles", "TableRow", "ViewTargets", "build_reference_depth", "datamodule_for_input_view",
    "deterministic_draws", "row_from_result", "run_input_view", "run_mead_novel_view", "table_for", "to_csv",
    "to_json", "to_markdown", "update_input_view", "update_novel_views", "write_tables",
]
