"""Online serving → Trace: requests (arrival, prompt and output length) plus per-token costs.

The batching itself (continuous batching over a paged KV cache, preemption by swap or recompute)
happens in the simulator; the trace carries what it needs: ``requests``, ``meta["token_costs"]``
(TokenCosts) and ``meta["scheduler"]`` (the vLLM-style knobs, swap space in bytes).

Requests come from a seeded ``numpy.random.Generator`` (PCG64, platform-independent): Poisson
arrivals (exponential gaps at ``rate_per_s``) and lengths from the given distributions — a
lognormal with the given *mean* in tokens has μ = ln(mean) − σ²/2 — or from a CSV of real
requests. Blocks hold one reference decode iteration: all layers of a batch of ``max_num_seqs``
sequences at the mean context of a decoding request (mean prompt + mean output / 2).
``L{layer}.kv`` is the KV working set of that batch: ``max_num_seqs`` sequences of the mean
total length, each rounded up to whole blocks of ``block_size`` tokens.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from memsim.errors import SpecError
from memsim.workloads import accounting as acc
from memsim.workloads.builder import L, TraceBuilder
from memsim.workloads.imports import relative
from memsim.workloads.inference import (
    act_bytes,
    declare_model,
    head_ops,
    kv_dtype_name,
    layer_ops,
    token_costs,
)
from memsim.workloads.kernels import layer_kernels
from memsim.workloads.models import Architecture
from memsim.workloads.parallel_serving import serving_layout, shard_costs
from memsim.workloads.spec import Lengths, Serving, Workload
from memsim.workloads.trace import Requests, Trace

GIB = 2**30
CSV_COLUMNS = {
    "arrival_s": ("arrival_s", "arrival", "arrived_at", "timestamp", "time"),
    "prompt_len": ("prompt_len", "prompt_tokens", "num_prefill_tokens", "contexttokens", "input_tokens"),
    "output_len": ("output_len", "output_tokens", "num_decode_tokens", "generatedtokens"),
}


def draw_lengths(spec: Lengths, n: int, rng: np.random.Generator, limit: int) -> np.ndarray:
    """``n`` token lengths ≥ 1 (and ≤ the model's context ``limit``)."""
    if spec.dist == "fixed":
        out = np.full(n, spec.value, dtype=np.int64)
    elif spec.dist == "uniform":
        out = rng.integers(spec.low, spec.high + 1, size=n, dtype=np.int64)
    else:
        mu = math.log(spec.mean) - spec.sigma**2 / 2
        out = np.rint(rng.lognormal(mu, spec.sigma, size=n)).astype(np.int64)
        out = np.clip(out, spec.low or 1, spec.high or limit)
    return np.clip(out, 1, limit)


def poisson_requests(sv: Serving, limit: int, file: str = "workload",
                     notes: list[str] | None = None) -> Requests:
    """Seeded Poisson arrivals. A request's prompt + output must fit the model's context ``limit``
    (vLLM refuses longer ones): bounds that exceed it exit 2; lognormal tails beyond it are cut to
    fit, and ``notes`` says how many."""
    _check_bounds(sv, limit, file)
    rng = np.random.Generator(np.random.PCG64(sv.arrival.seed))
    gaps = rng.exponential(1.0 / sv.arrival.rate_per_s, size=sv.num_requests)
    arrival = np.round(np.cumsum(gaps), 6)
    prompt = draw_lengths(sv.prompt_len, sv.num_requests, rng, limit)
    output = draw_lengths(sv.output_len, sv.num_requests, rng, limit)
    over = prompt + output > limit
    if over.any():
        prompt = np.minimum(prompt, limit - 1)
        output = np.minimum(output, limit - prompt)
        if notes is not None:
            notes.append(f"{int(over.sum())} of {len(over)} drawn requests had prompt + output above the "
                         f"model's context length ({limit:,} tokens): cut to fit it (set serving.prompt_len"
                         ".high / output_len.high to bound the lognormal)")
    return Requests(arrival.tolist(), prompt.tolist(), output.tolist())


def _upper(spec: Lengths) -> tuple[int | None, str]:
    """The largest length a distribution can give, and the key that sets it (None: unbounded)."""
    if spec.dist == "fixed":
        return spec.value, "value"
    return spec.high, "high"


def _check_bounds(sv: Serving, limit: int, file: str) -> None:
    prompt, pkey = _upper(sv.prompt_len)
    output, okey = _upper(sv.output_len)
    for name, top, key in (("prompt_len", prompt, pkey), ("output_len", output, okey)):
        if top is not None and top > limit:
            raise SpecError(f"{top:,} tokens is beyond the model's context length ({limit:,}, "
                            "max_position_embeddings)", file=file, key=f"serving.{name}.{key}")
    if prompt is not None and output is not None and sv.prompt_len.dist != "lognormal" \
            and sv.output_len.dist != "lognormal" and prompt + output > limit:
        raise SpecError(f"a prompt of up to {prompt:,} plus an output of up to {output:,} tokens is beyond "
                        f"the model's context length ({limit:,}); vLLM refuses such requests",
                        file=file, key=f"serving.output_len.{okey}")


def check_context(requests: Requests, limit: int, file: str, key: str) -> None:
    """Replayed requests longer than the model's context cannot be served: exit 2 naming the first."""
    total = np.asarray(requests.prompt_len, dtype=np.int64) + np.asarray(requests.output_len, dtype=np.int64)
    over = np.flatnonzero(total > limit)
    if over.size:
        i = int(over[0])
        raise SpecError(f"{over.size} of {len(total)} requests need more than the model's context length "
                        f"({limit:,} tokens); the first, request {i + 1} in arrival order, has "
                        f"{requests.prompt_len[i]:,} + {requests.output_len[i]:,}: drop them from the trace "
                        "or use a model with a longer context", file=file, key=key)


def csv_requests(path: Path, limit_rows: int, file: str) -> Requests:
    """Requests from a CSV with a header naming arrival, prompt and output columns (memsim's names,
    Vidur's or the Azure LLM inference trace's); absolute timestamps become seconds from the first."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = {name.strip().lower(): name for name in reader.fieldnames or []}
            cols = {}
            for key, aliases in CSV_COLUMNS.items():
                found = next((header[a] for a in aliases if a in header), None)
                if found is None:
                    raise SpecError(f"CSV has no {key} column (accepted: {', '.join(aliases)}); header: "
                                    f"{', '.join(header.values())}", file=str(path))
                cols[key] = found
            rows = [row for _, row in zip(range(limit_rows), reader, strict=False)]
    except FileNotFoundError:
        raise SpecError(f"arrival CSV {str(path)!r} not found", file=file,
                        key="serving.arrival.csv") from None
    if not rows:
        raise SpecError("CSV has no requests", file=str(path))
    arrival = [_seconds(row[cols["arrival_s"]], path, i) for i, row in enumerate(rows)]
    start = min(arrival) if isinstance(arrival[0], float) and arrival[0] > 1e6 else 0.0
    try:
        prompt = [int(float(row[cols["prompt_len"]])) for row in rows]
        output = [int(float(row[cols["output_len"]])) for row in rows]
    except ValueError as exc:
        raise SpecError(f"non-numeric length: {exc}", file=str(path)) from None
    for key, lengths in (("prompt_len", prompt), ("output_len", output)):
        bad = next((i for i, n in enumerate(lengths) if n < 1), None)
        if bad is not None:  # a zero or negative length is a broken log, not a 1-token request
            raise SpecError(f"line {bad + 2}: {cols[key]} is {lengths[bad]}; every request needs at "
                            "least 1 token", file=str(path), key=cols[key])
    order = sorted(range(len(rows)), key=lambda i: (arrival[i], i))
    return Requests([round(arrival[i] - start, 6) for i in order], [prompt[i] for i in order],
                    [output[i] for i in order])


JSONL_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


def jsonl_requests(path: Path, limit_rows: int, file: str) -> Requests:
    """Requests from Mooncake's trace format (github.com/kvcache-ai/Mooncake, FAST'25 traces): one
    JSON object a line, ``timestamp`` in ms, ``input_length``, ``output_length`` and ``hash_ids``,
    the prompt's 512-token blocks named by prefix-chained hashes (equal ids = equal prefix); a
    ``.gz`` file is read through gzip."""
    rows: list[tuple[float, int, int, list[int]]] = []
    try:
        with (gzip.open(path, "rt") if path.suffix == ".gz" else path.open()) as handle:
            for line_no, line in enumerate(handle, 1):
                if len(rows) >= limit_rows:
                    break
                if not line.strip():
                    continue
                rows.append(_jsonl_row(line, line_no, str(path)))
    except FileNotFoundError:
        raise SpecError(f"arrival JSONL {str(path)!r} not found", file=file,
                        key="serving.arrival.jsonl") from None
    if not rows:
        raise SpecError("JSONL has no requests", file=str(path))
    order = sorted(range(len(rows)), key=lambda i: (rows[i][0], i))
    start = rows[order[0]][0] if rows[order[0]][0] > 1e6 else 0.0  # absolute epoch → from the first
    return Requests([round(rows[i][0] - start, 6) for i in order], [rows[i][1] for i in order],
                    [rows[i][2] for i in order], [rows[i][3] for i in order])


def _jsonl_row(line: str, line_no: int, file: str) -> tuple[float, int, int, list[int]]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SpecError(f"line {line_no}: not JSON ({exc.msg})", file=file) from None
    if not isinstance(obj, dict):
        raise SpecError(f"line {line_no}: expected a JSON object", file=file)
    for key in JSONL_KEYS[:3]:
        if key not in obj:
            raise SpecError(f"line {line_no}: no {key} (each line needs {', '.join(JSONL_KEYS)})",
                            file=file, key=key)
    t, p, o = obj["timestamp"], obj["input_length"], obj["output_length"]
    if isinstance(t, bool) or not isinstance(t, int | float) or t < 0:
        raise SpecError(f"line {line_no}: timestamp {t!r} is not milliseconds ≥ 0", file=file,
                        key="timestamp")
    for key, n in (("input_length", p), ("output_length", o)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(f"line {line_no}: {key} {n!r} is not a whole number ≥ 1", file=file,
                            key=key)
    hashes = obj.get("hash_ids", [])
    if not isinstance(hashes, list) or not all(isinstance(h, int) and not isinstance(h, bool)
                                               for h in hashes):
        raise SpecError(f"line {line_no}: hash_ids must be a list of integers", file=file,
                        key="hash_ids")
    return t / 1000.0, p, o, hashes


def _seconds(text: str, path: Path, row: int) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import datetime
    try:
        return datetime.fromisoformat(text.strip()[:26]).timestamp()
    except ValueError:
        raise SpecError(f"row {row + 2}: arrival {text!r} is neither seconds nor an ISO timestamp",
                        file=str(path)) from None


def build_serving(w: Workload, arch: Architecture) -> Trace:
    sv: Serving = w.serving
    e, dt = acc.DTYPE_BYTES[sv.dtype], sv.dtype
    src = Path(w._source) if w._source else Path("workload.yaml")
    notes: list[str] = []
    if sv.arrival.csv:
        path = relative(sv.arrival.csv, src)
        requests = csv_requests(path, sv.num_requests, str(src))
        check_context(requests, arch.max_positions, str(path), "prompt_len")
    elif sv.arrival.jsonl:
        path = relative(sv.arrival.jsonl, src)
        requests = jsonl_requests(path, sv.num_requests, str(src))
        check_context(requests, arch.max_positions, str(path), "input_length")
    elif sv.arrival.process in ("conversation", "agentic"):
        from memsim.workloads.conversations import session_requests  # it imports draw_lengths
        block = sv.kv_cache.block_tokens if sv.kv_cache is not None else 512
        requests = session_requests(sv, arch.max_positions, block)
    else:
        requests = poisson_requests(sv, arch.max_positions, str(src), notes)
    prompt = np.asarray(requests.prompt_len, dtype=np.int64)
    output = np.asarray(requests.output_len, dtype=np.int64)
    sched = sv.scheduler
    batch = min(sched.max_num_seqs, len(requests))
    mean_len = float(np.mean(prompt + output))
    cap = sv.kv_budget.caps(1)[0] if sv.kv_budget is not None else None  # StreamingLLM serving
    if cap is not None:
        mean_len = min(mean_len, cap)
    per_seq_tokens = math.ceil(mean_len / sched.block_size) * sched.block_size

    tb = TraceBuilder(w.name, "serving", arch.layers)
    declare_model(tb, arch, dt, e)
    kv = acc.kv_bytes(arch, batch * per_seq_tokens, sv.kv_bits, layers=1, context=per_seq_tokens)
    tb.tensor(L + "kv", kv, "kv", kv_dtype_name(sv))
    tb.tensor("hidden", sched.max_num_batched_tokens * arch.hidden * e, "activation", dt)
    tb.tensor("act", act_bytes(arch, sched.max_num_batched_tokens, e), "activation", dt)
    tb.tensor("logits", batch * arch.vocab * 4, "activation", "fp32")
    kv_e = sv.kv_bits / 8
    ctx = float(np.mean(prompt)) + float(np.mean(output)) / 2
    if cap is not None:
        ctx = min(ctx, cap)
    kernels = layer_kernels(arch, batch, 1, ctx, e, e, kv_e=kv_e, dequant=True)
    kv_write = int(batch * arch.kv_token_elems * kv_e)
    tb.block("decode", layer_ops(kernels, "decode", kv_write, dt, experts=arch.is_moe), templated=True)
    tb.block("decode_head", head_ops(arch, batch, e, "decode", dt, "decode_"))

    costs = token_costs(arch, e, sv.kv_bits)
    layout = serving_layout(arch, sv.parallel.tensor, sv.parallel.pipeline, w._source)
    gpu_costs = shard_costs(arch, costs, layout, e, sv.kv_bits)
    # model FLOPs of serving every request: dense per token, attention over the full prompt
    # rectangle in prefill and over the growing context in decode (step t attends p + t + 1)
    p, o = prompt.astype(np.float64), output.astype(np.float64)
    ctx_sum = p * p + (o - 1) * (p + 1) + (o - 1) * o / 2
    flops = float(np.sum((p + o - 1) * costs.flops_per_token + ctx_sum * costs.attn_flops_per_token_ctx))
    meta = {
        "kind": "serving", "model": arch.name, "params": arch.params, "active_params": arch.active_params,
        "layers": arch.layers, "dtype": dt, "tokens_per_step": int(output.sum()), "flops_per_step": flops,
        "per_device_bytes": tb.per_device_bytes(), "data_parallel": 1, "num_requests": len(requests),
        "kv_bits": sv.kv_bits, "token_costs": asdict(gpu_costs),
        "parallel": {"tensor": layout.tensor, "pipeline": layout.pipeline, "gpus": layout.gpus},
        "scheduler": {"max_num_seqs": sched.max_num_seqs,
                      "max_num_batched_tokens": sched.max_num_batched_tokens,
                      "block_size": sched.block_size, "preempt": sched.preempt,
                      "swap_bytes": int(sched.swap_space * GIB),
                      "gpu_memory_utilization": sched.gpu_memory_utilization},
        "mean_prompt_len": float(np.mean(prompt)), "mean_output_len": float(np.mean(output)),
        "duration_s": float(requests.arrival_s[-1]),
    }
    if notes:
        meta["workload_notes"] = notes
    if sv.swap is not None:  # how swap preemption copies (memsim.sim.swap)
        meta["swap"] = sv.swap.model_dump()
    if sv.kv_budget is not None:  # tokens of KV a request keeps in the pool (StreamingLLM)
        meta["kv_budget"] = {**sv.kv_budget.model_dump(), "cap": sv.kv_budget.caps(1)[0]}
    if sched.nccl_record_streams:
        meta["scheduler"]["nccl_record_streams"] = True
    if sv.kv_cache is not None:
        meta["kv_cache"] = {"prefix_caching": sv.kv_cache.prefix_caching,
                            "eviction": sv.kv_cache.eviction, "block_tokens": sv.kv_cache.block_tokens,
                            "tiers": dict(sv.kv_cache.tiers or {}), "ttl_s": sv.kv_cache.ttl_s,
                            "prediction_error": sv.kv_cache.prediction_error,
                            "seed": sv.kv_cache.seed, "load": sv.kv_cache.load,
                            "chunk_tokens": sv.kv_cache.chunk_tokens}
    if sv.disaggregated is not None:
        from memsim.workloads.disaggregated import disaggregated_meta

        meta["disaggregated"] = disaggregated_meta(arch, costs, sv, e, w._source)
    if sv.slo is not None:
        meta["slo"] = sv.slo.model_dump()
        from memsim.workloads.slo_costs import costs_by_tensor  # one GPU's costs per TP degree

        meta["slo"]["costs_by_tensor"] = costs_by_tensor(arch, costs, sv, e, w._source)
    return tb.trace(meta, requests)
