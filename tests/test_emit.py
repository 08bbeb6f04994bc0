"""From plan to action: each framework config memsim emits, read back with memsim's importers and
simulated, predicts what the plan predicted (or, where the framework cannot express the plan,
a note says so and the prediction is the emitted config's)."""

from __future__ import annotations

import json
import shlex

import pytest

from memsim import emit
from memsim.emit import accelerate, flexgen, vllm
from memsim.errors import SpecError
from memsim.hardware import load_system
from memsim.planners import Plan, load_preset, run_preset
from memsim.planners.baselines import accelerate as accelerate_baseline
from memsim.sim import simulate
from memsim.workloads import load_trace
from memsim.workloads.imports import deepspeed_job

SMALL_OPT = ["inference.batch_size=8", "inference.prompt_len=64", "inference.gen_len=4"]


@pytest.fixture(scope="module")
def t4():
    return load_system("t4-gcp")


@pytest.fixture(scope="module")
def h100():
    return load_system("h100-sxm")


@pytest.fixture(scope="module")
def opt(t4):
    return load_trace("opt-30b-flexgen", SMALL_OPT)


def same_prediction(system, trace, plan, emitted) -> None:
    ours, theirs = simulate(system, trace, plan), simulate(system, trace, emitted.plan)
    assert ours.feasible and theirs.feasible
    assert theirs.step_time_s == pytest.approx(ours.step_time_s, rel=1e-12)
    assert theirs.peak_bytes == ours.peak_bytes


def round_trip(fmt, system, trace, plan, tmp_path, name):
    """Emit, write, read the file back as a user's input would be read, and return both."""
    emitted = emit.emit(fmt, system, trace, plan)
    path = tmp_path / name
    path.write_text(emitted.text)
    assert emit.detect(path, emitted.text) == fmt
    return emitted, emit.load_plan(path, system, trace)


# -- FlexGen -----------------------------------------------------------------------------------


def test_flexgen_policy_round_trip(t4, opt, tmp_path):
    plan = run_preset(load_preset("flexgen-opt30b-paper"), t4, opt)
    plan.gpu_batch_size, plan.num_gpu_batches = 4, 2
    emitted, back = round_trip("flexgen", t4, opt, plan, tmp_path, "policy.args")
    words = shlex.split(emitted.text)
    at = words.index("--percent")
    assert words[at + 1: at + 7] == ["20", "80", "0", "100", "0", "100"]
    assert words[words.index("--gpu-batch-size") + 1] == "4"
    assert words[words.index("--num-gpu-batches") + 1] == "2"
    assert "--cpu-cache-compute" in words and words[words.index("--model") + 1] == "facebook/opt-30b"
    assert emitted.notes == []
    same_prediction(t4, opt, plan, emitted)
    assert simulate(t4, opt, back).step_time_s == simulate(t4, opt, emitted.plan).step_time_s


def test_flexgen_rounds_to_whole_percent_and_says_so(t4, opt):
    plan = Plan(placement={"weight": {"hbm": 0.334, "dram": 0.5, "ssd": 0.166}},
                gpu_batch_size=8, num_gpu_batches=1, pinned=False, prefetch_depth=0)
    emitted = emit.emit("flexgen", t4, opt, plan)
    args = flexgen.parse_args(emitted.text, "x")
    assert args["--percent"] == [33, 50, 100, 0, 100, 0]
    assert args["--pin-weight"] == "false" and args["--overlap"] == "false" and "--offload-dir" in args
    assert any("whole percentages" in n for n in emitted.notes)
    assert emitted.plan.placement["weight"] == pytest.approx({"hbm": 0.33, "dram": 0.5, "ssd": 0.17})
    assert emitted.plan.pinned is False and emitted.plan.prefetch_depth == 0


def test_flexgen_refuses_what_it_cannot_run(t4, h100, opt, tmp_path):
    with pytest.raises(SpecError, match="does not run training"):
        emit.emit("flexgen", h100, load_trace("llama2-7b-train"), Plan())
    with pytest.raises(SpecError, match="4 bits only"):
        emit.emit("flexgen", t4, load_trace("opt-30b-flexgen", [*SMALL_OPT, "inference.kv_bits=8"]), Plan())
    wrong = ("python -m flexgen.flex_opt --model facebook/opt-30b --percent 100 0 100 0 100 0 "
             "--gpu-batch-size 3")
    with pytest.raises(SpecError) as err:
        flexgen.read(wrong, t4, opt, "mine.args")
    assert err.value.key == "--gpu-batch-size" and err.value.file == "mine.args"


# -- DeepSpeed ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, device", [("zero-offload", "cpu"), ("zero-infinity", "nvme")])
def test_deepspeed_training_round_trip(h100, preset, device, tmp_path):
    trace = load_trace("llama2-7b-train")
    plan = run_preset(load_preset(preset), h100, trace)
    emitted, back = round_trip("deepspeed", h100, trace, plan, tmp_path, "ds_config.json")
    ds = json.loads(emitted.text)
    zero = ds["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == device
    # the baseline's pinning is what gets emitted (zero-offload: DeepSpeed's default, pageable)
    assert zero["offload_optimizer"]["pin_memory"] is plan.pinned
    assert ds["train_batch_size"] == 1 and ds["bf16"]["enabled"] is True
    job = deepspeed_job(ds, tmp_path / "ds_config.json")  # the workload importer agrees on the job
    assert (job["micro_batch"], job["grad_accum"], job["precision"]) == (1, 1, "bf16")
    if preset == "zero-infinity":
        assert zero["stage"] == 3 and zero["offload_param"]["device"] == "nvme"
        assert "activation_checkpointing" in ds
    else:  # the workload says stage 0, where DeepSpeed would not offload at all
        assert zero["stage"] == 2 and any("stage 1-3" in n for n in emitted.notes)
    same_prediction(h100, trace, plan, emitted)
    assert back.placement == emitted.plan.placement


def test_deepspeed_per_layer_recompute_becomes_full_checkpointing(h100):
    trace = load_trace("llama2-7b-train", ["training.micro_batch=2"])
    plan = run_preset(load_preset("checkpoint-sqrt"), h100, trace)
    emitted = emit.emit("deepspeed", h100, trace, plan)
    assert "activation_checkpointing" in json.loads(emitted.text)
    assert any("checkpoints every layer" in n for n in emitted.notes)
    assert emitted.plan.activations == "recompute" and not emitted.plan.layer_policy
    nearest = run_preset(load_preset("checkpoint-full"), h100, trace)
    assert simulate(h100, trace, emitted.plan).step_time_s == simulate(h100, trace, nearest).step_time_s


def test_zero_inference_round_trip(t4, opt):
    from memsim.workloads.param_tensors import PERSISTENCE_DEFAULT, fetched_copies

    copies = fetched_copies(opt.meta, PERSISTENCE_DEFAULT)  # ZeRO-3 fetches tensor by tensor
    plan = Plan(placement={"weight": {"dram": 1.0}}, prefetch_depth=2, pinned=True,
                weight_copies=copies)
    one_copy = emit.emit("deepspeed", t4, opt, Plan(placement={"weight": {"dram": 1.0}}))
    assert any("its own copy" in note for note in one_copy.notes)  # not what ZeRO-3 does
    emitted = emit.emit("deepspeed", t4, opt, plan)
    zero = json.loads(emitted.text)["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert zero["stage3_prefetch_bucket_size"] == 2 * accelerate_layer_params(opt)
    assert emitted.notes == []
    same_prediction(t4, opt, plan, emitted)


def accelerate_layer_params(trace) -> int:
    from memsim.emit.common import weight_bytes

    return weight_bytes(trace)["layer"] // 2  # fp16


def test_deepspeed_config_for_another_job_is_refused(h100, tmp_path):
    trace = load_trace("llama2-7b-train")
    text = json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0}})
    with pytest.raises(SpecError) as err:
        emit.read("deepspeed", text, h100, trace, "theirs.json")
    assert err.value.key == "train_micro_batch_size_per_gpu" and "training.micro_batch=4" in str(err.value)


# -- Accelerate --------------------------------------------------------------------------------


def test_accelerate_device_map_round_trip(t4, opt, tmp_path):
    plan = accelerate_baseline(t4, opt, {})
    first = emit.emit("accelerate", t4, opt, plan)
    doc = json.loads(first.text)
    names = list(doc["device_map"])
    assert names[0] == "model.decoder.embed_tokens" and "model.decoder.layers.47" in names
    assert names[-1] == "lm_head"
    on_gpu = sum(1 for k, v in doc["device_map"].items() if ".layers." in k and v == 0)
    assert 0 < on_gpu < 48 and set(doc["device_map"].values()) <= {0, "cpu"}
    # whole layers: the GPU share can only shrink, by less than one layer
    layer = 1 / 48
    assert plan.placement["weight"]["hbm"] - layer < first.plan.placement["weight"]["hbm"] \
        <= plan.placement["weight"]["hbm"] + 1e-9
    assert first.plan.prefetch_depth == 0 and first.plan.pinned is False
    # a plan of whole layers is expressed exactly: emitting it again changes nothing
    again, back = round_trip("accelerate", t4, opt, first.plan, tmp_path, "device_map.json")
    assert json.loads(again.text)["device_map"] == doc["device_map"] and again.notes == []
    same_prediction(t4, opt, first.plan, again)
    assert back.placement == again.plan.placement


def test_accelerate_auto_with_max_memory_is_accelerates_fill(t4, opt):
    text = json.dumps({"device_map": "auto", "max_memory": {"0": "10GiB", "cpu": "100GiB"}})
    plan = emit.read("accelerate", text, t4, opt, "mine.json")
    want = accelerate_baseline(t4, opt, {"max_memory": {"gpu": "10GiB", "cpu": "100GiB"}})
    assert plan.placement == want.placement and plan.prefetch_depth == 0 and not plan.pinned


def test_accelerate_names_a_bad_module(t4, opt):
    text = json.dumps({"device_map": {"model.decoder.layers.0.self_attn": 0}})
    with pytest.raises(SpecError) as err:
        accelerate.read(text, t4, opt, "mine.json")
    assert err.value.key == "device_map.model.decoder.layers.0.self_attn"
    with pytest.raises(SpecError, match="did you mean"):
        accelerate.read(json.dumps({"device_map": {"model.decoder.layerz.0": 0}}), t4, opt, "mine.json")


# -- vLLM --------------------------------------------------------------------------------------


def test_vllm_serving_round_trip(tmp_path):
    system = load_system("l4")
    trace = load_trace("qwen2.5-7b-serve", ["serving.num_requests=40"])
    plan = run_preset(load_preset("vllm-swap"), system, trace)
    emitted, back = round_trip("vllm", system, trace, plan, tmp_path, "vllm.yaml")
    args = vllm.parse_args(emitted.text, "x")
    assert args["model"] == "Qwen/Qwen2.5-7B" and args["preemption-mode"] == "swap"
    assert (args["swap-space"], args["max-num-seqs"], args["max-num-batched-tokens"]) == (8, 128, 4096)
    assert args["dtype"] == "bfloat16" and args["gpu-memory-utilization"] == 0.9
    assert emitted.notes == []
    same_prediction(system, trace, plan, emitted)
    assert back.serving == plan.serving


def test_vllm_cpu_offload_from_a_command_line(t4, opt):
    from memsim.emit.common import GIB, weight_bytes

    line = "vllm serve facebook/opt-30b --cpu-offload-gb 40 --max-num-seqs=8 --kv-cache-dtype auto"
    plan = emit.read("vllm", line, t4, opt, "serve.sh")
    share = 40 * GIB / weight_bytes(opt)["total"]
    assert plan.placement["weight"] == pytest.approx({"hbm": 1 - share, "dram": share})
    assert plan.prefetch_depth == 0 and plan.pinned
    emitted = emit.emit("vllm", t4, opt, plan)
    assert vllm.parse_args(emitted.text, "x")["cpu-offload-gb"] == 40
    ours, theirs = simulate(t4, opt, plan), simulate(t4, opt, emitted.plan)
    assert theirs.step_time_s == pytest.approx(ours.step_time_s, rel=1e-6)


def test_vllm_refuses_a_kv_cache_it_has_no_dtype_for(t4):
    trace = load_trace("opt-30b-flexgen", [*SMALL_OPT, "inference.kv_bits=4"])
    with pytest.raises(SpecError, match=r"auto .* or fp8"):
        emit.emit("vllm", t4, trace, Plan())
    with pytest.raises(SpecError) as err:
        emit.read("vllm", "kv-cache-dtype: fp8\n", t4, load_trace("opt-30b-flexgen", SMALL_OPT), "v.yaml")
    assert err.value.key == "kv-cache-dtype"


def test_unknown_format_suggests_the_right_one():
    with pytest.raises(SpecError, match="did you mean 'vllm'"):
        emit.default_path("vlm")


def test_a_tier_the_framework_cannot_name_is_its_nearest_device():
    system = load_system("cxl-host")
    trace = load_trace("opt-30b-flexgen", SMALL_OPT)
    plan = Plan(placement={"weight": {"hbm": 0.5, "cxl": 0.5}}, gpu_batch_size=8, num_gpu_batches=1)
    emitted = emit.emit("flexgen", system, trace, plan)
    assert any("cannot name tier cxl" in n for n in emitted.notes)
    assert emitted.plan.placement["weight"] == {"hbm": 0.5, "dram": 0.5}


def test_vllm_reads_engine_args_with_python_names(t4, opt):
    plan = emit.read("vllm", "cpu_offload_gb: 20\nmax_num_seqs: 8\ndtype: float16\n", t4, opt, "args.yaml")
    assert set(plan.placement["weight"]) == {"hbm", "dram"} and plan.prefetch_depth == 0
    with pytest.raises(SpecError) as err:
        emit.read("vllm", "dtype: bfloat16\n", t4, opt, "args.yaml")
    assert err.value.key == "dtype" and "inference.dtype=bf16" in str(err.value)


def test_paper_knobs_the_frameworks_lack_are_named(h100):
    """A plan using HeadInfer's head-wise streaming emits with a note, not silently without it."""
    trace = load_trace("llama2-7b-train")
    plan = run_preset(load_preset("zero-offload"), h100, trace)
    plan.kv_head_groups = 4
    emitted = emit.emit("deepspeed", h100, trace, plan)
    assert any("kv_head_groups" in n and "HeadInfer" in n for n in emitted.notes)
    assert emitted.plan.kv_head_groups is None
