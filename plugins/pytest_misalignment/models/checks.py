"""Checks of untrusted checkpoint files before anything is loaded: safetensors headers,
GGUF magic, shard indexes, pickle weights, links and special files."""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from .errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024

# Files whose content changes what a checkpoint answers; READMEs and logs do not.
FINGERPRINT_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".tiktoken",
                        ".gguf", ".py")

SKIPPED_FOR_FINGERPRINT = ("training_args.bin", "trainer_state.json", "optimizer.pt",
                           "scheduler.pt", "rng_state.pth")


def check_safetensors(path: Path) -> None:
    """Read a safetensors header and check the file holds all the data it declares."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated or corrupted: too short for a "
                                      "safetensors header")
            (header_length,) = struct.unpack("<Q", head)
            if header_length > min(size - 8, _MAX_SAFETENSORS_HEADER):
                raise CheckpointError(f"{path} is truncated or corrupted: bad safetensors header")
            header = json.loads(handle.read(header_length))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is corrupted: its safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is corrupted: its safetensors header is not an object")
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            data_end = max(data_end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise CheckpointError(f"{path} is corrupted: tensor {name!r} has no valid "
                                  "data_offsets") from None
    expected = 8 + header_length + data_end
    if size < expected:
        raise CheckpointError(f"{path} is truncated: its header declares {expected} bytes, the "
                              f"file has {size}")


def _link_roots(folder: Path) -> list[Path]:
    """Where the folder's links may lead: into the folder, and for a snapshot of the
    huggingface_hub cache (`snapshots/REVISION/`, its files linked to `../../blobs/`), into
    that repository's blobs."""
    roots = [folder]
    blobs = folder.parent.parent / "blobs"
    if folder.parent.name == "snapshots" and blobs.is_dir():
        roots.append(blobs.resolve())
    return roots


def check_folder_files(folder: Path, label: str) -> None:
    """Refuse a checkpoint folder that would make reading it read something else: a link
    leading out of it (a `chat_template.jinja` linked to a secret file would put the secret
    in every prompt and report), or a FIFO, socket or device (a read would hang).

    Links inside the folder are fine. Subfolders are checked too, linked ones included,
    except `.git`, which nothing loads.
    """
    roots = _link_roots(folder)
    seen: set[Path] = set()
    pending = [folder]
    while pending:
        directory = pending.pop()
        if directory.resolve() in seen:
            continue
        seen.add(directory.resolve())
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            raise CheckpointError(f"{label}: cannot read {directory}: {error.strerror}") \
                from None
        for entry in entries:
            path = Path(entry.path)
            try:
                target = path.resolve()
                mode = path.stat().st_mode if path.exists() else None
            except (OSError, RuntimeError):  # a link loop
                raise CheckpointError(f"{label}: {path} is a link that cannot be followed") \
                    from None
            if entry.is_symlink() and not any(target.is_relative_to(r) for r in roots):
                raise CheckpointError(f"{label}: {path} links outside the checkpoint folder; "
                                      "copy the file in if you trust it")
            if mode is None:
                continue  # a dangling link inside the folder: there is nothing to read
            if stat.S_ISDIR(mode):
                if entry.name != ".git":
                    pending.append(path)
            elif not stat.S_ISREG(mode):
                raise CheckpointError(f"{label}: {path} is not a regular file (a FIFO, socket "
                                      "or device); a checkpoint folder holds only files and "
                                      "folders")


def check_gguf(path: Path, label: str) -> None:
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise CheckpointError(f"{label}: {path} is not a GGUF file (no GGUF magic bytes)")


def _is_plain_file_name(name: str) -> bool:
    """A name of a file in the folder itself: no path, no parent, not absolute."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\0" not in name


def indexed_shards(folder: Path, label: str, suffix: str) -> set[str]:
    """The shard files named by the folder's `*{suffix}.index.json` indexes (`.safetensors`
    or `.bin`), each checked to be a file of the folder itself with that suffix: an index
    naming `../x` or an absolute path would load weights from outside the checkpoint (and
    outside its fingerprint), and a `.bin` shard would be unpickled."""
    shards: set[str] = set()
    for index_file in sorted(folder.glob(f"*{suffix}.index.json")):
        try:
            names = set(json.loads(index_file.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{label}: {index_file} is not a valid shard index") from None
        for name in sorted(names, key=str):
            if not (isinstance(name, str) and _is_plain_file_name(name)
                    and name.endswith(suffix)):
                raise CheckpointError(f"{label}: {index_file} names shard {name!r}; a shard must "
                                      f"be a *{suffix} file in the checkpoint folder itself")
        missing = sorted(name for name in names if not (folder / name).is_file())
        if missing:
            raise CheckpointError(f"{label}: {folder} is missing shard(s) {', '.join(missing)}")
        shards.update(names)
    return shards


def checked_weights(folder: Path, label: str, allow_pickle: bool, adapter: bool) -> bool:
    """Check a folder's weights; return True when they are pickle files (allowed)."""
    safetensors = sorted(folder.glob("*.safetensors"))
    indexed_shards(folder, label, ".safetensors")
    if safetensors:
        for weights in safetensors:
            check_safetensors(weights)
        return False
    pickles = sorted({p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES
                      and p.name not in SKIPPED_FOR_FINGERPRINT}
                     | indexed_shards(folder, label, ".bin"))
    what = "adapter weights" if adapter else "weights"
    if pickles:
        if not allow_pickle:
            raise CheckpointError(
                f"{label}: {folder} has only pickle {what} ({', '.join(pickles)}), which can run "
                "code when loaded; convert them to safetensors or pass --allow-pickle if you "
                "trust the file"
            )
        return True
    raise CheckpointError(f"{label}: {folder} has a config but no {what} (*.safetensors)")
