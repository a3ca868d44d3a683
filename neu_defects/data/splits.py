"""Deterministic, stratified, duplicate-aware splits and their ``split.csv`` manifest.

Images with identical pixels form one group and always land on the same side of a split,
so a duplicate (NEU ships patches_101 / patches_105) cannot leak from train into test.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neu_defects.core.errors import UserError
from neu_defects.core.io import atomic_write
from neu_defects.data.index import DatasetIndex

SPLITS = ("train", "val", "test")


def parse_split(spec: str | int | Sequence[float]) -> tuple[float, ...]:
    """``"70_15_15"`` -> (0.7, 0.15, 0.15); ``"80_20"`` -> (0.8, 0.2) (validation carved from train).

    Hydra's override grammar reads ``70_15_15`` as the integer 701515 (``_`` is a digit separator
    there), so an integer is read back as two-digit percentages.
    """
    if isinstance(spec, int):
        digits = str(spec)
        parts = [digits[i:i + 2] for i in range(0, len(digits), 2)] if len(digits) % 2 == 0 else []
    elif isinstance(spec, str):
        parts = spec.replace("/", "_").split("_")
    else:
        parts = list(spec)
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (2, 3) or any(v <= 0 for v in values) or abs(sum(values) - 100) > 1e-6:
        raise UserError(
            f"data.split={spec!r} is not a split: use train_val_test or train_test percentages that sum "
            "to 100, e.g. data.split=70_15_15 or data.split=80_20"
        )
    return tuple(v / 100 for v in values)


def _groups_by_class(labels: Sequence[int], groups: Sequence[str]) -> dict[int, list[list[int]]]:
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_class: dict[int, list[list[int]]] = {}
    for idxs in members.values():
        by_class.setdefault(labels[idxs[0]], []).append(idxs)
    return dict(sorted(by_class.items()))


def assign_splits(
    labels: Sequence[int],
    groups: Sequence[str],
    *,
    split: str | int = "70_15_15",
    seed: int = 0,
    val_fraction: float = 0.1,
    fold: int | None = None,
    folds: int = 5,
) -> list[str]:
    """Return one of train/val/test per sample, stratified by label, groups kept together.

    With ``fold`` set, the data is cut into ``folds`` stratified folds: fold ``fold`` is the test
    set and validation is carved from the rest; ``split`` is then not used.
    """
    if fold is not None and not (folds >= 2 and 0 <= fold < folds):
        raise UserError(f"data.fold={fold} with data.folds={folds}: need folds >= 2 and 0 <= fold < folds")
    if not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction={val_fraction} must lie strictly between 0 and 1")
    fractions = parse_split(split) if fold is None else None
    rng = np.random.default_rng(seed)
    out = [""] * len(labels)
    for class_groups in _groups_by_class(labels, groups).values():
        order = [class_groups[i] for i in rng.permutation(len(class_groups))]
        n = len(order)
        if fold is not None:
            test = [g for j, g in enumerate(order) if j % folds == fold]
            rest = [g for j, g in enumerate(order) if j % folds != fold]
            n_val = round(val_fraction * len(rest))
        elif len(fractions) == 3:
            n_test = round(fractions[2] * n)
            test, rest = order[:n_test], order[n_test:]
            n_val = round(fractions[1] * n)
        else:
            n_test = round(fractions[1] * n)
            test, rest = order[:n_test], order[n_test:]
            n_val = round(val_fraction * len(rest))
        for name, chunk in (("test", test), ("val", rest[:n_val]), ("train", rest[n_val:])):
            for group in chunk:
                for i in group:
                    out[i] = name
    return out


def limit_per_class(
    assignment: Sequence[str | None], labels: Sequence[int], samples_per_class: int | str | None, *, seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> list[str | None]:
    """Keep ``samples_per_class`` training samples of each class (seeded), drop the other training ones.

    Validation and test are untouched; dropped samples get None (they leave ``split.csv``). Each
    class's training samples are put in one seeded order and the first k kept, so for one seed the
    smaller subsets are nested in the larger ones (k = 5 within k = 10), as a learning curve wants.
    ``None`` or ``"all"`` keeps every training sample.
    """
    if samples_per_class is None or samples_per_class == "all":
        return list(assignment)
    if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 1:
        raise UserError(f"data.samples_per_class={samples_per_class!r}: keep at least 1 training image per class "
                        "(an integer), or all (null)")
    rng = np.random.default_rng([seed, 8])  # its own stream: the split's draws stay as they were
    out = list(assignment)
    for label in sorted(set(labels)):
        train = [i for i, (s, y) in enumerate(zip(assignment, labels, strict=True)) if s == "train" and y == label]
        if samples_per_class > len(train):
            name = class_names[label] if class_names else f"class {label}"
            raise UserError(f"data.samples_per_class={samples_per_class} but {name} has only {len(train)} training "
                            f"images in this split: use at most {len(train)}, or null for all")
        for i in np.asarray(train)[rng.permutation(len(train))[samples_per_class:]]:
            out[i] = None
    return out


def write_split_csv(path: str | Path, index: DatasetIndex, assignment: Sequence[str | None]) -> Path:
    def write(handle):
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for sample, split in zip(index.samples, assignment, strict=True):
            if split:
                writer.writerow([sample.path, index.class_names[sample.label], split])

    return atomic_write(path, write)


def read_split_csv(path: str | Path, index: DatasetIndex) -> list[str | None]:
    """Assignment per index sample from a split.csv; samples the file does not list get None."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data.split_file={path} does not exist: point it at a split.csv from a run directory")
    position = {s.path: i for i, s in enumerate(index.samples)}
    out: list[str | None] = [None] * len(index.samples)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "label", "split"} <= set(reader.fieldnames):
            raise UserError(f"{path} is not a split file: it needs the columns path,label,split")
        for line, row in enumerate(reader, start=2):
            i = position.get(row["path"])
            if i is None:
                raise UserError(f"{path}:{line}: {row['path']} is not in the dataset at {index.root}; "
                                "use the data.root the split was made from")
            if row["label"] != index.class_names[index.samples[i].label]:
                raise UserError(f"{path}:{line}: {row['path']} is labelled {row['label']!r} in the split "
                                f"file but {index.class_names[index.samples[i].label]!r} in the dataset")
            if row["split"] not in SPLITS:
                raise UserError(f"{path}:{line}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
            out[i] = row["split"]
    return out
