"""Print the workflow JSON Schema; ``docs/workflow.schema.json`` is its output.

Regenerate with ``uv run python -m maestro.model.schema_export > docs/workflow.schema.json``.
"""

from __future__ import annotations

import json
import sys

from maestro.model.workflow import workflow_json_schema


def schema_text() -> str:
    """The schema exactly as committed: sorted keys, two-space indent, final newline."""
    return json.dumps(workflow_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
