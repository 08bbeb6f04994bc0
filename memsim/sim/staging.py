"""Serial staging: a multi-hop copy that finishes each hop before it starts the next.

memsim's default moves a copy that bounces through an intermediate tier (NVMe → DRAM → GPU) in
pipelined 64 MiB chunks: both hops busy at once, the copy at the slower hop's rate. DeepSpeed's
NVMe parameter path does not: ``AsyncPartitionedParameterSwapper.swap_in`` reads a parameter's
partition from NVMe into a pinned swap buffer with async I/O and waits for the read to finish
(``synchronize_reads``) before ZeRO-3's fetch copies the buffer to the GPU
(``param.ds_tensor.to(device)`` in ``partition_parameters.py``): read, then copy. A copy of
``B`` bytes then takes ``B / r_read + B / r_copy`` instead of ``B / min(r_read, r_copy)``
(DeepSpeedExamples' ZeRO-Inference OPT-175B NVMe row on an A6000: 5.6 GB/s drive, ~25 GB/s
PCIe, 4.4 GB/s implied end to end; 1 / (1/5.6 + 1/25) = 4.6 GB/s).

The swapper reads synchronously (``swap_in(..., async_op=False)``), so the next parameter's read
starts only after this one is on its way to the GPU: the copy holds its first hop's engine (the
NVMe reads) until its last hop has delivered, and each later hop's engine (PCIe) only while that
hop runs, leaving it free for other copies (activations, the KV of CPU attention) during the
read. The whole copy sits in the bounce tier between its hops.
"""

from __future__ import annotations

from memsim.sim.flows import IO_REQUEST_BYTES, Engine, Flow


def hop_plans(copier, src: str, dst: str) -> list[tuple]:
    """Per hop of the route ``src`` → ``dst``: (engine, ports, rate, latency, from, to)."""
    key = ("serial", src, dst)
    plans = copier._plans.get(key)
    if plans is None:
        plans = []
        for hop in copier.topo.route(src, dst).hops:
            engine = copier.engines.get(hop.engine)
            if engine is None:
                engine = copier.engines[hop.engine] = Engine(hop.engine, copier.env)
            ports = ((f"{hop.link.port}|{'fwd' if hop.src == hop.link.ends[0] else 'rev'}",)
                     if hop.link.port else ())
            latency = hop.link.latency + copier.system.tiers[hop.src].latency
            plans.append((engine, ports, hop.rate, latency, hop.src, hop.dst))
        copier._plans[key] = plans
    return plans


def run_serial(copier, src: str, dst: str, nbytes: int, key: str, op: str, request: int,
               alloc: int, copies: int = 1):
    """simpy generator: the copy hop by hop; yields until the last hop has delivered. ``alloc``
    bytes are taken on ``dst`` when the first hop starts (as ``Copier.copy`` does); each hop
    pays its latency once per one of ``copies`` (Copier.copy)."""
    env, flows, pools = copier.env, copier.flows, copier.pools
    plans = hop_plans(copier, src, dst)
    first = plans[0][0]
    for i, (engine, ports, rate, latency, a, b) in enumerate(plans):
        yield engine.acquire()
        start = env._now
        if i == 0 and alloc > 0:
            pools[dst].alloc(key, alloc, op)
        if i < len(plans) - 1:  # the whole copy waits in this bounce buffer for the next hop
            pools[b].alloc("bounce:" + key, nbytes, op)
        if latency > 0:
            yield env.timeout(latency * copies)
        if nbytes > 0:
            req = float(min(nbytes, request or IO_REQUEST_BYTES))
            shares, curves = flows.shape(ports, a, b, req)
            yield flows.start(Flow(float(nbytes), rate, env.event(), shares, curves, (a, b)))
        if i > 0:
            pools[a].free("bounce:" + key, nbytes)
            engine.release()
        if copier.recorder is not None:
            copier.recorder.span(engine.name, key, start, env._now, {"bytes": nbytes, "op": op})
    first.release()  # the next read may start: this copy has delivered
