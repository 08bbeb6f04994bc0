"""The torch tracer: FLOPs equal FlopCounterMode's, nothing real is allocated, bytes add up."""

from __future__ import annotations

import json
import resource
from collections import Counter

import pytest

torch = pytest.importorskip("torch")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from memsim.cli import app  # noqa: E402
from memsim.errors import SpecError  # noqa: E402
from memsim.workloads import torch_examples as ex  # noqa: E402
from memsim.workloads import torch_trace as tt  # noqa: E402
from memsim.workloads.trace import Trace  # noqa: E402

EX = "memsim.workloads.torch_examples"
CASES = {  # factory → its forward inputs
    "mlp": ["4x64"],
    "transformer_block": ["2x16x128"],
    "convnet": ["2x3x32x32"],
    "tiny_gpt": ["2x32:int64"],
}


def _trace(factory: str, train: bool) -> Trace:
    return tt.trace_factory(f"{EX}:{factory}", CASES[factory], train=train)


def _flop_counter(factory: str, train: bool) -> FlopCounterMode:
    """FlopCounterMode around the same module's forward (and backward), on the meta device."""
    module = tt.build_module(getattr(ex, factory), factory, None)
    inputs = tt.make_inputs([tt.parse_input(s) for s in CASES[factory]], torch.float32)
    with FlopCounterMode(display=False) as counter:
        tt.run_module(module, inputs, train)
    return counter


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True], ids=["forward", "forward+backward"])
@pytest.mark.parametrize("factory", sorted(CASES))
def test_flops_equal_flop_counter_mode(factory: str, train: bool):
    trace = _trace(factory, train)
    counter = _flop_counter(factory, train)
    assert trace.flops == counter.get_total_flops() > 0
    assert trace.meta["flops_per_step"] == trace.flops
    # op by op too: the FLOPs per aten op name agree with FlopCounterMode's breakdown
    ours: Counter[str] = Counter()
    for block in trace.blocks:
        for op in block.ops:
            ours[op.name.split(":")[1]] += int(op.flops)
    theirs = {packet.__name__: n for packet, n in counter.get_flop_counts()["Global"].items()}
    assert {k: v for k, v in ours.items() if v} == {k: v for k, v in theirs.items() if v}


@pytest.mark.parametrize("factory", ["mlp", "convnet"])
def test_flops_equal_flop_counter_on_real_cpu_tensors(factory: str):
    """Independent of the tracer's helpers: the real module, real data, real CPU kernels."""
    torch.manual_seed(0)
    module = getattr(ex, factory)()
    x = torch.randn(*tt.parse_input(CASES[factory][0]).shape)
    with FlopCounterMode(display=False) as counter:
        module(x).sum().backward()
    assert _trace(factory, train=True).flops == counter.get_total_flops()


def test_backward_costs_twice_forward_for_an_mlp():
    fwd, both = _trace("mlp", False), _trace("mlp", True)
    # first layer's input needs no gradient: backward is 2× forward less that one matmul
    first = 2 * 4 * 64 * 256
    assert both.flops == 3 * fwd.flops - first


def test_seven_billion_parameters_allocate_nothing():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    module = tt.build_module(ex.linear_stack, "linear_stack", torch.bfloat16)
    trace = tt.trace_module(module, [tt.parse_input("1x4096")], train=True)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert trace.meta["params"] >= 7e9
    assert all(p.device.type == "meta" for p in module.parameters())
    assert grown * 1024 < 2**30, f"RSS grew by {grown / 2**20:.2f} GiB"
    assert trace.meta["per_device_bytes"]["weights"] == 2 * trace.meta["params"]  # bf16
    assert trace.meta["per_device_bytes"]["gradients"] == 2 * trace.meta["params"]


def test_weights_and_grads_equal_parameter_bytes():
    trace = _trace("tiny_gpt", train=True)
    module = ex.tiny_gpt()
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    by_class = trace.bytes_by_class()
    assert by_class["weight"] == trace.meta["per_device_bytes"]["weights"] == param_bytes
    assert by_class["grad"] == param_bytes
    assert trace.meta["params"] == sum(p.numel() for p in module.parameters())
    assert {n for n, t in trace.tensors.items() if t.cls == "grad"} == {
        f"{n}.grad" for n, _ in module.named_parameters()}
    # buffers are module state too: the conv net's batch-norm statistics are weights, not grads
    conv = _trace("convnet", train=True)
    real = ex.convnet()
    assert conv.bytes_by_class()["weight"] == sum(
        t.numel() * t.element_size() for t in (*real.parameters(), *real.buffers()))
    assert conv.bytes_by_class()["grad"] == sum(p.numel() * p.element_size() for p in real.parameters())


def test_structure_phases_lifetimes_and_kinds():
    trace = _trace("tiny_gpt", train=True)
    assert trace.kind == "module" and [b.name for b in trace.blocks] == ["forward", "backward"]
    assert not any(b.templated for b in trace.blocks)
    assert {op.phase for op in trace.blocks[0].ops} == {"forward"}
    assert {op.phase for op in trace.blocks[1].ops} == {"backward"}
    ops = [op for b in trace.blocks for op in b.ops]
    for op in ops:  # every name an op uses is a tensor; FLOPs only on matmuls
        assert all(name in trace.tensors for name in (*op.inputs, *op.outputs))
        assert op.flops == 0 or op.kind == "matmul"
        if op.kind == "matmul":
            m, k, n = op.shape
            assert op.flops == 2 * m * k * n
    assert {"matmul", "embedding", "elementwise", "loss"} <= {op.kind for op in ops}
    assert trace.meta["tokens_per_step"] == 2 * 32
    # views never appear as ops (they move no bytes) and are never separate tensors
    assert not {op.name.split(":")[1] for op in ops} & {"view", "t", "transpose", "detach", "_unsafe_view"}
    assert not any("#" in name or "@" in name for name in trace.tensors)  # the simulator's suffixes
    life = trace.lifetimes()
    n_fwd = len(trace.blocks[0].ops)
    # the embedding output is read again in backward (saved for RMSNorm): an activation
    embed = next(n for n in trace.tensors if n.startswith("Decoder.embed:embedding"))
    assert trace.tensors[embed].cls == "activation" and life[embed][1] >= n_fwd
    for name, (born, dies) in life.items():
        cls = trace.tensors[name].cls
        if cls == "grad":
            assert born >= n_fwd and dies == trace.num_ops - 1
        if cls == "workspace" and born < n_fwd:
            assert dies <= born + 1
    assert 0 < trace.meta["per_device_bytes"]["activations"] == trace.meta["peak_activation_bytes"]


def test_inference_trace_has_no_backward_and_no_grads():
    trace = _trace("transformer_block", train=False)
    assert [b.name for b in trace.blocks] == ["forward"]
    assert trace.bytes_by_class()["grad"] == 0
    assert trace.meta["tokens_per_step"] == 2  # float input: the batch


def test_dtype_casts_weights_and_default_inputs():
    trace = tt.trace_factory(f"{EX}:mlp", ["4x64"], dtype="bf16")
    fp32 = _trace("mlp", train=False)
    assert trace.meta["dtype"] == "bf16"
    assert 2 * trace.bytes_by_class()["weight"] == fp32.bytes_by_class()["weight"]
    assert trace.tensors["input0"].dtype == "bf16" and trace.tensors["input0"].bytes == 4 * 64 * 2


def test_deterministic_bytes(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _trace("tiny_gpt", train=True).save(a)
    _trace("tiny_gpt", train=True).save(b)
    assert a.read_bytes() == b.read_bytes()
    assert Trace.load(a).to_dict() == json.loads(a.read_text())


def test_factory_from_a_file_path(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text("import torch\n\ndef make():\n    return torch.nn.Linear(8, 4)\n")
    trace = tt.trace_factory(f"{path}:make", ["3x8"])
    assert trace.flops == 2 * 3 * 8 * 4 and trace.meta["params"] == 8 * 4 + 4


@pytest.mark.parametrize(("ref", "inputs", "message"), [
    (f"{EX}:mpl", ["4x64"], "did you mean 'mlp'"),
    ("no_such_pkg.models:make", ["4x64"], "no_such_pkg"),
    (f"{EX}", ["4x64"], "expected MODULE:FACTORY"),
    (f"{EX}:dtype_name", ["4x64"], "no attribute"),
    ("builtins:dict", ["4x64"], "returned a dict, not a torch.nn.Module"),
    (f"{EX}:mlp", ["4by64"], "expected BxS or BxS:dtype"),
    (f"{EX}:mlp", ["4x64:int7"], "unknown dtype"),
    (f"{EX}:mlp", ["4x65"], "aten.addmm"),
    (f"{EX}:mlp", [], "--input"),
])
def test_bad_input_is_a_spec_error(ref: str, inputs: list[str], message: str):
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        tt.trace_factory(ref, inputs)


def test_cli_trace_json_round_trip(tmp_path):
    out = tmp_path / "trace.json"
    result = CliRunner().invoke(app, ["trace", f"{EX}:mlp", "--input", "4x64", "--train",
                                      "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ops"] > 0 and doc["path"] == str(out)
    trace = Trace.load(out)
    assert trace.num_ops == doc["ops"] and trace.flops == doc["flops"] == _trace("mlp", True).flops
    assert doc["tensors"] == trace.num_tensors and doc["top_ops"][0]["kind"] == "matmul"


def test_cli_trace_table_and_bad_factory(tmp_path):
    ok = CliRunner().invoke(app, ["trace", f"{EX}:convnet", "--input", "2x3x32x32",
                                  "-o", str(tmp_path / "t.json")])
    assert ok.exit_code == 0 and "top ops by FLOPs" in ok.stdout
    bad = CliRunner().invoke(app, ["trace", f"{EX}:no_such_factory", "--input", "4x64",
                                   "-o", str(tmp_path / "t.json")])
    assert bad.exit_code == 2
    assert "no_such_factory" in bad.stderr and "Traceback" not in bad.output


@pytest.mark.parametrize("train", [False, True], ids=["forward", "forward+backward"])
@pytest.mark.parametrize("factory", ["tiny_gpt", "transformer_block"])
def test_flash_attention_matches_flop_counter_and_saves_memory(factory: str, train: bool):
    math = _trace(factory, train)
    flash = tt.trace_factory(f"{EX}:{factory}", CASES[factory], train=train, attention="flash")
    module = tt.build_module(getattr(ex, factory), factory, None)
    inputs = tt.make_inputs([tt.parse_input(s) for s in CASES[factory]], torch.float32)
    with FlopCounterMode(display=False) as counter:
        tt.run_module(module, inputs, train, attention="flash")
    assert flash.flops == counter.get_total_flops()
    calls = flash.meta["fused_attention_calls"]
    assert calls == (2 if factory == "tiny_gpt" else 1)
    attn = [op for b in flash.blocks for op in b.ops if op.kind == "attention" and op.phase == "forward"]
    assert len(attn) == calls
    b, h, q_len, kv_len, d = attn[0].shape
    assert attn[0].flops == 4 * b * h * q_len * kv_len * d
    # flash backward recomputes the scores: one more Q·Kᵀ per call than the math path's four bmm
    assert flash.flops - math.flops == (calls * 2 * b * h * q_len * kv_len * d if train else 0)
    assert torch.nn.functional.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention


def test_flash_attention_keeps_no_score_matrix():
    ref = f"{EX}:tiny_gpt"
    math = tt.trace_factory(ref, ["1x512:int64"], train=True)
    flash = tt.trace_factory(ref, ["1x512:int64"], train=True, attention="flash")
    scores = 4 * 512 * 512 * 4  # heads × L × L × fp32, per layer
    assert math.meta["peak_activation_bytes"] - flash.meta["peak_activation_bytes"] >= 2 * scores
    with pytest.raises(SpecError, match="did you mean 'flash'"):
        tt.trace_factory(ref, ["1x8:int64"], attention="flsh")


def test_module_trace_simulates():
    """The simulator accepts a module trace as it is (no plan: everything on the GPU)."""
    import memsim

    trace = tt.trace_factory(f"{EX}:mlp", ["64x64"], dtype="bf16", train=True)
    result = memsim.simulate(memsim.load_system("h100-sxm"), Trace.from_dict(trace.to_dict()))
    assert result.feasible and result.step_time_s > 0
    assert result.peak_bytes["hbm"] >= trace.meta["per_device_bytes"]["weights"]


@pytest.mark.parametrize("model", ["llama-2-7b", "llama-3-70b", "mixtral-8x7b", "opt-30b", "gpt3-175b",
                                   "qwen2.5-7b"])
def test_decoder_from_hf_config_has_the_published_parameter_count(model: str):
    from dataclasses import replace

    from memsim.workloads.models import load_model

    arch = load_model(model)
    module = tt.build_module(ex.decoder, model, None, {"model": model, "layers": 2})
    assert sum(p.numel() for p in module.parameters()) == replace(arch, layers=2).params
    # the full depth adds exactly layers × the per-layer count (Llama-2-7B: 6,738,415,616)
    assert replace(arch, layers=2).params + (arch.layers - 2) * arch.layer_params == arch.params


@pytest.mark.parametrize("attention", ["math", "flash"])
def test_moe_decoder_flops_match_and_follow_top_k(attention: str):
    from memsim.workloads.models import load_model

    ref, args = f"{EX}:decoder", ["model=mixtral-8x7b", "layers=1"]
    trace = tt.trace_factory(ref, ["1x64:int64"], train=True, attention=attention, args=args)
    module = tt.build_module(ex.decoder, "mixtral", None, tt.parse_args(args))
    with FlopCounterMode(display=False) as counter:
        tt.run_module(module, tt.make_inputs([tt.parse_input("1x64:int64")], torch.float32), True,
                      attention=attention)
    assert trace.flops == counter.get_total_flops()
    arch = load_model("mixtral-8x7b")
    # forward matmuls of the experts: tokens × k of them, 3 matrices of hidden × intermediate
    expert_fwd = sum(op.flops for op in trace.blocks[0].ops if ".experts." in op.name)
    assert expert_fwd == 2 * 64 * arch.experts_per_token * 3 * arch.hidden * arch.intermediate


def test_factory_arguments_are_checked():
    with pytest.raises(SpecError, match="did you mean 'model'"):
        tt.trace_factory(f"{EX}:decoder", ["1x8:int64"], args=["modl=llama-2-7b"])
    with pytest.raises(SpecError, match="KEY=VALUE"):
        tt.parse_args(["layers"])
    assert tt.parse_args(["layers=2", "model=opt-30b", "p=0.5", "x=true"]) == {
        "layers": 2, "model": "opt-30b", "p": 0.5, "x": True}


def test_example_decoders_run_on_real_tensors():
    """The examples are real modules: they run on CPU data, not only on meta."""
    from dataclasses import replace

    from memsim.workloads.models import load_model

    torch.manual_seed(0)
    tiny_moe = replace(load_model("mixtral-8x7b"), hidden=64, heads=4, kv_heads=2, head_dim=16,
                       intermediate=96, vocab=100, layers=1)
    for module in (ex.gpt(vocab=100), ex.Decoder(tiny_moe)):
        ids = torch.randint(0, 100, (2, 12))
        logits = module(ids)
        assert logits.shape == (2, 12, 100) and torch.isfinite(logits).all()
        logits.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


def test_plain_tensor_attributes_are_weights_and_views_are_their_base(tmp_path):
    path = tmp_path / "held.py"
    path.write_text(
        "import torch\n\n"
        "class Held(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(8, 8)\n"
        "        self.proj = torch.ones(16, 8)  # neither parameter nor buffer\n\n"
        "    def forward(self, x):\n"
        "        return self.lin(x) @ self.proj.t()\n")
    trace = tt.trace_factory(f"{path}:Held", ["4x8"])
    assert trace.tensors["const0"].cls == "weight" and trace.tensors["const0"].bytes == 16 * 8 * 4
    mm = [op for op in trace.blocks[0].ops if op.name.split(":")[1] == "mm"]
    assert len(mm) == 1 and "const0" in mm[0].inputs and mm[0].shape == (4, 8, 16)
    assert len(trace.tensors) == 2 + 1 + 1 + 2  # lin.weight, lin.bias, const0, input0, 2 outputs


def test_cli_without_torch_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # `import torch` now fails
    result = CliRunner().invoke(app, ["trace", f"{EX}:mlp", "--input", "4x64", "-o", str(tmp_path / "t")])
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "memsim trace needs torch: pip install torch==2.13.0 (CPU build)" in message


@pytest.mark.cuda
def test_flash_trace_flops_equal_flop_counter_on_cuda():
    """On a GPU, sdpa runs a fused kernel: the flash trace counts what FlopCounterMode counts there."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    module = ex.gpt().to("cuda", torch.bfloat16)
    ids = torch.randint(0, 512, (2, 128), device="cuda")
    with FlopCounterMode(display=False) as counter:
        module(ids).sum().backward()
    trace = tt.trace_factory(f"{EX}:tiny_gpt", ["2x128:int64"], dtype="bf16", train=True, attention="flash")
    assert trace.flops == counter.get_total_flops()


@pytest.mark.slow
def test_activation_checkpointing_trades_flops_for_memory():
    plain = tt.trace_factory(f"{EX}:gpt", ["2x64:int64"], train=True, args=["layers=3"])
    ckpt = tt.trace_factory(f"{EX}:gpt", ["2x64:int64"], train=True, args=["layers=3", "checkpoint=true"])
    module = tt.build_module(ex.gpt, "gpt", None, {"layers": 3, "checkpoint": True})
    with FlopCounterMode(display=False) as counter:
        tt.run_module(module, tt.make_inputs([tt.parse_input("2x64:int64")], torch.float32), True)
    assert ckpt.flops == counter.get_total_flops()
    # every block's forward runs again inside backward, up to the last tensor backward needs
    # (torch's early stop): all its matmuls but the MLP's down projection, whose output is not saved
    block_fwd = sum(op.flops for op in plain.blocks[0].ops if ".blocks." in op.name)
    down = sum(op.flops for op in plain.blocks[0].ops if ".mlp.down:" in op.name)
    assert ckpt.flops - plain.flops == block_fwd - down > 0
    assert ckpt.meta["peak_activation_bytes"] < plain.meta["peak_activation_bytes"] / 2


def test_mapping_outputs_are_summed_for_backward(tmp_path):
    path = tmp_path / "dict_out.py"
    path.write_text(
        "import torch\n\n"
        "class TwoHeads(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a, self.b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 2)\n\n"
        "    def forward(self, x):\n"
        "        return {'logits': self.a(x), 'aux': [self.b(x)], 'note': 'not a tensor'}\n")
    trace = tt.trace_factory(f"{path}:TwoHeads", ["3x8"], train=True)
    grads = {n for n, t in trace.tensors.items() if t.cls == "grad"}
    assert grads == {"a.weight.grad", "a.bias.grad", "b.weight.grad", "b.bias.grad"}
