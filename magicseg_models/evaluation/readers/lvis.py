"""LVIS v1 val: COCO images with semantic maps rasterised from the LVIS instance masks."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from magicseg_models.errors import BenchmarkDataError
from magicseg_models.evaluation.benchmarks import benchmark_classes
from magicseg_models.evaluation.data_files import check_limit, data_root_folder, need_path, open_rgb
from magicseg_models.evaluation.readers.base import BenchmarkReader, Sample
from magicseg_models.evaluation.readers.lvis_raster import lvis_semantic_map

LVIS_LAYOUT = (
    "<data_root>/lvis_v1_val.json (or <data_root>/annotations/lvis_v1_val.json) with the COCO images in "
    "<data_root>/train2017 and <data_root>/val2017"
)


class LVISReader(BenchmarkReader):
    """LVIS v1 val: semantic maps (0 = background, 1..1203 = category id) from instance masks."""

    benchmark = "lvis"

    def __init__(self, data_root, limit: int | None = None, prompt_names: str = "default"):
        limit = check_limit(limit)
        classes = benchmark_classes(self.benchmark, prompt_names)
        root = data_root_folder(self.benchmark, data_root, "the folder holding lvis_v1_val.json and the COCO images")
        candidates = (root / "lvis_v1_val.json", root / "annotations" / "lvis_v1_val.json")
        json_path = next((p for p in candidates if p.is_file()), None)
        if json_path is None:
            need_path(candidates[0], self.benchmark, "annotation", LVIS_LAYOUT, folder=False)
        try:
            with open(json_path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise BenchmarkDataError(f"{self.benchmark}: unreadable annotation file {json_path} ({err})") from None
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise BenchmarkDataError(f"{self.benchmark}: {json_path} has no 'images'/'annotations' (not LVIS json)")
        self.json_path = json_path
        n = len(classes.names)
        for category in data.get("categories", []):
            cid, cname = category.get("id"), category.get("name")
            if not isinstance(cid, int) or not 1 <= cid <= n:
                raise BenchmarkDataError(f"{self.benchmark}: {json_path} has category id {cid!r}; LVIS v1 has 1..{n}")
            if cname is not None and cname != classes.names[cid - 1]:
                raise BenchmarkDataError(
                    f"{self.benchmark}: {json_path} names category {cid} {cname!r}, LVIS v1 calls it "
                    f"{classes.names[cid - 1]!r} (not an LVIS v1 file?)"
                )
        self._images = {int(img["id"]): img for img in data["images"]}
        self._anns: dict[int, list[dict]] = defaultdict(list)
        for ann in data["annotations"]:
            self._anns[int(ann["image_id"])].append(ann)
        ordered = sorted(self._images)
        self._key = {self._image_id(self._images[i]): i for i in ordered}
        super().__init__(root, classes, [self._image_id(self._images[i]) for i in ordered], limit)
        missing = [k for k in self._ids if self._image_path(k) is None]
        if missing:
            raise BenchmarkDataError(
                f"{self.benchmark}: {len(missing)} of {len(self._ids)} images are missing, first: "
                f"{self._candidates(missing[0])[0]} (expected layout: {LVIS_LAYOUT})"
            )

    @staticmethod
    def _file_ref(img: dict) -> tuple[str | None, str]:
        url = img.get("coco_url") or ""
        if url:
            parts = url.rstrip("/").split("/")
            return (parts[-2] if len(parts) >= 2 else None), parts[-1]
        return None, img.get("file_name") or f"{int(img['id']):012d}.jpg"

    def _image_id(self, img: dict) -> str:
        return Path(self._file_ref(img)[1]).stem

    def _candidates(self, image_id: str) -> list[Path]:
        folder, name = self._file_ref(self._images[self._key[image_id]])
        folders = [f for f in (folder, "val2017", "train2017") if f]
        return [self.data_root / f / name for f in dict.fromkeys(folders)]

    def _image_path(self, image_id: str) -> Path | None:
        return next((p for p in self._candidates(image_id) if p.is_file()), None)

    def _load(self, image_id: str) -> Sample:
        img = self._images[self._key[image_id]]
        path = self._image_path(image_id) or self._candidates(image_id)[0]
        image = open_rgb(path, self.benchmark)
        height, width = int(img["height"]), int(img["width"])
        if (image.width, image.height) != (width, height):
            raise BenchmarkDataError(
                f"{self.benchmark}: image {path} is {image.width}x{image.height}, {self.json_path.name} says "
                f"{width}x{height}"
            )
        label = lvis_semantic_map(self._anns.get(int(img["id"]), []), height, width)
        return Sample(image_id, image, label=label)
