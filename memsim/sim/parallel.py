"""A training step under a parallel layout, simulated one rank per distinct role.

Ranks that differ only by their tensor, context or data coordinate do the same work at the same
times, so one rank per pipeline stage role (first, middle, last; middle stages are identical)
stands for all of them: a 16,384-GPU step costs what one pipeline does.

Each role's micro-batch forward and backward run on three streams, event by event: compute
(kernels timed by the GPU roofline), collectives (:mod:`memsim.hardware.collectives`, routed on
NVLink inside a node and the network between nodes) and host copies (PCIe, for offloaded
optimizer states or activations). A collective either blocks the next kernel (TP, EP), runs
beside one (CP's ring beside attention), is prefetched a layer ahead (ZeRO-3 gathers) or trails
the backward (DP gradient reduction). The stages' pass times then drive the pipeline schedule
(:mod:`memsim.sim.pipeline`), whose event log gives the bubble and each stage's in-flight
micro-batches, hence its activation memory. The optimizer step and the ZeRO-1/2 parameter
gather close the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memsim import units
from memsim.contracts.plan import Plan
from memsim.contracts.result import OOM, Result
from memsim.hardware.collectives import collective_time
from memsim.hardware.overheads import reserved_lines, runtime_data
from memsim.hardware.spec import System
from memsim.sim.pipeline import simulate_pipeline
from memsim.sim.report import peak_flops
from memsim.workloads.parallel import Layout


def is_parallel(meta: dict) -> bool:
    """Whether a trace's layout goes beyond data parallelism (tensor, pipeline, context, expert)."""
    par = meta.get("parallel") or {}
    return bool(par.get("work")) and any(par.get(k, 1) > 1 for k in ("tensor", "pipeline", "context",
                                                                      "expert"))


def runs_here(trace, system: System) -> bool:
    """Whether this module simulates the training trace: its layout goes beyond data
    parallelism, or its data-parallel ranks span more than one node (the single-rank engine
    sees one node's GPUs; the network between nodes is this module's)."""
    if trace.kind != "training":
        return False
    if is_parallel(trace.meta):
        return True
    par = trace.meta.get("parallel") or {}
    per_node = system.gpu.count if system.gpu else 1
    return int(par.get("gpus", 1)) > per_node and getattr(trace, "workload_spec", None) is not None


def single_rank_block(result: Result, trace, system: System) -> dict | None:
    """The ``parallel`` keys for a step the single-rank engine ran (data parallelism within one
    node): every rank is alike, so rank 0 is the busiest; there is no pipeline bubble; the
    engine does not separate exposed collective time from other waits (``None``)."""
    if trace.kind != "training" or system.gpu is None:
        return None
    par = trace.meta.get("parallel") or {}
    peak = int(result.peak_bytes.get(system.gpu.memory, 0))
    return {"layout": {k: par.get(k, 1) for k in ("tensor", "pipeline", "data", "context", "expert")}
            | {"gpus": int(par.get("gpus", 1)), "nodes": 1},
            "per_gpu_peak_bytes": peak, "busiest_rank": {"rank": 0, "stage": 0, "bytes": peak},
            "bubble_fraction": 0.0, "exposed_comm_s": None, "mfu": result.mfu, "scheduled": False}


def layout_from(par: dict) -> Layout:
    return Layout(tensor=par["tensor"], pipeline=par["pipeline"], data=par["data"], context=par["context"],
                  expert=par["expert"], sequence_parallel=par["sequence_parallel"])


def group_shape(layout: Layout) -> dict[str, tuple[int, int]]:
    """(size, rank stride) of each communicator in Megatron's order (tensor, context, data, pipeline)."""
    t, c, d = layout.tensor, layout.context, layout.data
    return {"tensor": (t, 1), "context": (c, t), "data": (d * c, t), "expert": (layout.expert, t),
            "expert_data": (layout.expert_dp, t * layout.expert), "pipeline": (layout.pipeline, t * c * d)}


@dataclass
class PassRun:
    """One forward or backward pass of a micro-batch on one rank."""

    end: float
    compute_s: float
    recompute_s: float
    comm_s: float  # collective time on its stream (hidden or not)
    async_end: float  # when the trailing collectives (DP gradient reduction) are done
    events: int


@dataclass
class Costs:
    """Seconds of each op kind on this system (memoised per op: layers repeat)."""

    system: System
    layout: Layout
    dtype: str
    host_rate: float  # bytes/s of one GPU's host link, for offloaded bytes
    cache: dict = field(default_factory=dict)

    def __call__(self, op: dict) -> float:
        key = (op["unit"], op.get("kind") or op.get("coll"), op.get("phase"), op["bytes"], op.get("flops"),
               op.get("group"), op.get("rows"), op.get("shape"), op.get("calls", 1))
        d = self.cache.get(key)
        if d is None:
            if op["unit"] == "gpu":
                d = self.system.gpu.op_time(op["flops"], op["bytes"], self.dtype, op["kind"], op["phase"],
                                            op["rows"], op.get("shape"))
            elif op["unit"] == "copy":
                d = op["bytes"] / self.host_rate
            else:
                size, stride = group_shape(self.layout)[op["group"]]
                calls = int(op.get("calls", 1))  # one op issued as several collectives (per tensor)
                d = calls * collective_time(self.system, op["coll"], op["bytes"] / calls, size, stride)
            self.cache[key] = d
        return d


def run_pass(ops: list[dict], cost: Costs, start: float = 0.0) -> PassRun:
    """Schedule ``ops`` on the compute, collective and copy streams (see the module docstring)."""
    compute_free = start
    streams = {"comm": start, "copy": start}
    last_end = start  # end of the latest kernel
    wait_until = start  # the next kernel's earliest start (blocking collectives, prefetches)
    beside_until = None  # a collective running beside the next kernel: that kernel ends after it
    layer_anchor = start  # when the current layer's first kernel began
    fresh_layer = True
    compute = recompute = comm = 0.0
    async_end = start
    for op in ops:
        d = cost(op)
        unit = op["unit"]
        if unit == "gpu":
            s = max(compute_free, wait_until)
            e = s + d
            if beside_until is not None:
                e, beside_until = max(e, beside_until), None
            if fresh_layer:
                layer_anchor, fresh_layer = s, False
            compute_free = last_end = e
            if op.get("recompute"):
                recompute += d
            else:
                compute += d
            continue
        stream = "copy" if unit == "copy" else "comm"
        mode = op.get("mode", "sync")
        if mode == "prefetch":  # issued when the layer before it began
            fresh_layer = True
            s = max(streams[stream], layer_anchor)
        elif mode == "overlap":
            s = max(streams[stream], compute_free, wait_until)
        else:
            s = max(streams[stream], last_end)
        e = s + d
        streams[stream] = e
        if unit != "copy":
            comm += d
        if mode in ("sync", "prefetch"):
            wait_until = max(wait_until, e)
        elif mode == "overlap":
            beside_until = e
        else:  # async: only the end of the step waits
            async_end = max(async_end, e)
    end = max(compute_free, wait_until)
    return PassRun(end, compute, recompute, comm, max(async_end, end), len(ops))


def _recomputed(layer_fwd: list[dict]) -> list[dict]:
    """A layer's forward run again before its backward (checkpointing): kernels and their TP/EP
    collectives, no ZeRO gather (the backward's gather brings the weights)."""
    return [dict(o, recompute=True) for o in layer_fwd if o.get("mode") != "prefetch"]


def stage_passes(work: dict, stage: int, stages: int, plan: Plan, hbm: str, last_micro: bool,
                 ) -> tuple[list[dict], list[dict]]:
    """The forward and backward op lists of one micro-batch on ``stage``."""
    n = work["stages"][stage]["layers"]
    first = sum(st["layers"] for st in work["stages"][:stage])
    syncs = work["stages"][stage]["grad_sync"]
    fwd, bwd = [], []
    if stage == 0:
        fwd += work["embed_fwd"]
    if stage == stages - 1:
        bwd += work["head_bwd"]
    w_off = 1.0 - plan.home("weight", hbm).get(hbm, 0.0)
    fetch = [{"unit": "copy", "name": "weight_fetch", "bytes": w_off * work["layer_weight_bytes"],
              "mode": "prefetch"}] if w_off > 0 else []
    act_bytes = work["layer_activation_bytes"]
    reduce_now = last_micro or work.get("zero_stage", 0) >= 2
    overlap = work.get("overlap_grad_reduce", False)
    for j in range(n):
        layer = first + j
        policy = plan.policy(layer)
        fwd += fetch + work["layer_fwd"]
        if policy == "offload":
            fwd.append({"unit": "copy", "name": "act_offload", "bytes": act_bytes, "mode": "async"})
    if stage == stages - 1:
        fwd += work["head_fwd"]
    for j in reversed(range(n)):
        layer = first + j
        policy = plan.policy(layer)
        if policy == "recompute":
            bwd += _recomputed(work["layer_fwd"])
        elif policy == "offload":
            bwd.append({"unit": "copy", "name": "act_fetch", "bytes": act_bytes, "mode": "prefetch"})
        bwd += fetch + work["layer_bwd"]
        if reduce_now and overlap:  # bucketed behind each layer's backward
            bwd += syncs
    if stage == 0:
        bwd += work["embed_bwd"]
    if reduce_now and not overlap:  # one reduction of the stage's gradients after its backward
        bwd += [dict(s, bytes=s["bytes"] * n, mode="sync") for s in syncs]
    return fwd, bwd


def roles(stages: int) -> list[int]:
    """One stage per distinct role: the first, one middle stage, the last."""
    return sorted({0, min(1, stages - 1), stages - 1})


def role_of(stage: int, stages: int) -> int:
    return stage if stage in (0, stages - 1) else min(1, stages - 1)


def _host_rate(system: System, ranks: int) -> float:
    """One GPU's host link (its PCIe x16), shared when several ranks of a node use the same port."""
    view = system.device_view(ranks)
    gpu_mem = system.gpu.memory
    for link in view.links:
        if gpu_mem in link.ends:
            return link.bandwidth * link.efficiency
    return float("inf")


def simulate_parallel(system: System, trace, plan: Plan, timeline: bool = False) -> Result:
    """One training step of a parallel layout (``trace.meta["parallel"]`` with its ``work``);
    ``timeline``: the pipeline's event log as Chrome-trace spans, one track per stage."""
    if "work" not in trace.meta["parallel"]:
        from memsim.workloads.parallel_work import with_work

        with_work(trace, trace.workload_spec)
    meta = trace.meta
    par = meta["parallel"]
    work = par["work"]
    layout = layout_from(par)
    p, micro = layout.pipeline, work["microbatches"]
    gpus_per_node = system.gpu.count if system.gpu else 1
    view = system.device_view(min(layout.gpus, gpus_per_node))
    hbm = system.gpu.memory
    cost = Costs(system, layout, work["dtype"], _host_rate(system, min(layout.gpus, gpus_per_node)))
    fwd_s, bwd_s, last_runs, events = {}, {}, {}, 0
    for r in roles(p):
        f_ops, b_ops = stage_passes(work, r, p, plan, hbm, last_micro=False)
        _, b_last = stage_passes(work, r, p, plan, hbm, last_micro=True)
        f, b, bl = run_pass(f_ops, cost), run_pass(b_ops, cost), run_pass(b_last, cost)
        fwd_s[r], bwd_s[r], last_runs[r] = f, b, bl
        events += f.events + b.events + bl.events
    _size, stride = group_shape(layout)["pipeline"]
    p2p = 0.0
    if p > 1:
        p2p = collective_time(system, "send_recv", work["p2p_bytes"], 2, stride)
        if work.get("p2p_gather_bytes"):
            p2p += cost({"unit": "comm", "coll": "all_gather", "bytes": work["p2p_gather_bytes"],
                         "group": "tensor"})
    pipe = simulate_pipeline(p, micro, [fwd_s[role_of(i, p)].end for i in range(p)],
                             [bwd_s[role_of(i, p)].end for i in range(p)], p2p,
                             schedule=par.get("pipeline_schedule", "1f1b"),
                             chunks=int(par.get("virtual_stages", 1) or 1), blocking_p2p=True)
    events += len(pipe.events)
    finish = []
    for i in range(p):
        r = role_of(i, p)
        last_b = pipe.last_backward_end[i]
        tail = max(0.0, last_runs[r].async_end - bwd_s[r].end)  # the last backward's gradient reduction
        finish.append(last_b + tail + _optimizer_s(work["stages"][i], system, view, plan, cost, hbm))
    step = max(finish)
    memory = [_stage_memory(work, i, layout, pipe.peak_inflight[i], plan, system, view, hbm)
              for i in range(p)]
    result = _result(trace, system, view, layout, work, pipe, fwd_s, bwd_s, step, memory, events, micro)
    if timeline:
        from memsim.sim.timeline import Recorder

        rec = Recorder()
        for e in pipe.events:
            rec.span(f"stage {e.stage}", f"{e.kind}{e.micro}" + (f".{e.chunk}" if e.chunk else ""),
                     e.start, e.end)
        result.timeline = rec.finish()
    return result


def _optimizer_s(st: dict, system: System, view: System, plan: Plan, cost: Costs, hbm: str) -> float:
    """The optimizer step over this rank's shard, then (ZeRO 1–2) the parameter all-gather.
    On the CPU (ZeRO-Offload): gradients down and updated weights up the host link."""
    gather = cost({"unit": "comm", "coll": "all_gather", "bytes": st["param_gather"], "group": "data"}) \
        if st["param_gather"] else 0.0
    if not st["opt_flops"]:
        return gather
    if plan.optimizer_device == "cpu" and view.cpu is not None:
        cpu = view.cpu.op_time(st["opt_flops"], st["opt_bytes"], "fp32", "optimizer", "optimizer")
        moved = st["grads"] + st["weights"]
        return cpu + moved / cost.host_rate + gather
    gpu = system.gpu.op_time(st["opt_flops"], st["opt_bytes"], "fp32", "optimizer", "optimizer")
    return gpu + gather


def _off(plan: Plan, cls: str, hbm: str) -> tuple[float, str | None]:
    """(share homed off the GPU, that tier) of a class under ``plan``."""
    home = plan.home(cls, hbm)
    off = {t: f for t, f in home.items() if t != hbm and f > 0}
    return (sum(off.values()), max(off, key=off.get)) if off else (0.0, None)


def _stage_memory(work: dict, i: int, layout: Layout, inflight: int, plan: Plan, system: System,
                  view: System, hbm: str) -> dict:
    """Bytes one rank of stage ``i`` holds at its peak, per tier, with the lines parallelism adds."""
    st = work["stages"][i]
    n, first = st["layers"], sum(x["layers"] for x in work["stages"][:i])
    on: dict[str, float] = {}
    states = {"weights": st["weights"], "grads": st["grads"], "optimizer": st["optimizer"]}
    for key, cls in (("weights", "weight"), ("grads", "grad"), ("optimizer", "optimizer")):
        frac, tier = _off(plan, cls, hbm)
        if plan.optimizer_device == "cpu" and cls in ("grad", "optimizer") and tier is None:
            frac, tier = 1.0, view.tiers_of("dram")[0] if view.tiers_of("dram") else None
        if tier is not None and frac > 0:
            on[tier] = on.get(tier, 0) + frac * states[key]
            states[key] = int(states[key] * (1 - frac))
    layers = range(first, first + n)
    keep = sum(plan.policy(j) == "keep" for j in layers)
    rec = sum(plan.policy(j) == "recompute" for j in layers)
    offl = n - keep - rec
    act, inp = work["layer_activation_bytes"], work["layer_input_bytes"]
    acts = inflight * (keep * act + rec * inp) + (act if rec or offl else 0) + min(offl, 2) * act
    if offl:
        tier = plan.activation_tier or (view.tiers_of("dram") or [hbm])[0]
        on[tier] = on.get(tier, 0) + inflight * offl * act
    workspace = 0
    if work["layer_weight_bytes"] and any(o["name"] == "zero3_gather" for o in work["layer_fwd"]):
        workspace += 2 * work["layer_weight_bytes"]  # the layer in use and the one prefetched
    if work.get("zero_stage", 0) >= 2 and st["grad_sync"]:
        workspace += work["layer_weight_bytes"]  # a layer's full gradients before reduce-scatter
    if i == layout.pipeline - 1:
        workspace += 2 * work["logits_bytes"]  # fp32 logits and their gradient
    nccl = runtime_data()["nccl"]
    per_comm = units.parse_bytes(nccl["buffsize"]) * int(nccl["channels"]) * int(nccl["peers"])
    comms = sum(1 for size, _ in group_shape(layout).values() if size > 1)
    lines = {"nccl": per_comm * comms} if system.overheads and comms else {}
    if work["sp_buffer_bytes"]:
        lines["tp_comm_buffer"] = work["sp_buffer_bytes"]
    if layout.pipeline > 1:
        lines["pp_send_recv"] = int(2 * work["p2p_bytes"])
    tensors = [states["weights"], states["grads"], states["optimizer"], int(acts), int(workspace)]
    reserved = reserved_lines(system, {"data_parallel": 1}, {hbm: [x for x in tensors if x]})
    base = reserved.get(hbm, {})
    all_lines = {**base, **lines}
    total = sum(tensors) + sum(all_lines.values())
    return {"stage": i, **states,
            "activations": int(acts), "workspace": int(workspace), "inflight_microbatches": inflight,
            "lines": all_lines, "hbm": int(total), "off": {k: int(v) for k, v in on.items()}}


def _result(trace, system, view, layout, work, pipe, fwd_s, bwd_s, step, memory, events, micro) -> Result:
    meta = trace.meta
    hbm = system.gpu.memory
    p = layout.pipeline
    busiest = max(memory, key=lambda m: (m["hbm"], -m["stage"]))
    cap = {name: t.capacity for name, t in view.tiers.items()}
    peak = {name: 0 for name in cap}
    peak[hbm] = busiest["hbm"]
    for m in memory:  # host tiers hold every rank of the node's offloaded bytes; the view's share
        for tier, nbytes in m["off"].items():
            peak[tier] = max(peak[tier], nbytes)
    oom = None
    for tier in sorted(peak):
        if peak[tier] > cap[tier]:
            who = busiest if tier == hbm else max(memory, key=lambda m: m["off"].get(tier, 0))
            parts = ("weights", "grads", "optimizer", "activations", "workspace")
            largest = sorted(((k, who[k]) for k in parts), key=lambda kv: -kv[1])
            oom = OOM(tier, 0.0, f"stage {who['stage']} (rank {who['stage'] * layout.gpus // p})",
                      peak[tier], cap[tier], largest[:3])
            break
    # per GPU: model FLOPs of one data-parallel replica's micro-batches, spread over its t·p·c GPUs
    replica_gpus = layout.tensor * layout.pipeline * layout.context
    flops = float(meta.get("flops_per_step") or 0) / replica_gpus
    pk = peak_flops(system.gpu, meta.get("dtype") or "bf16")
    crit = max(range(p), key=lambda i: fwd_s[role_of(i, p)].end + bwd_s[role_of(i, p)].end)
    f, b = fwd_s[role_of(crit, p)], bwd_s[role_of(crit, p)]
    compute = micro * (f.compute_s + b.compute_s)
    recompute = micro * b.recompute_s
    exposed = micro * max(0.0, f.end - f.compute_s - f.recompute_s) + micro * max(
        0.0, b.end - b.compute_s - b.recompute_s)
    tail = step - pipe.step_time
    bubble_s = max(0.0, pipe.step_time - micro * (f.end + b.end))
    # the job's tokens: every data-parallel replica's micro-batches (what a cluster's cost buys)
    tokens = int(meta.get("tokens_per_step") or 0) * layout.data
    global_tokens = tokens
    parallel = {
        "layout": {"tensor": layout.tensor, "pipeline": p, "data": layout.data, "context": layout.context,
                   "expert": layout.expert, "sequence_parallel": layout.sequence_parallel,
                   "gpus": layout.gpus, "nodes": -(-layout.gpus // system.gpu.count)},
        "per_gpu_peak_bytes": busiest["hbm"],
        "busiest_rank": {"rank": busiest["stage"] * (layout.gpus // p), "stage": busiest["stage"],
                         "bytes": busiest["hbm"]},
        "bubble_fraction": pipe.bubble_fraction,
        "exposed_comm_s": exposed + max(0.0, tail),
        "mfu": flops / (step * pk) if step > 0 and pk > 0 else 0.0,
        "global_tokens_per_s": global_tokens / step if step > 0 else 0.0,
        "per_stage": [{k: m[k] for k in ("stage", "hbm", "weights", "grads", "optimizer", "activations",
                                          "workspace", "inflight_microbatches")}
                      | {"forward_s": fwd_s[role_of(m["stage"], p)].end,
                         "backward_s": bwd_s[role_of(m["stage"], p)].end} for m in memory],
        "roles_simulated": len(fwd_s),
        "scheduled": True,
    }
    notes = [f"parallel layout simulated one rank per stage role ({len(fwd_s)} of {layout.gpus} ranks): "
             f"TP {layout.tensor} × PP {p} × CP {layout.context} × DP {layout.data}"
             + (f", EP {layout.expert}" if layout.expert > 1 else "")]
    return Result(
        feasible=oom is None, step_time_s=step, tokens_per_s=tokens / step if step > 0 else 0.0,
        tokens_per_step=tokens, mfu=parallel["mfu"], peak_bytes=peak,
        mean_bytes={k: float(v) for k, v in peak.items()},
        capacity_bytes=cap, link_busy={},
        breakdown={"compute": compute, "recompute": recompute, "exposed_transfer": exposed,
                   "memory_wait": 0.0, "cpu": 0.0, "pipeline_bubble": bubble_s, "step_tail": max(0.0, tail)},
        oom=oom, events=events, notes=notes,
        reserved_bytes={hbm: dict(busiest["lines"])}, parallel=parallel)
