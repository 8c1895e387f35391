"""A checkpoint of another architecture, given to a detector or segmenter backend, is refused in one line naming
what it is, before any weights load: never a traceback from deep inside transformers, and never a model whose
unmatched layers were quietly initialised at random."""

from __future__ import annotations

import pytest

from magicseg_models.annotation import DetectorWeightsError, SegmenterWeightsError, make_detector, make_segmenter
from magicseg_models.config import DetectorConfig, SegmenterConfig
from tests import tiny_repos


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    return {"grounding-dino": tiny_repos.save_tiny_grounding_dino(root / "gd"),
            "owlv2": tiny_repos.save_tiny_owlv2(root / "owl"),
            "sam": tiny_repos.save_tiny_sam(root / "sam"),
            "sam2": tiny_repos.save_tiny_sam2(root / "sam2")}


def detector(backend: str, folder):
    return make_detector(DetectorConfig(backend=backend, weights="pretrained", model=str(folder)), "cpu")


def segmenter(backend: str, folder):
    return make_segmenter(SegmenterConfig(backend=backend, weights="pretrained", checkpoint=str(folder)), "cpu")


@pytest.mark.parametrize("build,backend,wants,given,error", [
    (detector, "transformers", "grounding-dino", "owlv2", DetectorWeightsError),
    (detector, "transformers", "grounding-dino", "sam", DetectorWeightsError),
    (detector, "owlv2", "owlv2", "grounding-dino", DetectorWeightsError),
    (segmenter, "transformers", "sam", "sam2", SegmenterWeightsError),
    (segmenter, "sam2", "sam2", "sam", SegmenterWeightsError),
])
def test_a_checkpoint_of_another_architecture_is_refused_in_one_line(folders, build, backend, wants, given, error):
    with pytest.raises(error) as err:
        build(backend, folders[given])
    message = str(err.value)
    assert "\n" not in message and f"is a {given} model, not the {wants}" in message and str(folders[given]) in message


@pytest.mark.parametrize("build,backend,kind", [(detector, "transformers", "grounding-dino"),
                                                 (detector, "owlv2", "owlv2"), (segmenter, "transformers", "sam"),
                                                 (segmenter, "sam2", "sam2")])
def test_each_backend_loads_its_own_kind(folders, build, backend, kind):
    assert build(backend, folders[kind]).settings  # the check lets the right checkpoint through
