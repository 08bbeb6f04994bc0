"""The copy a lower-tier prefix hit costs: a DRAM hit is used only when the link makes loading it
quicker than recomputing it, and layer-wise loading hides the copy behind the prefill."""

from __future__ import annotations

import json

import pytest

from memsim.contracts.plan import Plan, ServingPolicy
from memsim.sim import simulate
from memsim.sim.serving import ServingEngine
from tests.test_prefix_cache import BLOCK, cached_trace, chat_requests
from tests.test_sim_engine import make_system

HBM = {"kind": "hbm", "capacity": "3.3GB", "read_bw": "1000TB/s", "write_bw": "1000TB/s"}
PLAN = Plan(serving=ServingPolicy(max_num_seqs=8))


def system(bandwidth: str, latency: str = "5us"):
    links = [{"name": "pcie", "kind": "pcie", "ends": ["hbm", "dram"], "bandwidth": bandwidth,
              "latency": latency},
             {"name": "nvme", "kind": "nvme", "ends": ["dram", "ssd"], "bandwidth": "2GB/s"}]
    return make_system(tiers__hbm=HBM, links=links)


def dram_trace(load: str = "layerwise"):
    trace = cached_trace(chat_requests(1, n=80))
    trace.meta["kv_cache"].update(tiers={"dram": 64 * 10**9}, load=load)
    return trace


def loader(bandwidth: str, latency: str = "5us"):
    eng = ServingEngine(system(bandwidth, latency), dram_trace(), PLAN, False)
    eng._setup()
    return eng.loader


def test_the_load_or_recompute_choice_flips_where_the_link_breaks_even():
    tokens = 4 * BLOCK
    probe = loader("10GB/s")
    kvb = probe.tc.kv_bytes_per_token
    lat, _ = probe.link("dram")
    recompute = probe.recompute_time(0, tokens)
    # load = transfers × latency + bytes / bw; solve load == recompute for bw
    even = tokens * kvb / (recompute - probe.transfers(tokens) * lat)
    assert even > 0
    for factor, want in ((1.25, 4), (0.8, 0)):
        got = loader(f"{even * factor}B/s").best_cut([["dram", 4]], BLOCK, tokens)
        assert got == want, (factor, got)
    # HBM blocks are free: a slow link only cuts at the first lower-tier block
    slow = loader(f"{even * 0.5}B/s")
    assert slow.best_cut([["hbm", 2], ["dram", 2]], BLOCK, tokens) == 2


def test_a_slow_link_recomputes_what_a_fast_one_loads_and_both_beat_forcing_the_other():
    fast = simulate(system("10GB/s"), dram_trace(), PLAN)
    slow = simulate(system("20MB/s"), dram_trace(), PLAN)
    hbm_only = simulate(system("20MB/s"), cached_trace(chat_requests(1, n=80)), PLAN)
    assert fast.serving.prefix_hits_by_tier["dram"] > 0
    assert fast.link_busy["pcie:dram->hbm"] > 0
    assert slow.serving.prefix_hits_by_tier["dram"] == 0  # loading would take longer
    assert slow.link_busy.get("pcie:dram->hbm", 0) == 0
    # every DRAM hit declined: the run is the HBM-only one
    assert slow.serving.prefix_hit_rate == pytest.approx(hbm_only.serving.prefix_hit_rate)
    assert slow.serving.ttft_s == pytest.approx(hbm_only.serving.ttft_s)
    assert fast.serving.ttft_s["mean"] < hbm_only.serving.ttft_s["mean"]


def test_layerwise_loading_hides_the_copy_behind_the_prefill():
    sys_ = system("10GB/s")
    layerwise = simulate(sys_, dram_trace("layerwise"), PLAN)
    blocking = simulate(sys_, dram_trace("blocking"), PLAN)
    assert layerwise.serving.prefix_hits_by_tier == blocking.serving.prefix_hits_by_tier
    assert layerwise.breakdown["exposed_transfer"] < blocking.breakdown["exposed_transfer"]
    assert layerwise.serving.ttft_s["mean"] < blocking.serving.ttft_s["mean"]


def test_every_chunk_of_every_layer_pays_the_link_latency():
    probe = loader("10GB/s", latency="1ms")
    assert probe.transfers(1000) == 4 * probe.layers  # 256-token chunks
    flat = loader("10GB/s", latency="0us")
    assert probe.load_time("dram", 1000) - flat.load_time("dram", 1000) == pytest.approx(
        probe.transfers(1000) * 1e-3)


@pytest.mark.parametrize("override, key", [
    ("serving.kv_cache.load=sideways", "serving.kv_cache.load"),
    ("serving.kv_cache.chunk_tokens=0", "serving.kv_cache.chunk_tokens"),
])
def test_a_bad_load_key_exits_2_naming_it(override, key):
    from tests.test_conversations import _cli
    p = _cli("simulate", "--hardware", "h100-sxm", "--workload", "llama2-70b-serve-chat",
             "--set", override, "--json")
    assert p.returncode == 2, p.stderr
    assert key in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_simulate_json_reports_dram_hits_of_the_chat_workload():
    from tests.test_conversations import _cli
    p = _cli("simulate", "--hardware", "h200", "--workload", "llama2-70b-serve-chat",
             "--set", "serving.num_requests=600", "--json")
    assert p.returncode == 0, p.stderr
    sv = json.loads(p.stdout)["serving"]
    assert sv["completed"] == 600 and sv["prefix_hits_by_tier"]["dram"] > 0
