"""Planning under parallel layouts: memory policies for a given layout, and a search over layouts.

``plan_parallel`` answers ``memsim plan`` for a trace whose layout goes beyond data parallelism:
it simulates the policies people combine with Megatron layouts (everything resident, full
activation recomputation, ZeRO-Offload of the optimizer, both) and returns the fastest that
fits beside the others. When none fits, the diagnosis names the per-GPU shortfall of the
busiest rank and the smallest layout change that fits (more tensor or pipeline parallelism, more
GPUs), each one simulated.

``search_layouts`` chooses the layout itself for a model, a global batch and a cluster: tensor
parallelism within a node, pipeline stages, data parallelism, the ZeRO stage and the micro-batch
size, jointly with recompute and optimizer offload, every candidate simulated
(``Simulator.simulate_parallel``); the layouts people use (Megatron TP=8 within a node, FSDP,
ZeRO-3 + offload) are named in the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from memsim.contracts.plan import Plan, PlannerInfo, trace_fingerprint
from memsim.contracts.simulator import Simulator
from memsim.errors import Diagnosis, Infeasible, Shortfall, SpecError
from memsim.hardware.spec import System
from memsim.units import fmt_bytes
from memsim.workloads.parallel import Layout, validate_layout
from memsim.workloads.parallel_work import with_work
from memsim.workloads.spec import Workload


def policies(system: System) -> dict[str, Plan]:
    """The memory policies simulated for every layout."""
    dram = system.tiers_of("dram")
    out = {"resident": Plan(), "checkpoint-full": Plan(activations="recompute")}
    if dram and system.cpu is not None:
        off = {"placement": {"optimizer": {dram[0]: 1.0}, "grad": {dram[0]: 1.0}}, "optimizer_device": "cpu"}
        out["zero-offload"] = Plan(**off)
        out["checkpoint-full+zero-offload"] = Plan(activations="recompute", **off)
    for name, plan in out.items():
        plan.planner = PlannerInfo(name=name, status="heuristic")
    return out


@dataclass
class Tried:
    name: str
    plan: Plan
    result: object  # Result


def partial_recompute(trace, k: int, base: Plan | None = None) -> Plan:
    """Recompute the first ``k`` layers of every pipeline stage, keep the rest (selective
    checkpointing by layer count, Megatron's --recompute-num-layers with the block method)."""
    plan = Plan(**{**(base.__dict__ if base else {}), "layer_policy": {}, "planner": PlannerInfo()})
    first = 0
    for st in trace.meta["parallel"]["work"]["stages"]:
        for j in range(min(k, st["layers"])):
            plan.layer_policy[first + j] = "recompute"
        first += st["layers"]
    plan.planner = PlannerInfo(name=f"checkpoint-{k}-per-stage", status="heuristic")
    return plan


def _fewest_recomputed(system: System, trace, base: Plan, sim: Simulator) -> Tried | None:
    """Bisect the fewest recomputed layers per stage that fit (memory falls as k grows)."""
    most = max(st["layers"] for st in trace.meta["parallel"]["work"]["stages"])
    lo, hi, best = 1, most - 1, None
    while lo <= hi:
        k = (lo + hi) // 2
        plan = partial_recompute(trace, k, base)
        r = sim.simulate_parallel(system, trace, plan)
        if r.feasible:
            best, hi = Tried(plan.planner.name, plan, r), k - 1
        else:
            lo = k + 1
    return best


def best_policy(system: System, trace, sim: Simulator) -> tuple[Tried | None, list[Tried]]:
    """(fastest policy that fits, every policy tried) for one layout's trace; when keeping every
    layer's activations overflows but recomputing all fits, also the fewest layers to recompute."""
    tried = [Tried(n, p, sim.simulate_parallel(system, trace, p)) for n, p in policies(system).items()]
    by = {t.name: t for t in tried}
    if not by["resident"].result.feasible and by["checkpoint-full"].result.feasible:
        partial = _fewest_recomputed(system, trace, Plan(), sim)
        if partial is not None:
            tried.append(partial)
    fits = [t for t in tried if t.result.feasible]
    return (min(fits, key=lambda t: t.result.step_time_s) if fits else None), tried


def plan_parallel(system: System, trace, say, sim: Simulator):
    """``plan`` for a parallel layout: a PlanReport of the fastest policy, the others as baselines."""
    from memsim.planners.report import Evaluated, PlanReport

    say("simulating the policies of this parallel layout")
    best, tried = best_policy(system, trace, sim)
    baselines = [Evaluated(t.name, t.plan, t.result) for t in tried]
    if best is None:
        raise _infeasible(system, trace, tried, baselines, sim)
    plan = best.plan
    plan.planner = PlannerInfo(name="parallel", status="searched", solve_s=None,
                               estimate_s=None)
    plan.workload, plan.fingerprint = trace.name, trace_fingerprint(trace)
    plan.notes.append(f"fastest of {len(tried)} simulated policies for this layout: {best.name}")
    return PlanReport(system, trace, plan, best.result, [b for b in baselines if b.name != best.name])


def _infeasible(system: System, trace, tried: list[Tried], baselines, sim: Simulator) -> Infeasible:
    closest = min(tried, key=lambda t: t.result.parallel["per_gpu_peak_bytes"])
    r = closest.result
    hbm = system.gpu.memory
    need, cap = r.peak_bytes[hbm], r.capacity_bytes[hbm]
    rank = r.parallel["busiest_rank"]
    summary = (f"no policy fits this layout: the busiest rank ({rank['rank']}, pipeline stage "
               f"{rank['stage']}) needs {fmt_bytes(need)} of {fmt_bytes(cap)} per GPU even with "
               f"{closest.name} (short by {fmt_bytes(need - cap)})")
    suggestions = smallest_changes(system, trace, sim)
    diagnosis = Diagnosis(summary, [Shortfall(hbm, int(need), int(cap))],
                          suggestions or ["more GPUs: raise hardware.nodes and the parallel degrees"])
    exc = Infeasible(diagnosis)
    exc.payload = {"planner": {"name": "parallel", "status": "infeasible"},
                   "baselines": [b.to_dict() for b in baselines], "parallel": r.parallel}
    return exc


def smallest_changes(system: System, trace, sim: Simulator, tries: int = 12) -> list[str]:
    """The smallest layout change that fits, simulated: layouts with more tensor (within a node)
    and pipeline parallelism in order of GPUs added, and ZeRO-3 over the data-parallel ranks; the
    first of each kind that fits (with the nodes it needs)."""
    workload = getattr(trace, "workload_spec", None)
    if workload is None:
        return []
    t = workload.training
    par = t.parallel
    per_node = system.gpu.count
    options = []
    if t.zero_stage < 3 and par.data * par.context > 1:
        options.append((1, "training.zero_stage=3", par.model_dump(), 3))
    tp = par.tensor
    while tp <= per_node:
        pp = par.pipeline
        while pp <= 128:
            if (tp, pp) != (par.tensor, par.pipeline):
                keys = [f"training.parallel.tensor={tp}"] if tp != par.tensor else []
                keys += [f"training.parallel.pipeline={pp}"] if pp != par.pipeline else []
                options.append((tp * pp // (par.tensor * par.pipeline), " and ".join(keys),
                                {**par.model_dump(), "tensor": tp, "pipeline": pp}, t.zero_stage))
            pp *= 2
        tp *= 2
    options.sort(key=lambda o: o[0])
    out, done = [], set()
    for _, label, degrees, zero in options[:tries]:
        kind = "zero" if zero != t.zero_stage else "layout"
        if kind in done:
            continue
        lay = Layout(**degrees, sequence_parallel=t.sequence_parallel)
        nodes = max(system.nodes, -(-lay.gpus // per_node))
        cand = _rebuilt(workload, degrees, zero, t.grad_accum)
        if cand is None:
            continue
        best, _ = best_policy(system.model_copy(update={"nodes": nodes}), cand, sim)
        if best is not None:
            done.add(kind)
            more = f" on {nodes} nodes (hardware.nodes={nodes})" if nodes > system.nodes else ""
            out.append(f"{label}{more}: {lay.gpus} GPUs, fits with {best.name}, simulated step "
                       f"{best.result.step_time_s:.4g} s")
    return out


def _rebuilt(workload: Workload, degrees: dict, zero: int, grad_accum: int):
    """The trace of ``workload`` under another layout, or None if the model cannot be split so."""
    from memsim.workloads import build_trace

    training = workload.training.model_copy(update={
        "parallel": workload.training.parallel.model_copy(update=degrees),
        "data_parallel": degrees["data"], "zero_stage": zero, "grad_accum": grad_accum})
    w = workload.model_copy(update={"training": training})
    w._source = workload._source
    try:
        trace = build_trace(w)
    except SpecError:
        return None
    return with_work(trace, w)


# -- the search over layouts -------------------------------------------------------------------


@dataclass
class Candidate:
    """One layout with its best policy, simulated."""

    layout: Layout
    zero_stage: int
    micro_batch: int
    grad_accum: int
    policy: str | None  # None: nothing fits
    result: object | None
    named: str = ""  # the well-known layout it is, if any

    def row(self) -> dict:
        r, lay = self.result, self.layout
        fits = self.policy is not None
        return {"layout": f"TP{lay.tensor}·PP{lay.pipeline}·DP{lay.data}", "tensor": lay.tensor,
                "pipeline": lay.pipeline, "data": lay.data, "zero_stage": self.zero_stage,
                "micro_batch": self.micro_batch, "grad_accum": self.grad_accum, "policy": self.policy,
                "named": self.named,
                "feasible": fits, "step_time_s": r.step_time_s if fits else None,
                "tokens_per_s": r.tokens_per_s if fits else None, "mfu": r.mfu if fits else None,
                "per_gpu_peak_bytes": r.parallel["per_gpu_peak_bytes"] if r is not None else None,
                "bubble_fraction": r.parallel["bubble_fraction"] if fits else None}


def named_layout(lay: Layout, zero: int, policy: str | None, per_node: int) -> str:
    if lay.tensor == per_node and zero <= 1 and lay.data >= 1:
        return "megatron-tp8" if per_node == 8 else f"megatron-tp{per_node}"
    if lay.tensor == 1 and lay.pipeline == 1 and zero == 3:
        return "zero3-offload" if policy and "offload" in policy else "fsdp"
    return ""


def layouts_for(workload: Workload, gpus: int, per_node: int) -> list[tuple[int, int, int]]:
    """(tensor, pipeline, data) with tensor a power of two within a node, pipeline dividing the
    layers, tensor × pipeline × data = gpus; the model's heads decide which split (validate_layout)."""
    from memsim.workloads import workload_architecture

    arch = workload_architecture(workload)
    out = []
    t = 1
    while t <= per_node:
        for p in range(1, arch.layers + 1):
            if gpus % (t * p) or arch.layers % p:
                continue
            lay = Layout(tensor=t, pipeline=p, data=gpus // (t * p))
            try:
                validate_layout(arch, lay, seq_len=workload.training.seq_len)
            except SpecError:
                continue
            out.append((t, p, gpus // (t * p)))
        t *= 2
    return out


def micro_batches(per_rank: int, limit: int = 64) -> list[int]:
    """The micro-batch sizes of a rank's ``per_rank`` sequences a step: its divisors up to
    ``limit``, smallest first (each leaves a whole number of micro-batches to accumulate)."""
    return [m for m in range(1, min(per_rank, limit) + 1) if per_rank % m == 0]


def _with_micro(workload: Workload, micro_batch: int) -> Workload:
    training = workload.training.model_copy(update={"micro_batch": micro_batch})
    w = workload.model_copy(update={"training": training})
    w._source = workload._source
    return w


def _layout_candidate(system: System, workload: Workload, lay: Layout, zero: int, sizes: list[int],
                      global_batch: int, simulator: Simulator) -> Candidate | None:
    """One layout and ZeRO stage with its fastest micro-batch size and policy. Sizes go up until
    none fits: a stage holds min(P − i, M) micro-batches of m sequences in flight, min((P − i)·m,
    per-rank batch), which only grows with m, so a larger size fits no better."""
    degrees = {"tensor": lay.tensor, "pipeline": lay.pipeline, "data": lay.data, "context": 1, "expert": 1}
    best = closest = None
    for m in sizes:
        accum = global_batch // (lay.data * m)
        trace = _rebuilt(_with_micro(workload, m), degrees, zero, accum)
        if trace is None:
            continue
        fit, tried = best_policy(system, trace, simulator)
        if fit is None:
            if closest is None:
                near = min(tried, key=lambda x: x.result.parallel["per_gpu_peak_bytes"])
                closest = Candidate(lay, zero, m, accum, None, near.result)
            break
        if best is None or fit.result.step_time_s < best.result.step_time_s:
            best = Candidate(lay, zero, m, accum, fit.name, fit.result)
    return best or closest


def search_layouts(system: System, workload: Workload, *, global_batch: int, micro_batch: int | None = None,
                   zero_stages: tuple[int, ...] = (1, 3), max_pipeline: int = 16, max_micro_batch: int = 64,
                   simulator: Simulator) -> list[Candidate]:
    """Every layout of ``system``'s GPUs (all its nodes) for ``global_batch`` sequences a step,
    each with its fastest fitting micro-batch size (every divisor of a rank's share of the batch
    up to ``max_micro_batch``, or ``micro_batch`` alone when given) and policy; sorted fastest
    first, layouts that fit nowhere last. A larger micro-batch runs larger GEMMs and fewer
    per-micro-batch collectives but holds more activations and, under pipelining, leaves fewer
    micro-batches to fill the bubble: the simulation weighs them."""
    per_node = system.gpu.count
    gpus = per_node * system.nodes
    found = []
    for t, p, d in layouts_for(workload, gpus, per_node):
        if p > max_pipeline or global_batch % d:
            continue
        sizes = micro_batches(global_batch // d, max_micro_batch) if micro_batch is None else (
            [micro_batch] if (global_batch // d) % micro_batch == 0 else [])
        lay = Layout(tensor=t, pipeline=p, data=d)
        for zero in zero_stages if d > 1 else (0,):
            cand = _layout_candidate(system, workload, lay, zero, sizes, global_batch, simulator)
            if cand is None:
                continue
            cand.named = named_layout(lay, zero, cand.policy, per_node)
            found.append(cand)
    return sorted(found, key=lambda c: (c.policy is None, c.result.step_time_s if c.policy else
                                        c.result.parallel["per_gpu_peak_bytes"]))


def _sets(c: Candidate) -> list[str]:
    """The --set overrides that give the workload this candidate's layout."""
    lay = c.layout
    return [f"training.parallel.tensor={lay.tensor}", f"training.parallel.pipeline={lay.pipeline}",
            f"training.parallel.data={lay.data}", f"training.zero_stage={c.zero_stage}",
            f"training.micro_batch={c.micro_batch}", f"training.grad_accum={c.grad_accum}"]


def plan_layouts(system: System, trace, options: dict, say, sim: Simulator):
    """``plan --planner layouts``: the fastest layout that fits the cluster for the workload's
    global batch (data × micro-batch × accumulation as given), beside the named layouts."""
    from memsim.planners.mip import NotApplicable
    from memsim.planners.report import Evaluated, PlanReport

    workload = getattr(trace, "workload_spec", None)
    if trace.kind != "training" or workload is None:
        raise NotApplicable("the layout search needs a training workload (not a saved trace)")
    t = workload.training
    batch = int(options.get("global_batch") or t.parallel.data * t.micro_batch * t.grad_accum)
    say(f"searching layouts of {system.gpu.count * system.nodes} GPUs for {batch} sequences a step")
    fixed = options.get("micro_batch")
    found = search_layouts(system, workload, global_batch=batch,
                           micro_batch=int(fixed) if fixed is not None else None,
                           max_pipeline=int(options.get("max_pipeline", 16)),
                           max_micro_batch=int(options.get("max_micro_batch", 64)), simulator=sim)
    fits = [c for c in found if c.policy is not None]
    if not fits:
        closest = min(found, key=lambda c: c.result.parallel["per_gpu_peak_bytes"]) if found else None
        need = closest.result.parallel["per_gpu_peak_bytes"] if closest else 0
        cap = system.tiers[system.gpu.memory].capacity
        raise Infeasible(Diagnosis(
            f"no layout of {system.gpu.count * system.nodes} GPUs fits {batch} sequences a step; the "
            f"closest needs {fmt_bytes(need)} per GPU of {fmt_bytes(cap)}",
            [Shortfall(system.gpu.memory, int(need), int(cap))],
            [f"more GPUs: hardware.nodes={system.nodes * 2}"]))
    best = fits[0]
    named = {}
    for c in found:
        if c.named and c.named not in named:
            named[c.named] = c
    baselines = [Evaluated(f"{name} ({c.row()['layout']}, ZeRO {c.zero_stage})", None,
                           c.result if c.policy else None,
                           "" if c.policy else "no memory policy fits this layout")
                 for name, c in named.items() if c is not best]
    lay = best.layout
    best_trace = _rebuilt(_with_micro(workload, best.micro_batch),
                          {"tensor": lay.tensor, "pipeline": lay.pipeline, "data": lay.data, "context": 1,
                           "expert": 1}, best.zero_stage, best.grad_accum)
    _, tried = best_policy(system, best_trace, sim)
    plan = next(x.plan for x in tried if x.name == best.policy)
    plan.planner = PlannerInfo(name="layouts", status="searched")
    plan.workload, plan.fingerprint = best_trace.name, trace_fingerprint(best_trace)
    plan.notes.append(f"fastest of {len(found)} simulated layouts ({len(fits)} fit): {best.row()['layout']}, "
                      f"ZeRO {best.zero_stage}, micro-batch {best.micro_batch}, {best.policy}; --set "
                      + " --set ".join(_sets(best)))
    return PlanReport(system, best_trace, plan, next(x.result for x in tried if x.name == best.policy),
                      baselines)


def layouts_planner(system: System, trace, options: dict, time_limit: float) -> Plan:
    """The registry's entry, for ``--planner layouts`` to resolve: ``plan`` (memsim.api.plan)
    runs ``plan_layouts`` itself, with the simulator that scores every layout and the layout's
    own trace in its report; a bare Plan without them would be for another trace."""
    from memsim.planners.mip import NotApplicable

    raise NotApplicable("the layout search simulates every layout: run it with memsim plan "
                        "--planner layouts (memsim.api.plan)")
