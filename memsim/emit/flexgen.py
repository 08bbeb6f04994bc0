"""FlexGen's command-line policy, both ways.

FlexGen (FMInference/FlexGen ``flexgen/flex_opt.py``, ``add_parser_arguments``) takes its policy
as flags: ``--percent`` six integers (weights on GPU, weights on CPU, KV cache on GPU, KV cache on
CPU, activations on GPU, activations on CPU; each remainder goes to the disk folder
``--offload-dir``, default ``~/flexgen_offload_dir``), ``--gpu-batch-size`` (default 4) and
``--num-gpu-batches`` (default 1), ``--cpu-cache-compute`` (attention on the CPU next to its KV
cache), ``--pin-weight`` (default true: CPU weights in pinned memory), ``--overlap`` (default
true: the next layer's loads overlap this layer's compute), ``--compress-weight`` and
``--compress-cache`` (4-bit group-wise quantisation). ``--percent`` is memsim's placement with
the same meaning (each layer split alike), so a FlexGen policy maps onto a Plan field for field;
only percentages are whole numbers there.
"""

from __future__ import annotations

import shlex

from memsim.contracts.plan import Plan
from memsim.emit.common import collapse, hub_id, need, split_of
from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.workloads.trace import Trace

MODULE = "flexgen.flex_opt"
DEFAULT_OFFLOAD_DIR = "~/flexgen_offload_dir"
USAGE = "bash {path} (the file is FlexGen's command line)"
FLAGS_WITH_VALUE = {"--model", "--path", "--offload-dir", "--prompt-len", "--gen-len", "--gpu-batch-size",
                    "--num-gpu-batches", "--pin-weight", "--overlap", "--sep-layer", "--percent",
                    "--cut-gen-len", "--debug-mode", "--log-file", "--verbose", "--attn-sparsity"}
SWITCHES = {"--cpu-cache-compute", "--compress-weight", "--compress-cache", "--no-log"}


def percents(devices: dict[str, float]) -> tuple[int, int]:
    """GPU and CPU whole percentages of a split (largest remainder, so the three sum to 100)."""
    exact = {d: 100 * devices.get(d, 0.0) for d in ("gpu", "cpu", "disk")}
    whole = {d: int(v) for d, v in exact.items()}
    for d in sorted(exact, key=lambda d: (whole[d] - exact[d], d))[: 100 - sum(whole.values())]:
        whole[d] += 1
    return whole["gpu"], whole["cpu"]


def emit(system: System, trace: Trace, plan: Plan) -> tuple[str, list[str]]:
    need(trace, ("inference",), "FlexGen", "it runs offline batched generation: use a workload with "
         "an inference section")
    family_note = _model(trace)
    notes: list[str] = [family_note] if family_note else []
    fast = system.fast_tier
    shares = {cls: collapse(system, plan.home(cls, fast), cls, notes, "FlexGen")
              for cls in ("weight", "kv", "activation")}
    pct = [p for cls in ("weight", "kv", "activation") for p in percents(shares[cls])]
    rounded = any(abs(100 * shares[c][d] - p) > 1e-6 for c, pair in
                  zip(("weight", "kv", "activation"), zip(pct[::2], pct[1::2], strict=True), strict=True)
                  for d, p in zip(("gpu", "cpu"), pair, strict=True))
    if rounded:
        notes.append("FlexGen takes whole percentages: the placement was rounded to --percent "
                     + " ".join(map(str, pct)))
    batch = int(trace.meta.get("batch_size") or 1)
    gbs = plan.gpu_batch_size or batch
    ngb = plan.num_gpu_batches or max(1, batch // gbs)
    if plan.prefetch_depth > 1:
        notes.append(f"FlexGen overlaps one layer ahead (--overlap); the plan's prefetch depth "
                     f"{plan.prefetch_depth} was emitted as 1")
    if plan.activations != "keep" or plan.layer_policy:
        notes.append("activation recompute/offload is a training decision; FlexGen ignores it")
    kv_bits = int(trace.meta.get("kv_bits") or 16)
    if kv_bits not in (16, 4):
        raise SpecError(f"FlexGen compresses the KV cache to 4 bits only (--compress-cache); the "
                        f"workload has kv_bits {kv_bits}: set inference.kv_bits to 4 or 16", key="--emit")
    args = ["python", "-m", MODULE, "--model", hub_id(trace) or str(trace.meta.get("model")),
            "--percent", *map(str, pct), "--gpu-batch-size", str(gbs), "--num-gpu-batches", str(ngb),
            "--prompt-len", str(trace.meta.get("prompt_len")), "--gen-len", str(trace.meta.get("gen_len"))]
    if plan.cpu_attention:
        args.append("--cpu-cache-compute")
    if kv_bits == 4:
        args.append("--compress-cache")
    if not plan.pinned:
        args += ["--pin-weight", "false"]
    if plan.prefetch_depth == 0:
        args += ["--overlap", "false"]
    if any(100 - pct[i] - pct[i + 1] for i in (0, 2, 4)):
        args += ["--offload-dir", DEFAULT_OFFLOAD_DIR]
    return shlex.join(args) + "\n", notes


def _model(trace: Trace) -> str | None:
    from memsim.workloads.models import load_model

    try:
        family = load_model(str(trace.meta.get("model"))).family
    except SpecError:
        return None
    if family != "opt":
        return (f"FlexGen's {MODULE} runs OPT models; {trace.meta.get('model')} ({family}) needs a "
                "fork with its family (e.g. a flex_llama module)")
    return None


def parse_args(text: str, file: str) -> dict[str, object]:
    """The flags of a FlexGen command line (``python -m flexgen.flex_opt ...``), by name."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError as exc:
        raise SpecError(f"cannot split the command line: {exc}", file=file) from None
    out: dict[str, object] = {}
    i = 0
    while i < len(words):
        word = words[i]
        flag, _, inline = word.partition("=")
        if flag == "--percent":
            values = words[i + 1: i + 7]
            if len(values) != 6 or not all(v.isdigit() for v in values):
                raise SpecError("--percent takes six whole numbers: w_gpu w_cpu c_gpu c_cpu a_gpu a_cpu",
                                file=file, key="--percent")
            out[flag] = [int(v) for v in values]
            i += 7
            continue
        if flag in SWITCHES:
            out[flag] = True
        elif flag in FLAGS_WITH_VALUE:
            if inline:
                out[flag] = inline
            elif i + 1 < len(words) and not words[i + 1].startswith("--"):
                out[flag] = words[i + 1]
                i += 1
            else:  # str2bool flags given bare mean true (nargs="?", const=True)
                out[flag] = "true"
        i += 1
    return out


def _bool(value: object, file: str, key: str) -> bool:
    text = str(value).lower()
    if text in ("1", "true", "yes", "t", "y"):
        return True
    if text in ("0", "false", "no", "f", "n"):
        return False
    raise SpecError(f"expected true or false, got {value!r}", file=file, key=key)


def _int(args: dict, flag: str, default: int, file: str) -> int:
    value = args.get(flag, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SpecError(f"expected a whole number, got {value!r}", file=file, key=flag) from None


def read(text: str, system: System, trace: Trace, file: str) -> Plan:
    """The Plan a FlexGen command line runs, checked against the workload it is simulated on."""
    need(trace, ("inference",), "FlexGen", "it runs offline batched generation")
    args = parse_args(text, file)
    pct = args.get("--percent", [100, 0, 100, 0, 100, 0])
    for i, cls in zip((0, 2, 4), ("weight", "KV cache", "activation"), strict=True):
        if pct[i] + pct[i + 1] > 100:
            raise SpecError(f"{cls} percentages {pct[i]} + {pct[i + 1]} exceed 100", file=file,
                            key="--percent")
    placement = {}
    for i, cls in zip((0, 2, 4), ("weight", "kv", "activation"), strict=True):
        devices = {"gpu": pct[i] / 100, "cpu": pct[i + 1] / 100, "disk": (100 - pct[i] - pct[i + 1]) / 100}
        split = split_of(system, devices, file, "--percent")
        if split:
            placement[cls] = split
    gbs, ngb = _int(args, "--gpu-batch-size", 4, file), _int(args, "--num-gpu-batches", 1, file)
    _check_job(args, trace, gbs * ngb, file)
    return Plan(
        placement=placement,
        gpu_batch_size=gbs,
        num_gpu_batches=ngb,
        cpu_attention=bool(args.get("--cpu-cache-compute")),
        pinned=_bool(args.get("--pin-weight", "true"), file, "--pin-weight"),
        prefetch_depth=1 if _bool(args.get("--overlap", "true"), file, "--overlap") else 0,
    )


def _check_job(args: dict, trace: Trace, batch: int, file: str) -> None:
    """The command line must describe the workload's job: same batch, lengths, KV compression."""
    meta = trace.meta
    want = {"--prompt-len": meta.get("prompt_len"), "--gen-len": meta.get("gen_len")}
    for flag, value in want.items():
        if flag in args and _int(args, flag, 0, file) != int(value):
            raise SpecError(f"{flag} {args[flag]} differs from the workload's {value}: make them agree "
                            f"(--set inference.{flag[2:].replace('-', '_')}={args[flag]})",
                            file=file, key=flag)
    if batch != int(meta.get("batch_size") or 1):
        raise SpecError(f"--gpu-batch-size × --num-gpu-batches = {batch}, but the workload's batch is "
                        f"{meta.get('batch_size')}: make them agree (--set inference.batch_size={batch})",
                        file=file, key="--gpu-batch-size")
    compressed = bool(args.get("--compress-cache"))
    if compressed != (int(meta.get("kv_bits") or 16) == 4):
        raise SpecError(f"--compress-cache is {'on' if compressed else 'off'}, the workload's kv_bits "
                        f"{meta.get('kv_bits')}: make them agree (--set inference.kv_bits="
                        f"{4 if compressed else 16})", file=file, key="--compress-cache")
    model = args.get("--model")
    ours = {str(meta.get("model", "")).lower(), (hub_id(trace) or "").lower()}
    if model and str(model).lower() not in ours and str(model).lower().split("/")[-1] not in ours:
        raise SpecError(f"--model {model} is not the workload's model {meta.get('model')}", file=file,
                        key="--model")
