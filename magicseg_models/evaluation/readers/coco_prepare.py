"""The COCO-Object conversion tool: write each image's label map once as ``<id>_instanceTrainIds.png``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from magicseg_models.evaluation.readers.coco_object import COCOObjectReader


def prepare_coco_object(
    data_root: str | os.PathLike, out: str | os.PathLike | None = None, overwrite: bool = False
) -> Path:
    """Write COCO-Object labels ``<id>_instanceTrainIds.png`` (values 0..80) once, into ``out``
    (default: the COCO-Stuff label folder, where the reader looks first; pass another folder to the
    reader as ``prepared_dir``). Existing files are kept unless ``overwrite``. Returns the folder."""
    reader = COCOObjectReader(data_root)
    folder = Path(out).expanduser() if out is not None else reader.label_dir
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in reader.image_ids:
        target = folder / f"{image_id}_instanceTrainIds.png"
        if target.is_file() and not overwrite:
            continue
        label, _ = reader.label(image_id, prepared=False)
        tmp = target.with_name(f".{target.name}.tmp")
        Image.fromarray(label.astype(np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, target)
    return folder
