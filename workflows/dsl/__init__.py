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
"""

from workflows.dsl._limits import ParseLimits
from workflows.dsl._parse import (
    load_workflow,
    parse_workflow,
    read_workflow_file,
    workflow_bytes,
)
from workflows.dsl._spec import (
    InputSpec,
    OutputDecl,
    OutputSpec,
    PlacementSpec,
    StepSpec,
    ValueBinding,
    VerifySpec,
    WorkflowSpec,
    check_tools,
)
from workflows.errors import WorkflowDefinitionError, WorkflowLimitError

__all__ = [
    "InputSpec",
    "OutputDecl",
    "OutputSpec",
    "ParseLimits",
    "PlacementSpec",
    "StepSpec",
    "ValueBinding",
    "VerifySpec",
    "WorkflowDefinitionError",
    "WorkflowLimitError",
    "WorkflowSpec",
    "check_tools",
    "load_workflow",
    "parse_workflow",
    "read_workflow_file",
    "workflow_bytes",
]
