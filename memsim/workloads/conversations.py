"""Seeded multi-turn request streams whose prompts share a growing prefix: chat sessions and agents.

A *conversation* (``serving.arrival.process: conversation``) is a session of turns: its first
prompt is a system prompt (one of ``system_prompts``, shared by every session that drew it) plus
the user's message; each later prompt is the whole conversation so far (every earlier prompt and
answer) plus a new message, as Pensieve and CachedAttention model ShareGPT chats. An *agent*
(``process: agentic``) is the same loop with tool calls: each step's answer is a tool call, the
tool runs for a pause, and its result is the next step's new tokens (Continuum's setting, where
the pause between steps is short and the context long).

Sessions start as a Poisson process (``rate_per_s`` sessions per second); turns per session are
geometric with mean ``turns``; the gap between a turn's arrival and the next is exponential with
mean ``think_time_s`` (or ``tool_time_s``), open loop like the timestamps of a recorded trace. New
tokens per turn follow ``prompt_len``, answers ``output_len``; a session ends early once its next
prompt would pass the model's context. The stream is the first ``num_requests`` requests in
arrival order.

Prompts are named Mooncake-style: one id per ``block_tokens`` block, ids equal exactly when the
blocks' tokens are (the same system prompt, or the same session's history); the partial last
block of a prompt gets an id of its own, since the tokens that later fill it are new. Each
request also names the whole blocks its answer completes (``answer_hash_ids``): the serving
engine caches those when the request finishes, as vLLM caches every full block, decoded or not,
and Pensieve keeps the whole conversation.
"""

from __future__ import annotations

import math

import numpy as np

from memsim.workloads.serving import draw_lengths
from memsim.workloads.spec import Serving
from memsim.workloads.trace import Requests


def session_requests(sv: Serving, limit: int, block_tokens: int) -> Requests:
    """The conversation or agentic stream of ``sv`` (seeded, platform-independent PCG64)."""
    arr = sv.arrival
    rng = np.random.Generator(np.random.PCG64(arr.seed))
    agentic = arr.process == "agentic"
    mean_turns = arr.turns if arr.turns is not None else (8.0 if agentic else 5.0)
    pause = (arr.tool_time_s if arr.tool_time_s is not None else 2.0) if agentic else (
        arr.think_time_s if arr.think_time_s is not None else 30.0)
    systems: dict[int, list[int]] = {}  # system prompt → ids of its whole blocks
    fresh = iter(range(1, 2**62))
    rows: list[tuple] = []  # (arrival, session, prompt, output, hashes, answer hashes)
    start = 0.0
    cutoff = math.inf
    session = 0
    shared = arr.system_prompt // block_tokens  # whole blocks inside the system prompt
    while len(rows) < sv.num_requests or start <= cutoff:
        start += float(rng.exponential(1.0 / arr.rate_per_s))
        if len(rows) >= sv.num_requests and start > cutoff:
            break
        system = int(rng.integers(arr.system_prompts))
        turns = int(rng.geometric(1.0 / mean_turns))
        news = draw_lengths(sv.prompt_len, turns, rng, limit)
        answers = draw_lengths(sv.output_len, turns, rng, limit)
        gaps = rng.exponential(pause, size=turns)
        if system not in systems:
            systems[system] = [next(fresh) for _ in range(shared)]
        chain = list(systems[system])  # ids of the session's whole blocks so far
        t, history = start, arr.system_prompt
        for turn in range(turns):
            prompt = history + int(news[turn])
            out = int(answers[turn])
            if prompt + out > limit:
                break
            full = prompt // block_tokens
            chain.extend(next(fresh) for _ in range(full - len(chain)))
            hashes = chain[:full]
            if prompt % block_tokens:  # the partial last block: its own id
                hashes.append(next(fresh))
            done = (prompt + out) // block_tokens
            chain.extend(next(fresh) for _ in range(done - len(chain)))
            rows.append((round(t, 6), session, prompt, out, hashes, chain[full:done]))
            history = prompt + out
            t += float(gaps[turn])
        session += 1
        if len(rows) >= sv.num_requests and cutoff == math.inf:
            # every request up to the n-th arrival so far belongs to a session started by then
            cutoff = sorted(r[0] for r in rows)[sv.num_requests - 1]
    rows.sort(key=lambda r: (r[0], r[1]))
    rows = rows[:sv.num_requests]
    return Requests([r[0] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                    [r[4] for r in rows], [r[5] for r in rows])

