"""FlexGen's CPU attention over a disk-homed KV cache reads the past tokens ahead.

FlexGen's ``load_cache`` for step ``i`` copies positions ``[0, prompt_len + i)`` of the cache
home (the tokens before this step) into the read buffer of the next GPU batch while the current
one computes; the new token's K/V comes out of the layer's own QKV and is stored afterwards
(``store_cache``). So the disk read of GPU batch ``b + 1`` does not wait for batch ``b + 1``'s
QKV: reads of consecutive GPU batches run back to back on a disk-bound run.
"""

from __future__ import annotations

import itertools

import pytest

from memsim.contracts.plan import Plan
from memsim.sim import simulate
from memsim.sim.engine import StepEngine
from memsim.sim.program import build_program
from tests.conftest import make_system
from tests.test_sim_inference_fixes import TOKEN, qkv_attention_trace

PROMPT, GEN = 4096, 4
PLAN = Plan(placement={"kv": {"ssd": 1.0}}, cpu_attention=True, gpu_batch_size=4,
            num_gpu_batches=2)


def _reads(trace, plan):
    system = make_system()
    engine = StepEngine(system, build_program(trace, system, plan), plan.prefetch_depth, False,
                        trace.meta)
    engine.run()
    return sorted((c[3], c[4], c[2]) for c in engine.clock.copier.log
                  if (c[0], c[1]) == ("ssd", "dram") and c[2] >= 100 * TOKEN)


def test_past_kv_read_of_the_next_gpu_batch_does_not_wait_for_its_qkv():
    # CPU attention long beside a disk read: a read waiting for its batch's QKV would leave the
    # disk idle for one attention per GPU batch
    trace = qkv_attention_trace(layers=2, prompt=PROMPT, gen=GEN, flops=2e9)
    reads = _reads(trace, PLAN)
    decode = [r for r in reads if r[0] > 0]
    assert len(decode) == 2 * 2 * (GEN - 1)  # per step, per layer, per GPU batch
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(decode)]
    attention = 2e8 / 1e12  # the CPU attention's FLOPs at make_system's CPU rate
    assert max(gaps) < 0.1 * attention  # back to back on the disk, not one attention apart
    # each read is the context before its step (half the batch): the new token comes from QKV
    sizes = sorted({r[2] for r in decode})
    assert sizes == [(PROMPT + i) * TOKEN // 2 for i in range(GEN - 1)]


def test_disk_bound_decode_runs_at_the_disk_rate():
    trace = qkv_attention_trace(layers=2, prompt=PROMPT, gen=GEN, flops=2e9)
    r = simulate(make_system(), trace, PLAN)
    read = sum((PROMPT + i) * TOKEN * 2 for i in range(GEN - 1))  # bytes, all layers
    disk_s = read / 2e9  # make_system's DRAM <-> SSD link
    assert r.link_busy["nvme:ssd->dram"] * r.step_time_s == pytest.approx(disk_s, rel=0.05)
    assert r.step_time_s < 1.25 * disk_s
