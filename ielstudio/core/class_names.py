"""What the classes of a mask folder are called, from the data set's own description.

Masks store numbers; an annotator thinks in names ("grey matter, left"). The common
description of a labelled medical data set is the `dataset.json` that nnU-Net, the
Medical Segmentation Decathlon and MONAI use, beside the label folder (``Dataset001/
labelsTr`` with ``Dataset001/dataset.json``) or inside it. Its ``labels`` come in two
forms, both read here:

    nnU-Net v2:          {"labels": {"background": 0, "edema": 1, "tumour": 2}}
    MSD, nnU-Net v1:     {"labels": {"0": "background", "1": "edema", "2": "tumour"}}

A name keyed by a list of values (nnU-Net v2's region-based labels) names no single
class and is left out. The window's legend, brush menu and notice, and the report and
output of `ielstudio clean` use the names; without a description the classes are
numbered, as before.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

#: The file name looked for in the mask folder, then in its parent.
DESCRIPTION = "dataset.json"
#: A description larger than this is not read (nnU-Net v1 lists every case: 10,000 cases are
#: about 1 MB; reading it stays far below the 50 ms the window may spend in its own thread).
MAX_BYTES = 2 * 1024 * 1024


def find_description(masks_dir: str | Path) -> Path | None:
    """The `DESCRIPTION` file of a mask folder (or of a volume's label file's folder): in
    the folder, else in its parent; None when neither has one."""
    folder = Path(masks_dir)
    if folder.is_file():
        folder = folder.parent
    for place in (folder, folder.parent):
        path = place / DESCRIPTION
        if path.is_file():
            return path
    return None


def parse_labels(labels: object) -> dict[int, str]:
    """{label value: name} from a description's ``labels`` (either form); ValueError
    when it is neither."""
    if not isinstance(labels, dict):
        raise ValueError("its 'labels' is not a mapping of names and values")
    names: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, str) and str(key).strip().lstrip("-").isdigit():  # "1": "edema"
            names[int(key)] = value.strip()
        elif isinstance(value, bool):
            raise ValueError(f"its label {key!r} has the value {value!r}, not a number")
        elif isinstance(value, int):  # "edema": 1
            names[value] = str(key).strip()
        elif isinstance(value, list):  # a region of several labels (nnU-Net v2): no single class
            continue
        else:
            raise ValueError(f"its label {key!r} has the value {value!r}, neither a number nor a name")
    return {v: n for v, n in names.items() if n}


def read_class_names(masks_dir: str | Path) -> tuple[dict[int, str], str | None]:
    """({label value: name}, a problem to tell the user or None) for a mask folder: empty
    and no problem where there is no description; empty and the problem, naming the
    file, where there is one that cannot be used. Never raises."""
    path = find_description(masks_dir)
    if path is None:
        return {}, None
    try:
        if path.stat().st_size > MAX_BYTES:
            return {}, f"{path}: larger than {MAX_BYTES:,} bytes, not read for class names"
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "labels" not in data:
            return {}, None  # some other dataset.json: it names no classes
        return parse_labels(data["labels"]), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        return {}, f"{path}: cannot read its class names ({e}); the classes are numbered"


def write_description(folder: str | Path, names: list[str] | tuple[str, ...], name: str | None = None,
                      description: str | None = None, file_ending: str = ".png") -> Path:
    """Write a data set's `DESCRIPTION` into ``folder`` (nnU-Net v2's form: ``names[c]``
    is the name of label value c), atomically; the file `read_class_names` reads."""
    from .imageio import atomic_write_text

    fields = {"name": name, "description": description,
              "labels": {n: value for value, n in enumerate(names)}, "file_ending": file_ending}
    path = Path(folder) / DESCRIPTION
    atomic_write_text(path, json.dumps({k: v for k, v in fields.items() if v is not None}, indent=2) + "\n")
    return path


def names_by_class(names: dict[int, str], values: tuple[int, ...] | list[int], n_classes: int) -> list[str | None]:
    """The name of each class index 0..n_classes-1: the name of the value the mask files
    store for it (``values``, `imageio.MaskEncoding.values`), else, where the files store
    other values than the description names (a binary mask saved 0/255 described as
    0/1), the name of the index itself; None for a class the description does not name."""
    stored = list(values) if values and all(v in names for v in values[1:]) else list(range(n_classes))
    return [names.get(stored[c]) if c < len(stored) else names.get(c) for c in range(n_classes)]


#: Longer names are cut (with an ellipsis) in the legend and the brush menu, whose
#: entries do not wrap; the report and the messages keep them whole.
MAX_SHOWN = 32


def class_label(c: int, name: str | None) -> str:
    """How a class is shown: ``"1 edema"`` where it has a name, else ``"class 1"``; one
    line of at most `MAX_SHOWN` characters of the name."""
    if not name:
        return f"class {c}"
    name = " ".join(name.split())
    return f"{c} {name if len(name) <= MAX_SHOWN else name[:MAX_SHOWN - 1].rstrip() + '…'}"


def report_class_names(named: list[str | None]) -> dict[str, str]:
    """The report's ``class_names``: {"class index": name} of the named classes."""
    return {str(c): name for c, name in enumerate(named) if name}


_LEADING_CLASS = re.compile(r"^class (\d+):")


def with_class_names(messages: list[str], named: list[str | None]) -> list[str]:
    """The review's messages about one class (they begin ``class N:``) with the class's
    name, ``class N, oedema:``, where the data set names it (``named``, by class index:
    `names_by_class`); the others as they are."""
    def name(match: re.Match) -> str:
        c = int(match.group(1))
        return f"class {c}, {named[c]}:" if c < len(named) and named[c] else match.group(0)

    return [_LEADING_CLASS.sub(name, m) for m in messages]
