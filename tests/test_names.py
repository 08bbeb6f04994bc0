"""The naming conventions (memsim/contracts/names.py): what is built parses back."""

from __future__ import annotations

from memsim.contracts import names


def test_layer_names_round_trip() -> None:
    assert names.layer_name(12, "attn.out") == "L12.attn.out"
    assert names.split_layer("L12.attn.out") == (12, "attn.out")
    assert names.split_layer("embed.weight") == (None, "embed.weight")
    assert names.template("input") == "L{layer}.input" == names.layer_name(names.LAYER, "input")
    assert names.layer_of(names.template("input")) is None  # a template is no concrete layer
    assert names.is_concrete_layer_name("L3.x") and not names.is_concrete_layer_name("Lx.x")
    assert names.is_layer_tensor("L3.neurons#1", "neurons")
    assert not names.is_layer_tensor("L3.mlp.neurons", "neurons")


def test_instances_drop_back_to_the_trace_name() -> None:
    name = "L4.attn.q"
    for inst in (names.batch_instance(name, 2), names.batch_instance(name, "shared"),
                 names.recompute_instance(name), names.recompute_instance(name, 4),
                 names.micro_batch_instance(name, 1)):
        assert inst != name and names.base_name(inst) == name
    assert names.is_batch_instance(names.batch_instance(name, 0))
    assert names.is_recomputed(names.recompute_instance(name))
    assert names.strip_recompute(names.recompute_instance("L0.mlp_up")) == "L0.mlp_up"
    assert names.base_name(name) == name


def test_micro_batches_and_copy_jobs() -> None:
    ws = names.micro_batch("L0.workspace", 3)
    assert ws == "L0.workspace.mb3" and names.is_micro_batch(ws)
    job = names.copy_job("L1.kv", "dram", "hbm")
    assert names.copy_job_tensor(job) == "L1.kv" and names.copy_job_destination(job) == "hbm"
