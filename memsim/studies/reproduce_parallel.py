"""Reproductions of parallel training runs: a published layout simulated by memsim.sim.parallel.

A case lists ``runs``: a GPT shape (heads, hidden, layers; a GPT-2 ``config.json`` is built
from it with the case's vocabulary and sequence length), a layout (tensor, pipeline; data is
the rest of ``gpus``), the global batch, the run's own ``training`` keys if any (micro-batch,
ZeRO stage) and the published achieved TFLOP/s per GPU. memsim's
figure is the paper's own FLOP count (Narayanan et al. 2021, Eq. 3: 96·B·s·l·h²·(1 + s/6h +
V/16lh), which counts the recomputed forward) over the simulated step time, per GPU: the
published figure measured the same ratio on Selene.
"""

from __future__ import annotations

from pathlib import Path

from memsim.contracts.plan import Plan
from memsim.sim.parallel import simulate_parallel
from memsim.studies.reproduce_cases import SIM, Say, _need, system_of
from memsim.studies.reproduce_spec import CaseResult, CaseSpec, Figure
from memsim.workloads.models import parse_config
from memsim.workloads.parallel_work import with_work
from memsim.workloads.spec import Workload
from memsim.workloads.training import build_training


def megatron_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """Narayanan et al. 2021, Eq. 3: FLOPs of one step with full activation recomputation."""
    return 96.0 * batch * seq * layers * hidden**2 * (1 + seq / (6 * hidden) + vocab / (16 * layers * hidden))


def parallel(spec: CaseSpec, path: Path, say: Say) -> CaseResult:
    """Each run: the layout's step simulated; achieved TFLOP/s per GPU beside the published one."""
    s = spec.setup
    seq, vocab = int(_need(s, "seq_len", path)), int(_need(s, "vocab", path))
    per_node = system_of(s, path).gpu.count
    training = dict(s.get("training") or {})
    plan = Plan(activations="recompute") if s.get("recompute", True) else Plan()
    figures = []
    for i, run in enumerate(spec.runs or []):
        say(run["label"])
        shape = run["model"]
        h, layers = int(shape["hidden"]), int(shape["layers"])
        config = {"model_type": "gpt2", "n_embd": h, "n_layer": layers, "n_head": int(shape["heads"]),
                  "vocab_size": vocab, "n_positions": seq, "n_inner": 4 * h,
                  "activation_function": "gelu_new", "tie_word_embeddings": True}
        arch = parse_config(config, name=f"gpt-{run['label']}", file=str(path))
        t, p, gpus = int(run["tensor"]), int(run["pipeline"]), int(run["gpus"])
        d = gpus // (t * p)
        mine = {**training, **(run.get("training") or {})}  # a run may set its own micro-batch, ZeRO...
        micro = int(mine.get("micro_batch", 1))
        job = {**mine, "seq_len": seq, "grad_accum": int(run["global_batch"]) // (d * micro),
               "parallel": {"tensor": t, "pipeline": p, "data": d}}
        w = Workload.model_validate({"name": arch.name, "model": arch.name, "training": job})
        trace = with_work(build_training(w, arch), w, arch)
        system = system_of(s, path, [f"hardware.nodes={-(-gpus // per_node)}"])
        r = simulate_parallel(system, trace, plan)
        tflops = megatron_flops(int(run["global_batch"]), seq, layers, h, vocab) / r.step_time_s / gpus / 1e12
        par = r.parallel
        note = (f"TP{t}·PP{p}·DP{d}, {job['grad_accum']} micro-batches; bubble "
                f"{par['bubble_fraction']:.0%}, exposed comm {par['exposed_comm_s'] / r.step_time_s:.0%} of "
                f"the step" + ("" if r.feasible else "; does not fit"))
        figures.append(Figure(f"run{i}", f"{run['label']}: TFLOP/s per GPU", "TFLOP/s",
                              float(run["published_tflops"]), tflops, SIM, note))
    setup = [f"hardware `{s['hardware']}` × nodes as each run needs; GPT shapes with vocabulary {vocab}, "
             f"sequence {seq}; {', '.join(f'{k} {v}' for k, v in training.items())}; "
             f"{'full activation recomputation' if s.get('recompute', True) else 'no recomputation'}; "
             "1F1B pipeline schedule"]
    return CaseResult(spec.name, spec.title, spec.source, setup, figures)
