"""KIVI (Liu et al., ICML 2024): 2-bit vs 16-bit KV cache with KIVI's own layout, simulated.

The 2-bit runs carry ``inference.kv_quant`` (memsim.workloads.kvquant): the packed values, a
scale and a zero point per group and the fp16 residual are the simulated KV tensor's bytes, and
decode attention pays the dequantisation. The 16-bit runs drop it (``inference.kv_quant=null``).
"""

from __future__ import annotations

from pathlib import Path

from memsim.errors import Infeasible
from memsim.sim import simulate
from memsim.studies.reproduce_spec import CaseResult, CaseSpec, Figure
from memsim.units import fmt_bytes

SIM = "simulated"
PLAIN = "inference.kv_quant=null"


def kivi_case(spec: CaseSpec, path: Path, say) -> CaseResult:
    from memsim.studies.reproduce_cases import _diag, _need, gb, system_of, trace_of

    s = spec.setup
    system = system_of(s, path)
    fast = system.fast_tier
    cap = system.tiers[fast].capacity
    low = int(_need(s, "low_bits", path))
    upper = int(s.get("max_batch_search", 4096))

    def over(bits: int, batch: int | None = None, extra: tuple[str, ...] = ()) -> list[str]:
        out = [f"inference.kv_bits={bits}", *extra]
        if bits == 16:
            out.append(PLAIN)
        return out + ([f"inference.batch_size={batch}"] if batch else [])

    def largest(bits: int, extra: tuple[str, ...] = ()) -> int:
        """The largest batch whose per-device bytes (the trace's tensors) fit ``cap``."""
        def need(batch: int) -> int:
            return trace_of(s, path, over(bits, batch, extra)).meta["per_device_bytes"]["total"]
        lo, hi = 0, upper
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if need(mid) <= cap else (lo, mid - 1)
        return lo

    def peak(bits: int, batch: int, extra: tuple[str, ...] = ()) -> tuple[float, object]:
        say(f"simulating {bits}-bit KV at batch {batch} {' '.join(extra)}")
        trace = trace_of(s, path, over(bits, batch, extra))
        r = simulate(system, trace, None)
        if not r.feasible:
            raise Infeasible(_diag(r, f"kivi {bits}-bit at batch {batch}"))
        return r.peak_bytes[fast], trace

    hi_max, lo_max = largest(16), largest(low)
    p16, t16 = peak(16, hi_max)
    p2, t2 = peak(low, hi_max)
    peak(low, lo_max)  # the 2-bit maximum runs too
    packed = (PLAIN,)
    p2_packed, _ = peak(low, hi_max, packed)
    lo_packed = largest(low, packed)
    seq = t2.meta["per_device_bytes"]["kv_cache"] / hi_max
    seq16 = t16.meta["per_device_bytes"]["kv_cache"] / hi_max
    q = t2.meta
    ctx = q["prompt_len"] + q["gen_len"]
    kq = s["workload"]["inference"]["kv_quant"]
    residual = int(kq.get("residual", 128))
    pub = spec.published
    figures = [
        Figure("peak_ratio", f"peak {fast}, 16-bit / {low}-bit KIVI KV at batch {hi_max}", "x",
               pub.get("peak_ratio"), p16 / p2, SIM,
               f"{gb(p16):.3g} GB vs {gb(p2):.3g} GB, weights included; KIVI's KV is "
               f"{fmt_bytes(seq)} a sequence against {fmt_bytes(seq16)} in fp16 "
               f"({seq16 / seq:.2f}× on the KV alone). The packed "
               f"{low}-bit values alone would give {p16 / p2_packed:.2f}×"),
        Figure("batch_ratio", f"largest batch, {low}-bit KIVI / 16-bit KV", "x", pub.get("batch_ratio"),
               lo_max / hi_max, f"{SIM} at both maxima",
               f"{lo_max} vs {hi_max} sequences in {fmt_bytes(cap)}; the packed values alone: "
               f"{lo_packed} ({lo_packed / hi_max:.2f}×)"),
    ]
    setup = [f"hardware `{s['hardware']}` ({fmt_bytes(cap)} {fast}); workload `{t2.name}` "
             f"({q['model']}, prompt {q['prompt_len']}, {q['gen_len']} new tokens: {ctx} tokens "
             "a sequence at the end)",
             f"{low}-bit runs: inference.kv_quant (group {kq.get('group_size', 32)}, "
             f"residual {residual}: at {ctx} tokens {ctx % residual} keys and "
             f"{min(ctx, residual)} values in fp16), dequantised in decode attention",
             "largest batch: bisection on the trace's per-device bytes against "
             f"{fmt_bytes(cap)}; both maxima simulated"]
    return CaseResult(spec.name, spec.title, spec.source, setup, figures)
