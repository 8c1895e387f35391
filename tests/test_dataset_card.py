"""The dataset folder is a Hugging Face dataset: ``datasets.load_dataset(folder)`` (and streaming) read the shards
through the card's YAML header, with images as PIL images and class ids named by the vocabulary; the card states
the licence, the models and the counts."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from magicseg_models.dataset.reader import DatasetReader
from magicseg_models.dataset.store import DatasetStore

SD15 = {"pairs": {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "weights": "pretrained", "steps": 20},
        "annotate": {"detector": "IDEA-Research/grounding-dino-tiny",
                     "segmenter": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"},
        "prompts": {"backend": "openai", "model": "gpt-3.5-turbo"}}


@pytest.fixture
def local_dataset(tiny_plan, tmp_path):
    from magicseg_models.dataset.synthetic import write_synthetic_dataset

    spec, jobs = tiny_plan
    uri = str(tmp_path / "ds")
    write_synthetic_dataset(uri, jobs, list(spec.class_names), height=64, width=64, config={"preset": "test"})
    return uri


def _header(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_load_dataset_reads_the_folder_with_images_and_class_names(local_dataset):
    import datasets

    rows = list(DatasetReader(local_dataset).iter_rows())
    classes = DatasetReader(local_dataset).classes
    ds = datasets.load_dataset(local_dataset, split="train")
    assert len(ds) == len(rows)
    first = ds[0]
    assert isinstance(first["image"], Image.Image) and isinstance(first["counterfactual_image"], Image.Image)
    assert first["image"].size == (rows[0]["width"], rows[0]["height"])
    names = ds.features["class_ids"].feature.names
    assert names == classes
    assert [names[i] for i in first["class_ids"]] == rows[0]["class_names"]
    assert [a["class_id"] for a in first["annotations"]] == [a["class_id"] for a in rows[0]["annotations"]]
    streamed = next(iter(datasets.load_dataset(local_dataset, split="train", streaming=True)))
    assert isinstance(streamed["image"], Image.Image) and streamed["sample_id"] == rows[0]["sample_id"]


def test_the_card_states_licence_models_counts_and_coverage(local_dataset):
    store = DatasetStore(local_dataset)
    header = store.read_run_header()
    store.write_run_header(config=header["config"], planned=header["planned"], classes=header["classes"],
                           selected_classes=header["selected_classes"], models=SD15)
    card = store.storage.read_bytes("README.md").decode()
    meta = _header(card)
    assert meta["license"] == "creativeml-openrail-m"
    assert meta["configs"][0]["data_files"][0]["path"] == "shards/*.parquet"  # never the JSON bookkeeping
    assert "CreativeML OpenRAIL-M" in card and "Grounding DINO (boxes): Apache-2.0" in card
    assert "`stable-diffusion-v1-5/stable-diffusion-v1-5`" in card and "`gpt-3.5-turbo`" in card
    manifest = json.loads(store.storage.read_bytes("manifest.json"))
    counts = manifest["counts"]
    assert f"planned: {counts['planned']}, kept: {counts['kept']}" in card
    for reason, n in counts["dropped"].items():
        assert f"dropped because `{reason}`: {n}" in card
    per_class: dict[str, int] = {}
    for row in DatasetReader(local_dataset).iter_rows(columns=["class_names"]):
        for name in set(row["class_names"]):
            per_class[name] = per_class.get(name, 0) + 1
    for name, n in per_class.items():
        assert f"| {name} | {n} |" in card


def test_an_unknown_generator_says_so_instead_of_claiming_a_licence(local_dataset):
    card = DatasetStore(local_dataset).storage.read_bytes("README.md").decode()
    assert _header(card)["license"] == "other"
    assert "licence not known to MagicSeg" in card


def _card_for(dataset: str, pairs: dict) -> tuple[dict, str]:
    store = DatasetStore(dataset)
    header = store.read_run_header()
    store.write_run_header(config=header["config"], planned=header["planned"], classes=header["classes"],
                           selected_classes=header["selected_classes"], models={**SD15, "pairs": pairs})
    card = store.storage.read_bytes("README.md").decode()
    return _header(card), card


@pytest.mark.parametrize("model,license,header,name", [
    ("black-forest-labs/FLUX.1-schnell", "Apache-2.0", "apache-2.0", None),
    ("stabilityai/stable-diffusion-xl-base-1.0", "CreativeML Open RAIL++-M", "openrail++", None),
    ("black-forest-labs/FLUX.1-dev", "FLUX.1 [dev] Non-Commercial License", "other",
     "flux-1-dev-non-commercial-license"),
    # the licence the build recorded wins over the model id: a user's own fine-tune under generator.license
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "MIT", "mit", None),
    ("my-org/in-house-model", "In-house Research Licence v2", "other", "in-house-research-licence-v2"),
])
def test_the_card_takes_the_licence_the_generator_stage_recorded(local_dataset, model, license, header, name):
    meta, card = _card_for(local_dataset, {"model": model, "weights": "pretrained", "license": license})
    assert meta["license"] == header and meta.get("license_name") == name
    assert f"Generator outputs (`{model}`): {license}, as the build recorded it" in card
    assert "Grounding DINO (boxes): Apache-2.0" in card  # the other models' lines stay


def test_random_weights_and_an_undecidable_flux_claim_no_licence(local_dataset):
    from magicseg_models.licences import NO_LICENSE

    meta, card = _card_for(local_dataset, {"model": "black-forest-labs/FLUX.1-schnell", "weights": "random",
                                           "license": NO_LICENSE})
    assert meta["license"] == "other" and NO_LICENSE in card and "FLUX.1-schnell outputs" not in card
    meta, card = _card_for(local_dataset, {"model": "someone/flux-merge", "weights": "pretrained",
                                           "license": "unknown: set generator.license"})
    assert meta["license"] == "other" and "licence not known to MagicSeg" in card
