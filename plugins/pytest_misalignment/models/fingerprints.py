"""Content fingerprints of checkpoints (weights, tokenizer, config, adapter), not paths;
file hashes remembered in the store."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .store import Store
from .values import stable_hash

if TYPE_CHECKING:
    pass

from .checks import FINGERPRINT_SUFFIXES, PICKLE_SUFFIXES, SKIPPED_FOR_FINGERPRINT, indexed_shards
from .specs import Checkpoint

# A file changed this recently may change again within the same timestamp (a filesystem's
# clock ticks in up to 2 s, FAT's): its hash is not remembered, as git's "racily clean" rule.
_RACY_SECONDS = 2.0


class FileHasher:
    """SHA-256 of files, remembered in the store by (path, size, mtime, ctime, inode) like
    git's index.

    ctime changes on every write and cannot be set back (unlike mtime with `cp -p` or
    `touch -r`); a file written within _RACY_SECONDS of hashing is hashed again next time,
    so a rewrite within one timestamp tick is never served a stale hash. Multi-GB weights
    are hashed once when they settle.
    """

    def __init__(self, store: Store | None, now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.now = now

    def sha256(self, path: Path) -> str:
        status = path.stat()
        stat_key = stable_hash([str(path.resolve()), status.st_size, status.st_mtime_ns,
                                status.st_ctime_ns, status.st_ino])
        if self.store is not None:
            known = self.store.get_many("file_sha256", "files", [stat_key])
            if stat_key in known:
                return str(known[stat_key]["sha256"])
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        value = digest.hexdigest()
        changed = max(status.st_mtime_ns, status.st_ctime_ns) / 1e9
        if self.store is not None and self.now() - changed >= _RACY_SECONDS:
            self.store.put_many("file_sha256", "files", {stat_key: {"sha256": value}})
        return value


def fingerprint(checkpoint: Checkpoint, hasher: FileHasher) -> str:
    """A hash of the checkpoint's content (weights, tokenizer, config, adapter), not its path."""
    if checkpoint.kind == "gguf":
        files = {checkpoint.path.name: hasher.sha256(checkpoint.path)}
    else:
        files = {}
        # Every shard its index names loads, whatever its name: never skipped.
        shards = indexed_shards(checkpoint.path, checkpoint.spec,
                                ".bin" if checkpoint.pickle_weights else ".safetensors")
        for path in sorted(checkpoint.path.iterdir()):
            relevant = path.suffix in FINGERPRINT_SUFFIXES or (
                checkpoint.pickle_weights and path.suffix in PICKLE_SUFFIXES
            )
            skipped = path.name in SKIPPED_FOR_FINGERPRINT and path.name not in shards
            if path.is_file() and relevant and not skipped:
                files[path.name] = hasher.sha256(path)
    base = fingerprint(checkpoint.base, hasher) if checkpoint.base else None
    payload = {"kind": checkpoint.kind, "files": files, "base": base}
    if checkpoint.kind == "gguf":
        payload["files"] = {"gguf": files[checkpoint.path.name]}  # the file name does not matter
    return stable_hash(payload)
