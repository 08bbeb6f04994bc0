"""Workload kinds are one table (workloads/kinds/workloads.yaml): the Workload schema's kinds,
the trace builder of each and the headline's words for its job come from it."""

from __future__ import annotations

import pytest

from memsim.headline import _job_text
from memsim.kinds import workload_kinds
from memsim.workloads.spec import Workload


def test_every_kind_is_a_section_of_the_schema_and_names_a_builder():
    assert list(workload_kinds()) == ["training", "inference", "serving"]
    for name, kind in workload_kinds().items():
        assert name in Workload.model_fields
        assert callable(kind.build())


def test_a_workload_gives_exactly_one_kind_and_the_message_lists_the_tables():
    with pytest.raises(ValueError, match="give exactly one of training, inference, serving"):
        Workload(name="none", model="llama-3-8b")
    assert Workload(name="t", model="llama-3-8b", training={"seq_len": 128}).kind == "training"


def test_the_headline_words_follow_the_table():
    assert _job_text({"kind": "training", "seq_len": 4096, "micro_batch": 2, "grad_accum": 1}) == \
        "training, seq 4096, micro-batch 2"
    assert _job_text({"kind": "training", "seq_len": 4096, "micro_batch": 2, "grad_accum": 8}) == \
        "training, seq 4096, micro-batch 2 × 8 accumulated"
    assert _job_text({"kind": "inference", "batch_size": 4, "prompt_len": 512, "gen_len": 32}) == \
        "inference, batch 4, prompt 512 + 32 generated"
    assert _job_text({"kind": "serving", "num_requests": 100}) == "serving 100 requests"
    assert _job_text({"kind": "module"}) == "module"
