"""The base of every YAML spec model (hardware, workloads, planner presets, studies, suites).

Outside the stage packages so a stage that reads a spec imports no other stage for its base.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Base of every spec model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
