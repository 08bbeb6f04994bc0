"""CPU decode attention as ZeRO-Inference's transformers fork runs it, measured here with torch,
beside what memsim's model of it (memsim/hardware/attention_impl.py) predicts.

Three ways to attend one decode token over an fp32 cache with the same FLOPs (64 query heads):
``mha`` a 64-KV-head cache (OPT's path: bmm over the cache), ``gqa-expand`` an 8-KV-head cache
expanded to 64 heads first (HF's repeat_kv, the fork's LlamaAttention), ``gqa-grouped`` the 8-head
cache read once per group (a grouped kernel). memsim prices all three by the bytes they stream;
the printed ratios compare measured and predicted times against ``mha``. Timings are wall-clock
medians on this machine's CPU and noisy on a shared host.

    python bench/bench_cpu_attention.py [--batch 8] [--context 529] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

HEADS, KV_HEADS, HEAD_DIM = 64, 8, 128  # LLaMA-2-70B's attention (config.json)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) / HEAD_DIM ** 0.5
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    b, h, s, d = x.shape  # expand then reshape: a copy, as transformers' repeat_kv
    return x[:, :, None].expand(b, h, n, s, d).reshape(b, h * n, s, d)


def run(batch: int, context: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    group = HEADS // KV_HEADS
    q = torch.randn(batch, HEADS, 1, HEAD_DIM)
    k64, v64 = (torch.randn(batch, HEADS, context, HEAD_DIM) for _ in range(2))
    k8, v8 = (torch.randn(batch, KV_HEADS, context, HEAD_DIM) for _ in range(2))
    qg = q.view(batch, KV_HEADS, group, HEAD_DIM)
    cases = {
        "mha": lambda: _attend(q, k64, v64),
        "gqa-expand": lambda: _attend(q, _repeat(k8, group), _repeat(v8, group)),
        "gqa-grouped": lambda: _attend(qg, k8, v8),
    }
    out = {}
    for name, fn in cases.items():
        fn()  # warm up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


def first_touch(batch: int, context: int, repeats: int) -> tuple[float, float]:
    """Seconds to write the expanded K (repeat_kv's copy) into fresh memory, and into a buffer
    reused from the step before (torch's CPU allocator hands blocks this large back to the OS)."""
    group = HEADS // KV_HEADS
    k8 = torch.randn(batch, KV_HEADS, context, HEAD_DIM)
    src = k8[:, :, None].expand(batch, KV_HEADS, group, context, HEAD_DIM)
    reused = torch.empty(src.shape)
    fresh, warm = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        src.contiguous()
        fresh.append(time.perf_counter() - start)
        start = time.perf_counter()
        reused.copy_(src)
        warm.append(time.perf_counter() - start)
    return statistics.median(fresh), statistics.median(warm)


def predicted() -> dict[str, float]:
    """memsim's streamed bytes of each path over the mha path's (the same FLOPs each)."""
    group = HEADS // KV_HEADS
    cache8 = 1.0 / group  # the 8-head cache, in units of the 64-head one
    return {"mha": 1.0, "gqa-expand": cache8 * (1 + 2 * group), "gqa-grouped": cache8}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=529)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    measured = run(args.batch, args.context, args.repeats)
    want = predicted()
    cache = 2 * args.batch * HEADS * args.context * HEAD_DIM * 4  # the 64-head fp32 K and V
    print(f"fp32 decode attention, batch {args.batch}, context {args.context}, {HEADS} query heads, "
          f"{KV_HEADS} KV heads; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'path':12s} {'ms':>9s} {'GB/s (64-head K+V)':>19s} {'measured/mha':>13s} {'memsim/mha':>11s}")
    for name, sec in measured.items():
        print(f"{name:12s} {sec * 1e3:9.2f} {cache / sec / 1e9:19.1f} {sec / measured['mha']:13.2f} "
              f"{want[name]:11.2f}")
    fresh, warm = first_touch(args.batch, args.context, args.repeats)
    expanded = args.batch * HEADS * args.context * HEAD_DIM * 4
    print(f"repeat_kv's copy of K ({expanded / 1e6:.0f} MB): into fresh memory {fresh * 1e3:.1f} ms "
          f"({expanded / fresh / 1e9:.2f} GB/s), into a reused buffer {warm * 1e3:.1f} ms "
          f"({expanded / warm / 1e9:.2f} GB/s), fresh/reused {fresh / warm:.2f}x")


if __name__ == "__main__":
    main()
