"""vLLM engine arguments, both ways: a YAML for ``vllm serve --config`` (keys are the long flag
names), or a ``vllm serve MODEL --flag value ...`` command line as input.

Names and defaults from vLLM's ``EngineArgs`` (vllm-project/vllm ``vllm/engine/arg_utils.py``)
and its docs (``serving/engine_args``, ``configuration/conserving_memory``): ``cpu-offload-gb``
(default 0: GiB of weights per GPU kept in host memory and streamed to the GPU in every forward;
vLLM pins that memory and copies each offloaded module's weights right before it runs, no
prefetch), ``swap-space`` (default 4: GiB of host memory per GPU for preempted sequences' KV
blocks), ``preemption-mode`` (recompute | swap; vLLM's V0 scheduler), ``gpu-memory-utilization``
(0.9), ``kv-cache-dtype`` (auto | fp8), ``max-num-seqs``, ``max-num-batched-tokens``,
``block-size`` (16), ``dtype``.

What vLLM cannot say, emitted as the nearest config with a note: weights on disk (vLLM offloads
to host memory only), a KV cache homed off the GPU (its pool is GPU memory; host memory holds
only the swap space), a prefetch of offloaded weights, and FlexGen's batch blocks.
"""

from __future__ import annotations

import shlex

import yaml

from memsim.contracts.plan import Plan, ServingPolicy
from memsim.emit.common import GIB, collapse, hub_id, need, parse_mapping, places, split_of, weight_bytes
from memsim.errors import SpecError
from memsim.hardware.spec import System
from memsim.workloads.trace import Trace

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
READ_DTYPES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32"}
KNOWN = ("model", "dtype", "kv-cache-dtype", "gpu-memory-utilization", "cpu-offload-gb", "swap-space",
         "preemption-mode", "max-num-seqs", "max-num-batched-tokens", "block-size", "enable-prefix-caching")
SWAP_DEFAULT_GIB = 4.0  # EngineArgs.swap_space
USAGE = "vllm serve --config {path}"


def known(data: dict) -> bool:
    return any(_norm(k) in KNOWN for k in data)


def _norm(key: object) -> str:
    return str(key).lstrip("-").replace("_", "-")


def emit(system: System, trace: Trace, plan: Plan) -> tuple[str, list[str]]:
    need(trace, ("serving", "inference"), "vLLM", "it serves requests: DeepSpeed or Accelerate for training")
    notes: list[str] = []
    meta, fast = trace.meta, system.fast_tier
    kv_bits = int(meta.get("kv_bits") or 16)
    if kv_bits not in (16, 8):
        raise SpecError(f"vLLM's KV cache is auto (the model dtype) or fp8; the workload has kv_bits "
                        f"{kv_bits}: set {trace.kind}.kv_bits to 8 or 16", key="--emit")
    model = hub_id(trace)
    if model is None:
        notes.append(f"no HF hub id known for {meta.get('model')}: replace model with your checkpoint")
    args: dict = {"model": model or str(meta.get("model")),
                  "dtype": DTYPES.get(str(meta.get("dtype")), "auto"),
                  "kv-cache-dtype": "fp8" if kv_bits == 8 else "auto"}
    weights = collapse(system, plan.home("weight", fast), "weight", notes, "vLLM")
    if weights["disk"] > 0:
        notes.append(f"vLLM offloads weights to host memory only: the plan's {weights['disk']:.0%} on disk "
                     "was emitted as host memory")
    host = weights["cpu"] + weights["disk"]
    if host > 0:
        args["cpu-offload-gb"] = round(host * weight_bytes(trace)["total"] / GIB, 3)
        if plan.prefetch_depth:
            notes.append("vLLM copies offloaded weights when their module runs (no prefetch): emitted "
                         "with prefetch depth 0")
        if not plan.pinned:
            notes.append("vLLM pins the host memory of offloaded weights")
    if set(plan.home("kv", fast)) != {fast}:
        notes.append("vLLM's KV pool lives in GPU memory: the plan's KV cache off the GPU was emitted on "
                     "the GPU (host memory holds only the swap space)")
    if (plan.num_gpu_batches or 1) > 1 or plan.cpu_attention:
        notes.append("FlexGen's batch blocks and CPU attention have no vLLM equivalent")
    if trace.kind == "serving":
        sched = meta.get("scheduler") or {}
        args["gpu-memory-utilization"] = float(sched.get("gpu_memory_utilization", 0.9))
        policy = plan.serving or ServingPolicy()
        args.update({"max-num-seqs": policy.max_num_seqs,
                     "max-num-batched-tokens": policy.max_num_batched_tokens,
                     "block-size": policy.block_size, "preemption-mode": policy.preempt})
        if policy.preempt == "swap":
            args["swap-space"] = policy.swap_bytes / GIB
        if meta.get("kv_cache"):
            args["enable-prefix-caching"] = bool(meta["kv_cache"].get("prefix_caching", True))
        swap = meta.get("swap") or {}
        if policy.preempt == "swap" and (swap.get("granularity", "block") != "block" or swap.get("overlap")
                                         or swap.get("reuse")):
            notes.append("serving.swap's block groups, overlap and reuse are FastSwitch's: vLLM swaps "
                         "block by block before each iteration")
        if policy.preempt == "swap" and swap.get("submit", "call") != "call":
            notes.append(f"serving.swap.submit {swap['submit']} has no vLLM engine arg: V0's swap "
                         "preemption issues one cudaMemcpyAsync per block, layer and K/V (its "
                         "KV-offloading connector batches them with cuMemcpyBatchAsync)")
        if meta.get("kv_budget"):
            notes.append("serving.kv_budget (StreamingLLM's sinks and window) has no vLLM engine arg: "
                         "vLLM keeps every token's KV")
    else:
        args["max-num-seqs"] = int(meta.get("batch_size") or 1)
        notes.append("vLLM batches continuously; memsim simulates the whole batch generated together")
    return yaml.safe_dump(args, sort_keys=False), notes


# -- reading ------------------------------------------------------------------------------------


def parse_args(text: str, file: str) -> dict:
    """Engine args from a ``vllm serve --config`` YAML or a ``vllm serve MODEL --flag v`` line."""
    stripped = text.lstrip()
    if not stripped.startswith(("vllm", "python", "--")):
        return {_norm(k): v for k, v in parse_mapping(text, file).items()}
    try:
        words = shlex.split(text, comments=True)
    except ValueError as exc:
        raise SpecError(f"cannot split the command line: {exc}", file=file) from None
    out: dict = {}
    if len(words) > 2 and words[:2] == ["vllm", "serve"] and not words[2].startswith("--"):
        out["model"] = words[2]
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            flag, eq, inline = word.partition("=")
            key = _norm(flag)
            if eq:
                out[key] = yaml.safe_load(inline)
            elif i + 1 < len(words) and not words[i + 1].startswith("--"):
                out[key] = yaml.safe_load(words[i + 1])
                i += 1
            else:
                out[key] = True
        i += 1
    return out


def read(text: str, system: System, trace: Trace, file: str) -> Plan:
    """The Plan vLLM runs with these engine args, checked against the workload."""
    need(trace, ("serving", "inference"), "vLLM", "it serves requests")
    args = parse_args(text, file)
    _check_job(args, trace, file)
    plan = Plan()
    offload = _number(args, "cpu-offload-gb", 0.0, file)
    if offload > 0:
        total = weight_bytes(trace)["total"]
        share = min(1.0, offload * GIB / total) if total else 0.0
        plan.placement["weight"] = split_of(system, {"gpu": 1 - share, "cpu": share}, file, "cpu-offload-gb")
        plan.prefetch_depth, plan.pinned = 0, True
    if trace.kind == "serving":
        sched = trace.meta.get("scheduler") or {}
        policy = ServingPolicy()
        for key in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            value = args.get(key.replace("_", "-"), sched.get(key, getattr(policy, key)))
            setattr(policy, key, int(_number({key: value}, key, 0, file)))
        preempt = str(args.get("preemption-mode", sched.get("preempt", "recompute")))
        if preempt not in ("recompute", "swap"):
            raise SpecError(f"expected recompute or swap, got {preempt!r}", file=file, key="preemption-mode")
        policy.preempt = preempt
        if preempt == "swap":
            policy.swap_tier = places(system).tier("cpu", file, "preemption-mode")
            policy.swap_bytes = int(_number(args, "swap-space", SWAP_DEFAULT_GIB, file) * GIB)
        plan.serving = policy
    return plan


def _number(args: dict, key: str, default: float, file: str) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SpecError(f"expected a number >= 0, got {value!r}", file=file, key=key)
    return float(value)


def _check_job(args: dict, trace: Trace, file: str) -> None:
    """Engine args that describe the workload rather than the plan must match it (exit 2)."""
    meta, kind = trace.meta, trace.kind
    kv = str(args.get("kv-cache-dtype", "auto"))
    if kv != "auto" and not kv.startswith("fp8"):
        raise SpecError(f"expected auto or fp8*, got {kv!r}", file=file, key="kv-cache-dtype")
    bits = 8 if kv.startswith("fp8") else 16
    if bits != int(meta.get("kv_bits") or 16):
        raise SpecError(f"kv-cache-dtype {kv} means {bits}-bit KV, the workload has {meta.get('kv_bits')}: "
                        f"make them agree (--set {kind}.kv_bits={bits})", file=file, key="kv-cache-dtype")
    dtype = str(args.get("dtype", "auto"))
    if dtype != "auto" and READ_DTYPES.get(dtype) != meta.get("dtype"):
        raise SpecError(f"dtype {dtype} differs from the workload's {meta.get('dtype')}: make them agree "
                        f"(--set {kind}.dtype={READ_DTYPES.get(dtype, dtype)})", file=file, key="dtype")
    if kind == "serving" and "gpu-memory-utilization" in args:
        ours = float((meta.get("scheduler") or {}).get("gpu_memory_utilization", 0.9))
        theirs = _number(args, "gpu-memory-utilization", 0.9, file)
        if abs(theirs - ours) > 1e-9:
            raise SpecError(f"gpu-memory-utilization {theirs} differs from the workload's {ours}: make them "
                            f"agree (--set serving.scheduler.gpu_memory_utilization={theirs})", file=file,
                            key="gpu-memory-utilization")
    if kind == "inference" and "max-num-seqs" in args:
        seqs, batch = int(_number(args, "max-num-seqs", 0, file)), int(meta.get("batch_size") or 1)
        if seqs < batch:
            raise SpecError(f"max-num-seqs {seqs} is below the workload's batch {batch}: vLLM would run "
                            f"it in waves (--set inference.batch_size={seqs})", file=file, key="max-num-seqs")
