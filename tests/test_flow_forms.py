"""The flows' forms in the Prefect UI: every parameter has a description, presets and benchmarks are choice
lists, and those lists are exactly what the package ships."""

from __future__ import annotations

import typing

import pytest
from prefect.utilities.callables import parameter_schema

from flows.build_dataset import build_dataset
from flows.evaluate import evaluate_flow
from flows.params import Benchmark, BuildPreset, EvalPreset, TrainPreset
from flows.train import train_flow
from magicseg_models.config import available_presets
from magicseg_models.evaluation.benchmarks import BENCHMARKS


@pytest.mark.parametrize("flow", [build_dataset, train_flow, evaluate_flow], ids=lambda f: f.name)
def test_every_parameter_has_a_description(flow):
    properties = parameter_schema(flow.fn).model_dump()["properties"]
    missing = [name for name, prop in properties.items() if not prop.get("description")]
    assert not missing, f"{flow.name}: parameters without a description in the UI form: {missing}"


@pytest.mark.parametrize("flow,kind,choices", [(build_dataset, "build", BuildPreset), (train_flow, "train", TrainPreset),
                                               (evaluate_flow, "eval", EvalPreset)], ids=["build", "train", "eval"])
def test_presets_are_a_choice_list_of_the_shipped_presets(flow, kind, choices):
    assert sorted(typing.get_args(choices)) == available_presets(kind)
    preset = parameter_schema(flow.fn).model_dump()["properties"]["preset"]
    assert sorted(preset["anyOf"][0]["enum"]) == available_presets(kind)


def test_benchmarks_are_a_choice_list():
    assert set(typing.get_args(Benchmark)) == set(BENCHMARKS)
