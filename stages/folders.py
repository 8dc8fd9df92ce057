"""The `folder` source: a directory with one sub-folder of images per class.

    data_dir/
      cat/  001.jpg  002.png  ...
      dog/  a.jpeg  holiday/b.bmp  ...

Class names are the sub-folder names, sorted (class id = position), as Keras's
`image_dataset_from_directory` labels them. Images may sit at any depth inside their
class folder. Hidden files and folders and files without an image extension are
ignored; files that Pillow cannot decode are skipped, and every skipped file is listed.
Links to folders are never followed (one could lead back into the tree, looping or counting
images twice, or out of it); they are listed too. Links to image files are read.
Images are decoded one by one into a memory-mapped scratch array, so a large folder is
never held in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.errors import DataError
from stages.images import IMAGE_EXTENSIONS, UnreadableImage, is_image_file, load_image
from stages.io import open_array
from stages.progress import track
from stages.splits import limit_per_class


@dataclass(frozen=True)
class FolderListing:
    root: Path
    class_names: tuple[str, ...]
    files: tuple[Path, ...]
    labels: np.ndarray              # class id of each file
    ignored: int                    # hidden files and non-images
    links: tuple[str, ...] = ()     # links to folders, not followed


@dataclass(frozen=True)
class DecodedImages:
    images: np.ndarray              # (N, height, width, channels) uint8, memory-mapped
    labels: np.ndarray
    skipped: tuple[dict, ...]       # {"path", "class", "reason"} of each unreadable file


def class_folders(root: Path, key: str) -> tuple[list[Path], list[str]]:
    """The non-hidden sub-folders of `root`, sorted by name, and the links to folders left out."""
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"{key}={root}: {what}; point it to a folder holding one sub-folder of "
                        "images per class")
    folders = sorted((path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")),
                     key=lambda path: path.name)
    return [path for path in folders if not path.is_symlink()], [str(path) for path in folders if path.is_symlink()]


def files_of_class(folder: Path) -> tuple[list[Path], int, list[str]]:
    """Image files anywhere under `folder` (sorted), how many other files were ignored, and the
    links to folders that were not followed."""
    images, ignored, links = [], 0, []
    for directory, subdirectories, names in os.walk(folder):  # does not follow links to folders
        links += [str(Path(directory) / name) for name in sorted(subdirectories)
                  if not name.startswith(".") and (Path(directory) / name).is_symlink()]
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            if is_image_file(path):
                images.append(path)
            else:
                ignored += 1
    return images, ignored, links


def list_folder(root: str | Path, key: str = "prepare.data_dir") -> FolderListing:
    """Find the classes and image files of a folder dataset, without decoding anything."""
    root = Path(root)
    folders, links = class_folders(root, key)
    if len(folders) < 2:
        found = ", ".join(folder.name for folder in folders) or "none"
        not_followed = f", not following the folder link(s) {', '.join(links)}" if links else ""
        raise DataError(f"{key}={root}: found {len(folders)} class sub-folder(s) ({found}){not_followed}; "
                        "a folder dataset needs at least two, one per class: add a sub-folder holding "
                        "each class's images")
    files, labels, ignored = [], [], 0
    for class_id, folder in enumerate(folders):
        images, skipped, inner_links = files_of_class(folder)
        if not images:
            raise DataError(f"{folder}: class folder holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            "add images or remove the folder")
        files += images
        labels += [class_id] * len(images)
        ignored += skipped
        links += inner_links
    return FolderListing(root, tuple(folder.name for folder in folders), tuple(files),
                         np.asarray(labels, dtype=np.int64), ignored, tuple(links))


def decode_folder(
    listing: FolderListing, image_size: tuple[int, int], color_mode: str, scratch: Path,
) -> DecodedImages:
    """Decode every listed file into a uint8 memory-mapped array; skip and record unreadable ones."""
    channels = 1 if color_mode == "grayscale" else 3
    images = open_array(scratch, np.uint8, (len(listing.files), *image_size, channels))
    kept, skipped = [], []
    for position, path in enumerate(track(listing.files, f"decoding {listing.root.name}")):
        try:
            images[len(kept)] = load_image(path, image_size, color_mode)
        except UnreadableImage as error:
            skipped.append({"path": str(path), "class": listing.class_names[listing.labels[position]],
                            "reason": str(error).removeprefix(f"{path}: ")})
            continue
        kept.append(position)
    labels = listing.labels[kept]
    for class_id, name in enumerate(listing.class_names):
        if not np.any(labels == class_id):
            unreadable = [entry for entry in skipped if entry["class"] == name]
            raise DataError(f"{listing.root / name}: none of its {len(unreadable)} image file(s) can "
                            f"be decoded (first: {unreadable[0]['path']}: {unreadable[0]['reason']}); "
                            "replace the damaged files or remove the folder")
    images.flush()
    return DecodedImages(images[: len(kept)], labels, tuple(skipped))


def load_folder_split(
    root: str | Path, key: str, image_size: tuple[int, int], color_mode: str,
    limit: int | None, seed: int, scratch: Path, class_names: tuple[str, ...] | None = None,
) -> tuple[DecodedImages, FolderListing]:
    """List, limit and decode one folder; `class_names` (from the train folder) must match."""
    listing = list_folder(root, key)
    if class_names is not None and listing.class_names != class_names:
        raise DataError(f"{key}={root}: class folders ({', '.join(listing.class_names)}) differ from "
                        f"prepare.data_dir's ({', '.join(class_names)}); use the same sub-folder names")
    chosen = limit_per_class(listing.labels, limit, seed)
    listing = FolderListing(listing.root, listing.class_names,
                            tuple(listing.files[index] for index in chosen),
                            listing.labels[chosen], listing.ignored, listing.links)
    return decode_folder(listing, image_size, color_mode, scratch), listing
