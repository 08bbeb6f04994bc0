"""From plan to action: a Plan written as the config a framework runs, and read back from it.

``memsim plan --emit deepspeed|accelerate|vllm|flexgen`` writes a DeepSpeed ``ds_config.json``,
an HF Accelerate ``device_map`` + ``max_memory``, vLLM engine arguments (a ``vllm serve --config``
YAML) or FlexGen's command line. Each framework module has the two directions side by side:
``emit(system, trace, plan) -> (text, notes)`` and ``read(text, system, trace, file) -> Plan``.

The emitted file and the prediction are one description: what memsim reports for an emitted
config is the simulation of the plan *read back from that file*, not of the plan it came from.
Where the framework cannot express a decision (per-layer recompute in DeepSpeed, a KV cache off
the GPU in Accelerate), the file holds the nearest config, a note says what changed, and the
figures are those of the nearest config. Where nothing honest can be emitted (a training job for
vLLM), it is a SpecError (exit 2). The same ``read`` functions take users' own files as input:
``memsim simulate --plan ds_config.json`` (see :func:`load_plan`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from memsim.contracts.plan import Plan, PlannerInfo, trace_fingerprint
from memsim.emit import accelerate, deepspeed, flexgen, vllm
from memsim.emit.common import parse_mapping
from memsim.errors import SpecError, did_you_mean
from memsim.hardware.spec import System
from memsim.workloads.trace import Trace

FORMATS = {"deepspeed": deepspeed, "accelerate": accelerate, "vllm": vllm, "flexgen": flexgen}
DEFAULT_NAMES = {"deepspeed": "ds_config.json", "accelerate": "device_map.json", "vllm": "vllm.yaml",
                 "flexgen": "flexgen.args"}


@dataclass
class Emitted:
    """A framework config and the Plan it runs (read back from the text itself)."""

    format: str
    text: str
    plan: Plan
    notes: list[str] = field(default_factory=list)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise SpecError(f"unknown format {fmt!r}{did_you_mean(fmt, FORMATS)}; expected one of "
                        f"{', '.join(FORMATS)}", key="--emit")
    return fmt


def default_path(fmt: str) -> str:
    return DEFAULT_NAMES[check_format(fmt)]


def emit(fmt: str, system: System, trace: Trace, plan: Plan) -> Emitted:
    """The config of ``plan`` in format ``fmt``, and the plan that config really runs."""
    module = FORMATS[check_format(fmt)]
    text, notes = module.emit(system, trace, plan)
    notes = [*notes, *_inexpressible(fmt, plan)]
    if "kv_select" in trace.meta:  # workload knobs (memsim.workloads.kv_budget) no framework has
        notes.append(f"{fmt} has no setting for inference.kv_budget / kv_prefetch (StreamingLLM, "
                     "SnapKV, InfiniGen): the figures assume them, the config keeps the full cache")
    ran = read(fmt, text, system, trace, file=f"emitted {DEFAULT_NAMES[fmt]}")
    ran.notes = list(notes)
    return Emitted(fmt, text, ran, list(dict.fromkeys(notes)))


# Plan knobs of mechanisms from papers that none of the four frameworks has a setting for: the
# emitted config runs without them, and its figures (simulated from the file) say what that costs.
_PAPER_KNOBS = {
    "neuron_tier": "the neuron store of inference.sparsity (LLM in a flash)",
    "kv_head_groups": "head-wise KV streaming (HeadInfer)",
}


def _inexpressible(fmt: str, plan: Plan) -> list[str]:
    return [f"{fmt} has no setting for {what} (plan {key}: {getattr(plan, key)}): the config runs "
            "without it" for key, what in _PAPER_KNOBS.items() if getattr(plan, key) not in (None, 1)]


def read(fmt: str, text: str, system: System, trace: Trace, file: str) -> Plan:
    """The Plan a framework config runs on this system and workload (SpecError on a bad file)."""
    plan = FORMATS[check_format(fmt)].read(text, system, trace, file)
    plan.planner = PlannerInfo(name=f"{fmt} config", status="given")
    plan.workload, plan.fingerprint = trace.name, trace_fingerprint(trace)
    plan.check(set(system.tiers), file=file)
    return plan


def detect(path: str | Path, text: str) -> str | None:
    """Which framework wrote a file (None: a memsim plan, or unknown): by its contents, since
    users name their files freely."""
    if flexgen.MODULE in text or "--percent" in text:
        return "flexgen"
    if text.lstrip().startswith(("vllm ", "python")) or "vllm serve" in text:
        return "vllm"
    try:
        data = parse_mapping(text, str(path))
    except SpecError:  # not a mapping: no framework of ours
        return None
    if {"placement", "version", "planner"} & set(data):
        return None
    if deepspeed.KEYS & set(data):
        return "deepspeed"
    if {"device_map", "max_memory"} & set(data):
        return "accelerate"
    if vllm.known(data):
        return "vllm"
    return None


def load_plan(path: str | Path, system: System, trace: Trace) -> Plan:
    """A plan file: memsim's own (``memsim plan -o``) or a framework config users already run."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpecError("plan file not found", file=str(path)) from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the plan: {exc}", file=str(path)) from None
    fmt = detect(path, text)
    if fmt is None:
        return Plan.load(path)
    return read(fmt, text, system, trace, file=str(path))


def write_config(report, fmt: str, path: str | Path) -> dict:
    """Emit a PlanReport's plan as ``fmt`` to ``path`` and simulate what the file runs.

    Returns the ``emit`` part of ``memsim plan --json``: ``format``, ``path``, ``usage``,
    ``notes`` (what the framework could not express), ``exact`` (the emitted config predicts
    the plan's own figures), and the emitted config's ``feasible``, ``step_time_s`` and
    ``tokens_per_s`` from the simulator."""
    from memsim.sim import simulate

    emitted = emit(fmt, report.system, report.trace, report.plan)
    Path(path).write_text(emitted.text)
    result = simulate(report.system, report.trace, emitted.plan)
    ours, theirs = report.result, result
    exact = bool(theirs.feasible) == bool(ours.feasible) and (
        not theirs.feasible
        or abs(theirs.step_time_s - ours.step_time_s) <= 1e-9 * max(ours.step_time_s, 1e-12))
    return {
        "format": fmt,
        "path": str(path),
        "usage": FORMATS[fmt].USAGE.format(path=path),
        "notes": emitted.notes,
        "exact": exact,
        "feasible": bool(theirs.feasible),
        "step_time_s": theirs.step_time_s if theirs.feasible else None,
        "tokens_per_s": theirs.tokens_per_s if theirs.feasible else None,
        "peak_bytes": dict(theirs.peak_bytes),
        "source": "simulated",
    }
