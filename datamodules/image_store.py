"""Read files from a dataset that is either a folder or a zip, by normalised relative path.

A zip handle cannot be pickled into DataLoader workers, so it is opened lazily per process.
"""

from __future__ import annotations

import os
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def normalise_relative_path(path: str) -> str:
    """'a\\b/./c.png' and './a/b/c.png' -> 'a/b/c.png' (what label files and archives are matched on)."""
    parts = [part for part in PurePosixPath(path.replace("\\", "/")).parts if part not in ("", ".")]
    if parts and parts[0] == "/":
        parts = parts[1:]
    return "/".join(parts)


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


class ImageStore(ABC):
    """Files of one dataset, addressed by normalised relative path."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @abstractmethod
    def list_files(self) -> list[str]:
        """All file paths (normalised, relative), sorted."""

    @abstractmethod
    def read_bytes(self, relative_path: str) -> bytes:
        """Raise FileNotFoundError when absent."""

    def describe(self, relative_path: str) -> str:
        """How to name a file in error messages."""
        return f"{self.root}/{relative_path}" if self.root.is_dir() else f"{self.root}:{relative_path}"


class FolderStore(ImageStore):
    def list_files(self) -> list[str]:
        found = []
        for directory, _, names in os.walk(self.root):
            for name in names:
                found.append(normalise_relative_path(os.path.relpath(os.path.join(directory, name), self.root)))
        return sorted(found)

    def read_bytes(self, relative_path: str) -> bytes:
        return (self.root / relative_path).read_bytes()


class ZipStore(ImageStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._zip: zipfile.ZipFile | None = None
        self._names: dict[str, str] | None = None  # normalised -> name in the archive

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.root)
            except zipfile.BadZipFile as error:
                raise ValueError(f"{self.root}: not a readable zip archive ({error})") from error
            self._names = {
                normalise_relative_path(info.filename): info.filename
                for info in self._zip.infolist()
                if not info.is_dir()
            }
        return self._zip

    def list_files(self) -> list[str]:
        self._archive()
        assert self._names is not None
        return sorted(self._names)

    def read_bytes(self, relative_path: str) -> bytes:
        archive = self._archive()
        assert self._names is not None
        if relative_path not in self._names:
            raise FileNotFoundError(f"{self.describe(relative_path)} is not in the archive")
        return archive.read(self._names[relative_path])

    def __getstate__(self) -> dict[str, object]:
        # WHY: an open ZipFile cannot cross a process boundary; each worker reopens it.
        state = dict(self.__dict__)
        state["_zip"] = None
        state["_names"] = None
        return state


def open_image_store(root: str | Path) -> ImageStore:
    path = Path(root).expanduser()
    if path.is_dir():
        return FolderStore(path)
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: dataset must be a folder or a .zip archive, and this file is not a zip")
        return ZipStore(path)
    raise FileNotFoundError(f"dataset {path} does not exist (expected a folder or a .zip archive)")
