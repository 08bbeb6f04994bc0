"""Property tests: for random small models and jobs, every trace is self-consistent."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memsim.workloads.inference import build_inference
from memsim.workloads.models import parse_config
from memsim.workloads.spec import Workload
from memsim.workloads.training import build_training

CLASS_KEYS = {"weight": "weights", "grad": "gradients", "optimizer": "optimizer", "activation": "activations",
              "kv": "kv_cache"}


@st.composite
def architectures(draw):
    family = draw(st.sampled_from(["llama", "mixtral", "qwen2", "opt", "gpt2"]))
    head_dim = draw(st.sampled_from([16, 32]))
    kv = draw(st.sampled_from([1, 2, 4]))
    heads = kv * draw(st.integers(1, 3))
    hidden, layers, vocab = heads * head_dim, draw(st.integers(1, 4)), draw(st.integers(64, 512))
    if family == "gpt2":
        config = {"model_type": "gpt2", "n_embd": hidden, "n_head": heads, "n_layer": layers,
                  "vocab_size": vocab, "n_positions": 256}
    elif family == "opt":
        config = {"model_type": "opt", "hidden_size": hidden, "num_attention_heads": heads,
                  "num_hidden_layers": layers, "ffn_dim": 4 * hidden, "vocab_size": vocab,
                  "max_position_embeddings": 256}
    else:
        config = {"model_type": family, "hidden_size": hidden, "num_attention_heads": heads,
                  "num_key_value_heads": kv, "num_hidden_layers": layers, "intermediate_size": 3 * hidden,
                  "vocab_size": vocab, "max_position_embeddings": 256}
        if family == "mixtral":
            config |= {"num_local_experts": 4, "num_experts_per_tok": 2}
    return parse_config(config, name=family)


def check(trace):
    pdb = trace.meta["per_device_bytes"]
    by_class = trace.bytes_by_class()
    for cls, key in CLASS_KEYS.items():
        assert by_class[cls] == pdb[key]
    for block in trace.blocks:
        for op in block.ops:
            assert op.flops >= 0 and op.bytes_read >= 0 and op.bytes_written >= 0
            assert all(n in trace.tensors for n in (*op.inputs, *op.outputs))
    lifetimes = trace.lifetimes()
    assert all(0 <= start <= end for start, end in lifetimes.values())
    assert trace.meta["flops_per_step"] > 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures(), stage=st.integers(0, 3), nd=st.sampled_from([1, 2, 4]),
       accum=st.integers(1, 2), flash=st.booleans(), precision=st.sampled_from(["fp32", "bf16"]),
       optimizer=st.sampled_from(["adamw", "sgd", "adam8bit"]), lora=st.booleans())
def test_training_traces_are_consistent(arch, stage, nd, accum, flash, precision, optimizer, lora):
    job = {"micro_batch": 2, "seq_len": 16, "zero_stage": stage, "data_parallel": nd, "grad_accum": accum,
           "flash_attention": flash, "precision": precision, "optimizer": optimizer,
           "lora": {"rank": 2, "targets": ["q", "v", "down"]} if lora else None}
    trace = build_training(Workload(name="p", model="x", training=job), arch)
    check(trace)
    if not lora:
        states = sum(trace.meta["per_device_bytes"][k] for k in ("weights", "gradients", "optimizer"))
        full = build_training(Workload(name="p", model="x", training={**job, "zero_stage": 0}), arch)
        full_states = sum(full.meta["per_device_bytes"][k] for k in ("weights", "gradients", "optimizer"))
        assert states <= full_states  # sharding never adds bytes


@settings(max_examples=20, deadline=None)
@given(arch=architectures(), batch=st.integers(1, 4), prompt=st.integers(1, 64), gen=st.integers(1, 8),
       bits=st.sampled_from([16, 8, 4, 2]))
def test_inference_traces_are_consistent(arch, batch, prompt, gen, bits):
    job = {"batch_size": batch, "prompt_len": prompt, "gen_len": gen, "kv_bits": bits}
    trace = build_inference(Workload(name="p", model="x", inference=job), arch)
    check(trace)
    # head_dim is a multiple of 16, so the bit count is whole bytes in every layer
    assert trace.meta["per_device_bytes"]["kv_cache"] * 8 == (
        2 * arch.layers * arch.kv_dim * bits * batch * (prompt + gen))
