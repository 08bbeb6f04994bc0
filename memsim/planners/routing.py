"""How a stream of requests is split across serving replicas: one Requests per replica.

``round_robin``: every n-th request to each replica, as a load balancer without affinity does.
``prefix``: cache-aware routing, as SGLang's router and llm-d's prefix-aware scheduler do it: a
request goes to the replica whose prefix cache already holds the longest leading run of its
prompt blocks (its ``hash_ids``; a session's later turns start with what its earlier turns left
there), unless that replica has been given more than ``BALANCE`` times the work of the least
loaded one — then, and when no replica holds any of its prefix, to the least loaded. Work is the
prompt and output tokens routed so far. What each replica holds is what was routed to it (prompts
and the answers they complete), an upper bound on its cache: the simulator then runs each
replica's own cache, eviction included.
"""

from __future__ import annotations

from memsim.workloads.trace import Requests

BALANCE = 1.25  # most work a replica may carry over the least loaded before affinity yields


def subset(requests: Requests, picks: list[int]) -> Requests:
    """The requests at ``picks`` (ascending: arrival order is kept)."""
    cols = [requests.arrival_s, requests.prompt_len, requests.output_len]
    opt = [requests.hash_ids, requests.answer_hash_ids]
    return Requests(*([c[i] for i in picks] for c in cols),
                    *([c[i] for i in picks] if c is not None else None for c in opt))


def route(requests: Requests, n: int, policy: str = "round_robin") -> list[Requests]:
    """One Requests per replica (see the module docstring)."""
    count = len(requests)
    if n <= 1:
        return [requests]
    if policy == "round_robin" or requests.hash_ids is None:
        return [subset(requests, list(range(k, count, n))) for k in range(n)]
    held: list[set] = [set() for _ in range(n)]
    load = [0] * n
    picks: list[list[int]] = [[] for _ in range(n)]
    answers = requests.answer_hash_ids
    for i, hashes in enumerate(requests.hash_ids):
        match = [0] * n
        for r in range(n):
            have = held[r]
            for h in hashes:
                if h not in have:
                    break
                match[r] += 1
        least = min(range(n), key=lambda r: (load[r], r))
        best = max(range(n), key=lambda r: (match[r], -load[r], -r))
        if match[best] == 0 or load[best] > BALANCE * load[least]:
            best = least
        picks[best].append(i)
        held[best].update(hashes)
        if answers is not None and answers[i]:
            held[best].update(answers[i])
        load[best] += requests.prompt_len[i] + requests.output_len[i]
    return [subset(requests, p) for p in picks]
