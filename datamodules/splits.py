"""Seeded subsets and splits that are written to a file once and reused, so evaluation sets stay fixed.

- ``sampled_subset_file``: e.g. the CelebA-HQ test set (1,500 images drawn with a seed), a text file
  with one identifier per line.
- ``seeded_split_file``: e.g. AFHQ cats 8:1:1, a JSON file {"seed", "fractions", "splits": {name: [ids]}}.
Both files are written atomically (temporary file + rename) so concurrent ranks cannot leave a
half-written file; every rank computes the same content. When a file exists it is used as-is and
every identifier in it must be present in the dataset.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from datamodules.labeled_index import DatasetError


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _require_present(listed: Sequence[str], available: Sequence[str], list_file: Path) -> None:
    missing = sorted(set(listed) - set(available))
    if missing:
        raise DatasetError(
            f"{list_file}: {len(missing)} listed images are not usable in the dataset "
            f"(e.g. {', '.join(missing[:5])}); delete the file to draw a new list, or restore the images"
        )


def sampled_subset_file(available: Sequence[str], count: int, seed: int, list_file: Path) -> list[str]:
    """``count`` identifiers drawn with ``seed`` from ``available``; written to ``list_file`` on first
    use and read back afterwards. With fewer available than ``count``: all of them, with a warning
    (no file is written, so a complete dataset later gets a proper list)."""
    if list_file.exists():
        listed = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        _require_present(listed, available, list_file)
        return listed
    if count <= 0:
        raise ValueError(f"subset count must be positive, got {count}")
    if len(available) <= count:
        rank_zero_warn(
            f"only {len(available)} usable images available, fewer than the {count} to sample: "
            f"using all of them; no list file written to {list_file}"
        )
        return sorted(available)
    candidates = sorted(available)  # WHY sorted: the draw must not depend on file-system order
    chosen_positions = np.random.default_rng(seed).permutation(len(candidates))[:count]
    chosen = sorted(candidates[position] for position in chosen_positions)
    write_atomically(list_file, "".join(f"{identifier}\n" for identifier in chosen))
    rank_zero_info(f"wrote a {count}-image list (seed {seed}) to {list_file}")
    return chosen


_MIRROR_SUFFIX = re.compile(r"_mirror(?=\.[^./]+$)")


def group_key(identifier: str) -> str:
    """Mirrored copies written by EG3D's preprocessing ('x_mirror.png') stay with 'x.png' in a split."""
    return _MIRROR_SUFFIX.sub("", identifier)


def seeded_split_file(
    available: Sequence[str], fractions: Mapping[str, float], seed: int, split_file: Path
) -> dict[str, list[str]]:
    """Split ``available`` into named parts with the given fractions (e.g. 8:1:1), written to
    ``split_file`` on first use and read back afterwards. Parts are disjoint and cover everything;
    an image and its '_mirror' copy always land in the same part."""
    if split_file.exists():
        try:
            content = json.loads(split_file.read_text(encoding="utf-8"))
            splits = {str(name): [str(item) for item in items] for name, items in content["splits"].items()}
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as error:
            raise DatasetError(f"{split_file}: not a split file written by this framework ({error})") from error
        _require_present([item for items in splits.values() for item in items], available, split_file)
        return splits
    total = float(sum(fractions.values()))
    if not fractions or total <= 0 or any(value < 0 for value in fractions.values()):
        raise ValueError(f"split fractions must be non-negative with a positive sum, got {dict(fractions)}")
    groups: dict[str, list[str]] = {}
    for identifier in sorted(available):
        groups.setdefault(group_key(identifier), []).append(identifier)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    names = list(fractions)
    # Cumulative rounding: the part sizes sum exactly to the number of groups.
    boundaries = np.round(np.cumsum([fractions[name] / total for name in names]) * len(keys)).astype(int)
    splits = {}
    start = 0
    for name, end in zip(names, boundaries):
        splits[name] = sorted(item for position in order[start:end] for item in groups[keys[position]])
        start = end
    content = {"seed": seed, "fractions": dict(fractions), "splits": splits}
    write_atomically(split_file, json.dumps(content, indent=1) + "\n")
    rank_zero_info(f"wrote a seeded split (seed {seed}, {dict(fractions)}) to {split_file}")
    return splits
