"""Typed ``actionConfig`` of the ``jira`` step type (string values are templates)."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from maestro.model.connections import NAME_PATTERN

JiraOperation = Literal["createIssue", "updateIssue", "transitionIssue", "searchIssues"]

# Which options each operation needs, and which it accepts at all (an option another operation
# uses is refused, so a misplaced field is caught at validation instead of silently ignored).
_REQUIRED: dict[str, tuple[str, ...]] = {
    "createIssue": ("project", "issue_type", "summary"),
    "updateIssue": ("issue_key",),
    "transitionIssue": ("issue_key", "transition"),
    "searchIssues": ("jql",),
}
_ACCEPTED: dict[str, frozenset[str]] = {
    "createIssue": frozenset({"project", "issue_type", "summary", "description", "fields"}),
    "updateIssue": frozenset({"issue_key", "summary", "description", "fields"}),
    "transitionIssue": frozenset({"issue_key", "transition", "fields"}),
    "searchIssues": frozenset({"jql", "max_results", "next_page_token"}),
}
_OPTIONAL_NAMES = (
    "project",
    "issue_type",
    "summary",
    "description",
    "issue_key",
    "transition",
    "jql",
    "max_results",
    "next_page_token",
)


def _camel(name: str) -> str:
    return to_camel(name)


class JiraStepConfig(BaseModel):
    """One Jira Cloud (REST v3) operation through a ``jira`` connection.

    ``description`` is plain text, sent as an Atlassian Document (paragraphs split on blank
    lines, single line breaks kept as hard breaks). ``fields`` holds extra issue fields merged
    into the request's ``fields`` (``labels`` are added to, never replaced)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    connection: str = Field(pattern=NAME_PATTERN)
    operation: JiraOperation
    project: str | None = Field(default=None, description="Project key (createIssue).")
    issue_type: str | None = Field(default=None, description="Issue type name, e.g. Task.")
    summary: str | None = None
    description: str | None = Field(
        default=None, description="Plain text; sent as Atlassian Document Format."
    )
    fields: dict[str, Any] = Field(
        default_factory=dict, description="Extra issue fields merged into `fields`."
    )
    issue_key: str | None = Field(default=None, description="e.g. OPS-123.")
    transition: str | None = Field(
        default=None, description="Transition name or id (transitionIssue)."
    )
    jql: str | None = None
    max_results: int = Field(default=50, ge=1, le=5000)
    next_page_token: str | None = Field(
        default=None, description="From a previous searchIssues output, for the next page."
    )

    @model_validator(mode="after")
    def _fits_operation(self) -> Self:
        for name in _REQUIRED[self.operation]:
            value = getattr(self, name)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise ValueError(f"{self.operation} needs {_camel(name)}")
        accepted = _ACCEPTED[self.operation]
        unused = [
            _camel(name)
            for name in _OPTIONAL_NAMES
            if name not in accepted and name in self.model_fields_set
        ]
        if self.fields and "fields" not in accepted:
            unused.append("fields")
        if unused:
            raise ValueError(f"{self.operation} does not use {', '.join(unused)}")
        if (
            self.operation == "updateIssue"
            and self.summary is None
            and self.description is None
            and not self.fields
        ):
            raise ValueError("updateIssue needs summary, description or fields to change")
        return self
