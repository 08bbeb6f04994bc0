"""The two narrow waists: a Trace expands, sizes and round-trips exactly; a Plan checks itself."""

import pytest

from memsim.contracts.plan import Plan, ServingPolicy, trace_fingerprint
from memsim.errors import SpecError
from memsim.workloads.trace import Block, Op, Requests, Tensor, Trace


def _tiny(layers: int = 3) -> Trace:
    tensors = {t.name: t for t in [
        Tensor("embed.weight", 100, "weight"),
        Tensor("L{layer}.weight", 10, "weight"),
        Tensor("L{layer}.input", 4, "activation"),
        Tensor("L{layer}.saved", 6, "activation"),
        Tensor("L{layer}.grad", 10, "grad"),
        Tensor("tokens", 8, "activation"),
    ]}
    fwd = [Op("L{layer}.mlp", "matmul", "forward", 100.0, 14, 10, ("L{layer}.weight", "L{layer}.input"),
              ("L{layer}.saved",), shape=(2, 3, 4))]
    bwd = [Op("L{layer}.mlp_bwd", "matmul", "backward", 200.0, 20, 10,
              ("L{layer}.weight", "L{layer}.input", "L{layer}.saved"), ("L{layer}.grad",))]
    blocks = [
        Block("embed", [Op("embed", "embedding", "forward", 0.0, 108, 4, ("embed.weight", "tokens"), ())]),
        Block("forward", fwd, repeat=layers),
        Block("backward", bwd, repeat=layers, first_layer=layers - 1, step=-1),
    ]
    return Trace("tiny", "training", tensors, blocks, {"layers": layers},
                 Requests([0.0, 1.5], [10, 20], [3, 4]))


def test_expand_orders_layers_forward_then_backward():
    names = [x.name for x in _tiny().expand()]
    assert names == ["embed", "L0.mlp", "L1.mlp", "L2.mlp", "L2.mlp_bwd", "L1.mlp_bwd", "L0.mlp_bwd"]
    assert _tiny().num_ops == len(names)


def test_sizes_count_templates_once_per_layer():
    t = _tiny(layers=4)
    assert t.flops == 4 * 100 + 4 * 200
    assert t.bytes_by_class()["weight"] == 100 + 4 * 10
    assert t.bytes_by_class()["activation"] == 8 + 4 * (4 + 6)
    assert t.num_tensors == 1 + 1 + 4 * 4


def test_lifetimes_follow_class_rules():
    life = _tiny().lifetimes()
    end = _tiny().num_ops - 1
    assert life["L0.weight"] == (0, end)  # weights live all step
    assert life["L1.saved"] == (2, 5)  # born in L1's forward, dies after L1's backward
    assert life["L2.grad"] == (4, end)  # grads live until the optimizer (end of step)
    assert life["tokens"] == (0, 0)  # an input with one consumer


def test_trace_json_round_trip_is_exact(tmp_path):
    t = _tiny()
    t.save(tmp_path / "t.json")
    again = Trace.load(tmp_path / "t.json")
    assert again.to_dict() == t.to_dict()
    assert again.blocks[1].ops[0].shape == (2, 3, 4)
    assert (tmp_path / "t.json").read_bytes() == (again.save(tmp_path / "u.json") or
                                                   (tmp_path / "u.json").read_bytes())


def test_trace_version_is_checked():
    data = _tiny().to_dict()
    data["version"] = 99
    with pytest.raises(ValueError, match="version"):
        Trace.from_dict(data)


def test_plan_round_trip_and_fingerprint(tmp_path):
    plan = Plan(placement={"weight": {"hbm": 0.25, "dram": 0.75}}, activations="recompute",
                layer_policy={3: "offload"}, activation_tier="dram", serving=ServingPolicy(block_size=32),
                fingerprint=trace_fingerprint(_tiny()))
    for name in ("p.yaml", "p.json"):
        plan.save(tmp_path / name)
        again = Plan.load(tmp_path / name)
        assert again == plan
    assert again.policy(3) == "offload" and again.policy(0) == "recompute"
    assert trace_fingerprint(_tiny(3)) != trace_fingerprint(_tiny(4))


@pytest.mark.parametrize(("plan", "key"), [
    (Plan(placement={"weight": {"hbm": 0.5, "dram": 0.4}}), "placement.weight"),
    (Plan(placement={"weight": {"hbm": 0.5, "cxl": 0.5}}), "placement.weight.cxl"),
    (Plan(placement={"weights": {"hbm": 1.0}}), "placement.weights"),
    (Plan(activation_tier="nvme"), "activation_tier"),
])
def test_plan_check_names_the_key(plan, key):
    with pytest.raises(SpecError) as info:
        plan.check({"hbm", "dram"}, file="p.yaml")
    assert info.value.key == key and info.value.file == "p.yaml"


def test_plan_from_dict_rejects_unknown_keys_with_hint():
    with pytest.raises(SpecError, match="did you mean 'activations'"):
        Plan.from_dict({"activation": "keep"}, file="p.yaml")


def test_a_saved_trace_runs_wherever_a_workload_does(tmp_path):
    """`memsim simulate --workload trace.json` (e.g. a module from `memsim trace`)."""
    import json

    from typer.testing import CliRunner

    from memsim.cli import app

    path = tmp_path / "tiny.json"
    _tiny().save(path)
    run = CliRunner().invoke(app, ["simulate", "--hardware", "h100-sxm", "--workload", str(path), "--json"])
    assert run.exit_code == 0, run.output
    doc = json.loads(run.stdout)
    assert doc["feasible"] and doc["workload"] == "tiny" and doc["step_time_s"] > 0
    bad = CliRunner().invoke(app, ["simulate", "--hardware", "h100-sxm", "--workload", str(path),
                                   "--set", "inference.batch_size=2"])
    assert bad.exit_code == 2 and "cannot change a saved trace" in bad.output


def test_scratch_is_what_each_pass_writes_before_reading():
    tensors = {n: Tensor(n, 8, "activation") for n in ("hidden", "act")}
    tensors["L{layer}.weight"] = Tensor("L{layer}.weight", 8, "weight")
    layer = [Op("L{layer}.up", "matmul", "prefill", 1.0, 8, 8, ("hidden", "L{layer}.weight"), ("act",)),
             Op("L{layer}.down", "matmul", "prefill", 1.0, 8, 8, ("act", "L{layer}.weight"), ("hidden",))]
    trace = Trace("s", "inference", tensors, [Block("prefill", layer, repeat=3)], {"layers": 3})
    assert trace.scratch() == {"act"}  # hidden is read before its pass writes it: carried state


def test_policy_counts_cover_every_layer():
    plan = Plan(activations="recompute", layer_policy={0: "keep", 5: "offload"})
    assert plan.policy_counts(8) == {"keep": 1, "offload": 1, "recompute": 6}
