"""How tensor, instance and copy-job names are spelled: built and parsed here, nowhere else.

A Trace names a layer's tensors ``L{i}.<rest>`` (its templates ``L{layer}.<rest>``, expanded per
layer); gradient accumulation gives each micro-batch's workspace ``<name>.mb{k}``. The simulator's
Program then names *instances* of a trace tensor: ``<name>#{j}`` for GPU batch ``j`` (FlexGen's
block schedule; ``#shared`` for a scratch buffer every batch reuses), ``<name>@r`` for a layer
tensor a recomputed forward re-produces, ``<name>@r{i}`` for a non-layer activation local to
layer ``i``'s recompute, ``<name>@mb{k}`` for micro-batch ``k``'s own activations. The replay
names its copies ``<tensor>:<src>-><dst>``. Trace and tool authors keep ``#`` and ``@`` out of
their own names (workloads/torch_trace.py does).
"""

from __future__ import annotations

import re

LAYER = "{layer}"  # the placeholder a per-layer template carries where the layer number goes
BATCH = "#"  # GPU-batch instance suffix
RECOMPUTE = "@r"  # recompute instance suffix
MICRO_BATCH = ".mb"  # gradient-accumulation micro-batch suffix
COPY_TO = "->"  # between a copy job's source and destination tier
_CONCRETE_LAYER = re.compile(r"L\d+\.")


def layer_name(layer: int | str, rest: str) -> str:
    """``L{layer}.<rest>``: layer ``layer``'s tensor (``LAYER`` for the template)."""
    return f"L{layer}.{rest}"


def template(rest: str) -> str:
    """The per-layer template name of ``rest``: ``L{layer}.<rest>``."""
    return layer_name(LAYER, rest)


def split_layer(name: str) -> tuple[int | None, str]:
    """``L12.attn.out`` → ``(12, "attn.out")``; a name outside any layer → ``(None, name)``."""
    head, _, rest = name.partition(".")
    if head[:1] == "L" and head[1:].isdigit():
        return int(head[1:]), rest
    return None, name


def is_concrete_layer_name(name: str) -> bool:
    """Whether ``name`` starts ``L{i}.`` with a layer number (not a template's ``L{layer}.``)."""
    return _CONCRETE_LAYER.match(name) is not None


def layer_of(name: str) -> int | None:
    """The layer a concrete name belongs to, or None."""
    return split_layer(name)[0]


def is_layer_tensor(name: str, rest: str) -> bool:
    """Whether ``name`` is some layer's ``L{i}.<rest>`` (a ``#j`` instance suffix ignored)."""
    layer, tail = split_layer(name.split(BATCH, 1)[0])
    return layer is not None and tail == rest


def batch_instance(name: str, batch: int | str) -> str:
    """GPU batch ``batch``'s instance of ``name`` (``"shared"``: the buffer all batches reuse)."""
    return f"{name}{BATCH}{batch}"


def recompute_instance(name: str, layer: int | str | None = None) -> str:
    """A recompute's instance: ``<name>@r``, or ``<name>@r{layer}`` local to that layer's."""
    return name + RECOMPUTE if layer is None else f"{name}{RECOMPUTE}{layer}"


def is_recomputed(name: str) -> bool:
    return RECOMPUTE in name


def is_batch_instance(name: str) -> bool:
    return BATCH in name


def strip_recompute(name: str) -> str:
    """``<name>@r`` (an op or tensor a recompute re-runs) → ``<name>``."""
    return name.split("@", 1)[0]


def base_name(name: str) -> str:
    """An instance name → the trace's concrete name (drop the ``#j`` and ``@r`` suffixes)."""
    if BATCH not in name and "@" not in name:
        return name
    return name.split(BATCH, 1)[0].split("@", 1)[0]


def micro_batch(name: str, k: int) -> str:
    """Micro-batch ``k``'s copy of a workspace tensor."""
    return f"{name}{MICRO_BATCH}{k}"


def micro_batch_instance(name: str, k: int) -> str:
    """The simulator's instance of an activation or workspace for micro-batch ``k`` >= 1."""
    return f"{name}@mb{k}"


def is_micro_batch(name: str) -> bool:
    return MICRO_BATCH in name


def copy_job(tensor: str, src: str, dst: str) -> str:
    """The replay's name for copying ``tensor`` from tier ``src`` to tier ``dst``."""
    return f"{tensor}:{src}{COPY_TO}{dst}"


def copy_job_tensor(job: str) -> str:
    return job.split(":", 1)[0]


def copy_job_destination(job: str) -> str:
    return job.rsplit(COPY_TO, 1)[1]
