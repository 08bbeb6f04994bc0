"""Workload → Trace: byte sums, naming conventions, ZeRO Table 1, KV formula, determinism."""

import json

import pytest

from memsim.workloads import build_trace, load_workload
from memsim.workloads.accounting import kv_bytes, layer_activations, zero_table1_bytes
from memsim.workloads.models import load_model
from memsim.workloads.trace import LAYER, Trace

CLASS_KEYS = {"weight": "weights", "grad": "gradients", "optimizer": "optimizer", "activation": "activations",
              "kv": "kv_cache"}


def _trace(name, *overrides):
    return build_trace(load_workload(name, list(overrides)))


def test_zero_table1_formula():
    gb = [zero_table1_bytes(7_500_000_000, stage, 64) / 1e9 for stage in range(4)]
    assert gb == [120.0, 31.40625, 16.640625, 1.875]  # 120, 31.4, 16.6, 1.9 in the paper


@pytest.mark.parametrize("stage", range(4))
def test_zero_table1_through_trace(stage):
    pdb = _trace("zero-table1", f"training.zero_stage={stage}").meta["per_device_bytes"]
    states = pdb["weights"] + pdb["gradients"] + pdb["optimizer"]
    assert states == zero_table1_bytes(7_500_000_000, stage, 64)


@pytest.mark.parametrize("name", ["llama2-7b-train", "llama2-70b-lora", "zero-table1", "llama3-8b-infer",
                                  "mixtral-8x7b-infer", "qwen2.5-7b-serve"])
def test_tensor_sums_equal_per_device_bytes(name):
    trace = _trace(name)
    by_class = trace.bytes_by_class()
    pdb = trace.meta["per_device_bytes"]
    for cls, key in CLASS_KEYS.items():
        assert by_class[cls] == pdb[key], cls
    assert pdb["total"] == sum(v for k, v in pdb.items() if k != "total")


@pytest.mark.parametrize("name,overrides", [
    ("llama2-7b-train", ()), ("zero-table1", ("training.zero_stage=3",)),
    ("zero-table1", ("training.zero_stage=2", "training.grad_accum=2")),
    ("llama2-70b-lora", ()), ("opt-30b-flexgen", ()), ("llama2-70b-serve", ("serving.num_requests=50",)),
])
def test_every_named_tensor_exists_and_shapes_are_filled(name, overrides):
    trace = _trace(name, *overrides)
    for block in trace.blocks:
        for op in block.ops:
            for tensor in (*op.inputs, *op.outputs):
                assert tensor in trace.tensors
            assert op.shape is not None
            if op.kind == "matmul":
                assert len(op.shape) == 3
                assert op.flops >= 2 * op.shape[0] * op.shape[1] * op.shape[2]
            elif op.kind == "attention":
                assert len(op.shape) == 5
            else:
                assert len(op.shape) == 1
    assert trace.lifetimes()  # expansion and lifetimes work on the whole trace


def test_training_conventions():
    trace = _trace("zero-table1", "training.zero_stage=3")
    names = [b.name for b in trace.blocks]
    assert names[:6] == ["embed", "forward", "head", "backward", "embed_backward", "optimizer"]
    fwd, bwd, opt = trace.blocks[1], trace.blocks[3], trace.blocks[5]
    assert (fwd.repeat, fwd.step) == (32, 1) and (bwd.first_layer, bwd.step) == (31, -1)
    assert fwd.ops[0].kind == "comm" and fwd.ops[0].outputs == ("L{layer}.gathered",)
    assert any(op.name == "L{layer}.reduce_scatter" for op in bwd.ops)
    step = opt.ops[0]
    assert step.name == "L{layer}.adam" and step.kind == "optimizer" and step.phase == "optimizer"
    assert step.inputs == ("L{layer}.grad", "L{layer}.optim", "L{layer}.weight")
    assert step.outputs == ("L{layer}.weight",)
    for t in ("input", "weight", "grad", "optim"):
        assert f"L{LAYER}.{t}" in trace.tensors
    lifetimes = trace.lifetimes()
    gathered = lifetimes["L3.gathered"]
    assert gathered[1] - gathered[0] < 20  # freed after the layer's forward, not held to backward


def test_activations_follow_korthikanti():
    arch = load_model("gpt3-175b")  # GPT, MHA, 4h GeLU MLP, dropout: exactly sbh(34 + 5as/h)
    s, b, h, a = 2048, 1, arch.hidden, arch.heads
    acts = layer_activations(arch, b, s, 2, flash=False)
    assert acts.total == s * b * h * 34 + 5 * a * s * s * b
    flash = layer_activations(arch, b, s, 2, flash=True)
    assert flash.total == s * b * h * 34 + 4 * b * a * s  # + fp32 log-sum-exp


def test_kv_formula_llama3_8b_1m():
    assert kv_bytes(load_model("llama-3-8b"), 2**20, 16) == 128 * 2**30
    assert kv_bytes(load_model("llama-3-8b"), 2**20, 2) == 16 * 2**30
    pdb = _trace("llama3-8b-1m").meta["per_device_bytes"]
    assert pdb["kv_cache"] == 128 * 2**30


def test_lora_only_adapters_train():
    full = _trace("llama2-70b-lora", "training.lora=null").meta
    lora = _trace("llama2-70b-lora").meta
    arch = load_model("llama-2-70b")
    adapter = 80 * 16 * ((8192 + 8192) * 2 + (8192 + 1024) * 2)  # q, o: 8192→8192; k, v: 8192→1024
    assert lora["trainable_params"] == adapter
    assert lora["per_device_bytes"]["gradients"] == 2 * adapter
    assert lora["per_device_bytes"]["optimizer"] == 12 * adapter
    assert lora["per_device_bytes"]["weights"] == 2 * (arch.params + adapter)
    assert lora["flops_per_step"] < full["flops_per_step"]  # frozen base: no weight gradients


def test_inference_decode_uses_mean_context():
    trace = _trace("opt-30b-flexgen")
    decode = next(b for b in trace.blocks if b.name == "decode")
    assert decode.iterations == 31
    attn = next(op for op in decode.ops if op.kind == "attention")
    arch = load_model("opt-30b")
    ctx = 512 + 1 + 32 / 2
    assert attn.shape == (144, 56, 1, round(ctx), 128)
    kv_read = int(144 * ctx * 2 * arch.kv_dim * 2)
    assert attn.bytes_read == 144 * arch.q_dim * 2 + kv_read
    assert "L{layer}.kv" in attn.inputs
    assert trace.meta["tokens_per_step"] == 144 * 32
    # a decode attention has no calibrated rate by length (1 query over the context): rows 0;
    # a prefill one runs at its sequence length's rate
    prefill = next(op for b in trace.blocks if b.name == "prefill" for op in b.ops if op.kind == "attention")
    assert attn.rows == 0 and prefill.rows == prefill.shape[2] == 512


def test_serving_requests_are_seeded_and_deterministic():
    a = _trace("llama2-70b-serve", "serving.num_requests=200")
    b = _trace("llama2-70b-serve", "serving.num_requests=200")
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)
    c = _trace("llama2-70b-serve", "serving.num_requests=200", "serving.arrival.seed=7")
    assert a.requests.arrival_s != c.requests.arrival_s
    assert len(a.requests) == 200 and a.requests.arrival_s == sorted(a.requests.arrival_s)
    assert set(a.meta["token_costs"]) >= {"weight_bytes", "flops_per_token", "kv_bytes_per_token"}


def test_trace_json_round_trip(tmp_path):
    trace = _trace("zero-table1", "training.zero_stage=2")
    path = tmp_path / "t.json"
    trace.save(path)
    again = Trace.load(path)
    assert again.to_dict() == trace.to_dict()
    assert again.flops == trace.flops and again.num_ops == trace.num_ops


@pytest.mark.parametrize("precision,optimizer,per_param", [
    ("fp32", "adamw", (4, 4, 8)), ("bf16", "sgd", (2, 2, 8)), ("fp32", "sgd", (4, 4, 4)),
    ("bf16", "adam8bit", (2, 2, 6)),
])
def test_precision_and_optimizer_bytes(precision, optimizer, per_param):
    meta = _trace("zero-table1", "training.data_parallel=1", f"training.precision={precision}",
                  f"training.optimizer={optimizer}").meta
    psi = 7_500_000_000
    pdb = meta["per_device_bytes"]
    assert pdb["weights"] == per_param[0] * psi and pdb["gradients"] == per_param[1] * psi
    stats = pdb["optimizer"] - per_param[2] * psi
    if optimizer == "adam8bit":  # block-wise absmax: 2 states × 4 B per 2048 values, per tensor
        assert 0 < stats < psi * 8 / 2048 * 1.01
    else:
        assert stats == 0


def test_moe_counts_active_expert_flops_and_all_expert_bytes():
    trace = _trace("mixtral-8x7b-infer")
    arch = load_model("mixtral-8x7b")
    prefill = next(b for b in trace.blocks if b.name == "prefill")
    up = next(op for op in prefill.ops if op.name == "L{layer}.mlp_up")
    tokens = 16 * 2048
    assert up.flops == 2 * tokens * 2 * arch.hidden * 2 * arch.intermediate  # k=2 experts per token
    assert up.shape == (tokens * 2, arch.hidden, 2 * arch.intermediate)
    assert up.bytes_read >= 8 * arch.hidden * 2 * arch.intermediate * 2  # every expert's gate+up
    # the routed experts are their own tensor (a step streams only those its tokens pick)
    experts = trace.tensors["L{layer}.experts"].bytes
    assert experts == 8 * 3 * arch.hidden * arch.intermediate * 2
    assert trace.tensors["L{layer}.weight"].bytes + experts == arch.layer_params * 2


def test_grad_accum_repeats_microbatches_and_keeps_zero3_buffers_short():
    one = _trace("zero-table1", "training.zero_stage=3")
    three = _trace("zero-table1", "training.zero_stage=3", "training.grad_accum=3")
    assert [b.name for b in three.blocks].count("forward") == 3
    assert three.meta["tokens_per_step"] == 3 * one.meta["tokens_per_step"]
    assert three.meta["flops_per_step"] == pytest.approx(3 * one.meta["flops_per_step"])
    assert three.meta["per_device_bytes"] == one.meta["per_device_bytes"]
    lifetimes = three.lifetimes()
    for name in ("L5.gathered", "L5.gathered.mb1", "L5.gathered_bwd.mb2"):
        start, end = lifetimes[name]
        assert end - start < 20
    reduce_ops = [op for b in three.blocks for op in b.ops if op.name.endswith("allreduce")]
    assert not reduce_ops  # stage 3 reduce-scatters instead


def test_stage0_allreduce_only_on_the_last_microbatch():
    trace = _trace("zero-table1", "training.grad_accum=2")
    backward = [b for b in trace.blocks if b.name == "backward"]
    assert [any(op.name == "L{layer}.allreduce" for op in b.ops) for b in backward] == [False, True]
    allreduce = next(op for op in backward[1].ops if op.name == "L{layer}.allreduce")
    layer_grad = trace.tensors["L{layer}.grad"].bytes
    assert allreduce.bytes_read == int(2 * 2 * 63 / 64 * layer_grad)


def test_chunked_prefill_sizes_activations_by_the_chunk():
    whole = _trace("llama3-8b-1m", "inference.prefill_chunk=null").meta
    chunked = _trace("llama3-8b-1m").meta
    assert chunked["per_device_bytes"]["kv_cache"] == whole["per_device_bytes"]["kv_cache"]
    ratio = whole["per_device_bytes"]["activations"] / chunked["per_device_bytes"]["activations"]
    assert ratio > 300
    assert chunked["prefill_chunks"] == 341


def test_training_and_inference_traces_are_deterministic():
    for name in ("llama2-70b-lora", "opt-175b-flexgen"):
        a, b = _trace(name).to_dict(), _trace(name).to_dict()
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_tied_embeddings_under_zero3(tmp_path):
    path = tmp_path / "gpt3.yaml"
    path.write_text("name: gpt3\nmodel: gpt3-175b\n"
                    "training: {seq_len: 2048, zero_stage: 3, data_parallel: 8}\n")
    trace = build_trace(load_workload(str(path)))
    arch = load_model("gpt3-175b")
    assert trace.tensors["head.gathered"].bytes == 2 * (arch.head_params + arch.embed_params)
    head = next(b for b in trace.blocks if b.name == "head")
    lm_bwd = next(op for op in head.ops if op.name == "lm_head_bwd")
    assert "embed.grad_full" in lm_bwd.outputs  # the tied weight's gradient
    pdb = trace.meta["per_device_bytes"]
    states = pdb["weights"] + pdb["gradients"] + pdb["optimizer"]
    assert states == pytest.approx(16 * arch.params / 8, rel=1e-6)


def test_bad_lora_target_names_the_key(tmp_path):
    from memsim.errors import SpecError

    path = tmp_path / "w.yaml"
    path.write_text("name: w\nmodel: opt-30b\n"
                    "training: {seq_len: 128, lora: {targets: [q_proj, gate_proj]}}\n")
    with pytest.raises(SpecError, match="unknown LoRA target 'gate_proj'") as info:
        load_workload(str(path))
    assert info.value.key == "training.lora.targets.1"
