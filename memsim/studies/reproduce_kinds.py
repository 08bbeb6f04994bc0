"""Which function evaluates a reproduction case of each ``kind`` (the YAML's ``kind:`` key).

The one module that imports every kind module, and none imports it but the runner
(reproduce.py, when it loads a case): the kinds share types through reproduce_spec.py and
helpers through reproduce_cases.py, so the ``reproduce*`` modules form no import cycle. A new kind
is a function in its own module and one line here (and in ``CaseSpec.kind``'s description).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from memsim.studies import reproduce_cases as cases
from memsim.studies.reproduce_disagg import goodput, kv_transfer
from memsim.studies.reproduce_flash import flash_case
from memsim.studies.reproduce_frameworks import framework
from memsim.studies.reproduce_kivi import kivi_case
from memsim.studies.reproduce_kv_budget import kv_budget_case
from memsim.studies.reproduce_kv_tp import kv_capacity
from memsim.studies.reproduce_parallel import parallel
from memsim.studies.reproduce_prefix import prefix_serving, prefix_trace
from memsim.studies.reproduce_spec import CaseResult, CaseSpec
from memsim.studies.reproduce_sublinear import checkpoint_module
from memsim.studies.reproduce_swap import swap_submit

KINDS: dict[str, Callable[[CaseSpec, Path, Callable[[str], None]], CaseResult]] = {
    "zero": cases.zero,
    "flexgen": cases.flexgen,
    "paged": cases.paged,
    "checkpoint": cases.checkpoint,
    "checkpoint_module": checkpoint_module,
    "kivi": kivi_case,
    "flash": flash_case,
    "headinfer": cases.headinfer,
    "framework": framework,
    "parallel": parallel,
    "prefix_trace": prefix_trace,
    "prefix_serving": prefix_serving,
    "kv_budget": kv_budget_case,
    "kv_capacity": kv_capacity,
    "goodput": goodput,
    "kv_transfer": kv_transfer,
    "swap_submit": swap_submit,
}
