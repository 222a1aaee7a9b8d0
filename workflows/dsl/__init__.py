"""The workflow YAML DSL: parse, validate and query workflow definitions.

A workflow is a DAG of steps; each step calls one tool with arguments that may reference
workflow inputs and other steps' outputs (see :mod:`workflows.refs`). Dependencies are
implied by those references, so independent steps can run in parallel::

    id: text-and-math
    inputs:
      - name: text
        default: "hello swarm"
    steps:
      - name: shout
        tool: text.upper            # or text.upper@1.0.0
        inputs:
          - name: text
            value: "{{inputs.text}}"
    outputs:
      - name: shouted
        value: "{{steps.shout.outputs.result}}"

:func:`parse_workflow` and :func:`load_workflow` raise :class:`WorkflowDefinitionError` with
``"source:line: message"`` for every problem: YAML syntax, shape, names, references, cycles.
They parse within :class:`ParseLimits` (bytes, nesting, YAML nodes and bytes with aliases
expanded, steps, any one value's size, time; safe defaults), so that a hostile file costs
bounded time and memory: a bound broken is a :class:`WorkflowLimitError` naming it.
:func:`check_tools` additionally checks the steps against the tools a node offers.
:func:`check_document` finds *every* problem instead, each with its line and column (and,
given a :class:`ToolCatalog`, every step against its tool): ``hivemesh validate``.
"""

from workflows.dsl._checks import KnownTool, ToolCatalog
from workflows.dsl._limits import ParseLimits
from workflows.dsl._parse import (
    load_workflow,
    parse_workflow,
    read_workflow_file,
    workflow_bytes,
)
from workflows.dsl._source import Diagnostic
from workflows.dsl._spec import (
    FallbackSpec,
    ForeachSpec,
    InputSpec,
    OnErrorSpec,
    OutputDecl,
    OutputSpec,
    PlacementSpec,
    RetrySpec,
    RunSpec,
    StepSpec,
    ValueBinding,
    VerifySpec,
    WorkflowSpec,
    check_tools,
    workflow_json_schema,
)
from workflows.dsl._validate import Report, check_document
from workflows.errors import WorkflowDefinitionError, WorkflowLimitError

__all__ = [
    "Diagnostic",
    "FallbackSpec",
    "ForeachSpec",
    "InputSpec",
    "KnownTool",
    "OnErrorSpec",
    "OutputDecl",
    "OutputSpec",
    "ParseLimits",
    "PlacementSpec",
    "Report",
    "RetrySpec",
    "RunSpec",
    "StepSpec",
    "ToolCatalog",
    "ValueBinding",
    "VerifySpec",
    "WorkflowDefinitionError",
    "WorkflowLimitError",
    "WorkflowSpec",
    "check_document",
    "check_tools",
    "load_workflow",
    "parse_workflow",
    "read_workflow_file",
    "workflow_bytes",
    "workflow_json_schema",
]
