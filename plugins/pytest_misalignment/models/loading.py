"""Load a checked checkpoint (see `specs` and `checks`): the device and dtype, the GGUF
conversion, and the model and tokenizer.

Checkpoints are untrusted: only safetensors weights load unless the user allows pickle, and
no checkpoint code runs unless the user trusts it for that role.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..settings import RunSettings, user_cache_dir

if TYPE_CHECKING:
    import torch

from .checks import PICKLE_SUFFIXES
from .fingerprints import FileHasher
from .specs import Checkpoint, CheckpointError

SHARDED = "auto"  # a resolved device meaning: spread the layers over all GPUs (device_map)


_GPU_HEADROOM = 0.8  # weights may fill this share of a GPU's free memory; the rest is cache


def resolve_device(requested: str, worker_index: int = 0, weight_bytes: int = 0) -> str:
    """The torch device to use; CUDA workers spread over the visible GPUs.

    With `auto` and several GPUs, weights too big for one GPU's free memory are spread over
    all of them (`device_map="auto"`); returned as SHARDED.
    """
    import torch

    if requested == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if requested == "auto" and not available:
        return "cpu"
    if not available:
        raise CheckpointError(f"--device {requested}: CUDA was asked for but torch sees no CUDA "
                              "device (use --device cpu or auto)")
    count = torch.cuda.device_count()
    if requested.startswith("cuda:"):
        index = int(requested.split(":", 1)[1])
        if index >= count:
            raise CheckpointError(f"--device {requested}: only {count} CUDA device(s) visible")
        return requested
    pinned = f"cuda:{worker_index % count}"
    if requested == "auto" and count > 1 and weight_bytes:
        free_bytes = torch.cuda.mem_get_info(worker_index % count)[0]
        if needs_sharding(weight_bytes, free_bytes):
            return SHARDED
    return pinned


def needs_sharding(weight_bytes: int, free_bytes: int) -> bool:
    """Whether weights of this size leave too little of one GPU for the KV cache."""
    return weight_bytes > _GPU_HEADROOM * free_bytes


def weight_bytes_of(checkpoint: Checkpoint) -> int:
    """The size of a checkpoint's weights on disk (a GGUF counts as dequantized, ~4x)."""
    if checkpoint.kind == "gguf":
        return 4 * checkpoint.path.stat().st_size
    own = sum(p.stat().st_size for p in checkpoint.path.iterdir()
              if p.suffix in (".safetensors", *PICKLE_SUFFIXES))
    return own + (weight_bytes_of(checkpoint.base) if checkpoint.base else 0)


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX).

    Measured on an AVX2-only CPU: a batch-32 bf16 matmul ran 3.6x slower than float32,
    so bf16 is only a win where the hardware does it natively.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    import torch

    if requested != "auto":
        return getattr(torch, requested)  # type: ignore[no-any-return]
    if device.startswith("cuda") or device == SHARDED:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bfloat16() else torch.float32


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


CONVERSION_MARKER = ".complete.json"  # written last: the files of a finished conversion


def converted_gguf_folder(gguf: Path, models_dir: Path, gguf_sha256: str) -> Path:
    """Dequantize a GGUF once into a bf16 safetensors folder in the cache; reuse it afterwards.

    Loading the saved folder takes about a second, the GGUF itself about 12-25 s. The folder
    is written beside its place, synced, marked complete, then renamed into place; one that
    is not marked complete, or whose files no longer have their recorded sizes (a crash, a
    full disk, a folder of an older version), is converted again.
    """
    target = models_dir / f"gguf-{gguf_sha256[:32]}"
    if _conversion_complete(target):
        return target
    with file_lock(models_dir / f".{target.name}.lock"):
        if _conversion_complete(target):  # another process converted it meanwhile
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=models_dir))
        try:
            _convert_gguf(gguf, staging)
            _mark_complete(staging)
            if target.exists():
                # Renamed away first: the rename into place below needs the name free.
                aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=models_dir))
                os.replace(target, aside / target.name)
                shutil.rmtree(aside, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Write the GGUF's model, dequantized to bf16, and its tokenizer into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16,
        )
    except Exception as error:
        raise CheckpointError(f"cannot read GGUF {gguf}: {error}") from error
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _mark_complete(folder: Path) -> None:
    """Sync the folder's files to disk, then record them and their sizes in the marker."""
    sizes = {}
    for path in sorted(folder.iterdir()):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
            sizes[path.name] = path.stat().st_size
    marker = folder / CONVERSION_MARKER
    with marker.open("w") as handle:
        json.dump({"files": sizes}, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _conversion_complete(folder: Path) -> bool:
    """Whether a converted folder was finished and its files still have their sizes."""
    try:
        sizes = json.loads((folder / CONVERSION_MARKER).read_text())["files"]
        return bool(sizes) and "config.json" in sizes and all(
            (folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def models_dir_for(settings: RunSettings) -> Path:
    return (settings.cache_dir or user_cache_dir()) / "models"


def load_model_and_tokenizer(
    checkpoint: Checkpoint, settings: RunSettings, device: str, hasher: FileHasher
) -> tuple[Any, Any]:
    """Load a checked checkpoint for inference on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(settings.dtype, device)
    if checkpoint.kind == "gguf":
        folder = converted_gguf_folder(checkpoint.path, models_dir_for(settings),
                                       hasher.sha256(checkpoint.path))
        return load_model_and_tokenizer(Checkpoint(checkpoint.spec, "folder", folder), settings,
                                        device, hasher)
    if checkpoint.kind == "adapter":
        assert checkpoint.base is not None
        base_model, base_tokenizer = load_model_and_tokenizer(checkpoint.base, settings, device,
                                                              hasher)
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            base_model, str(checkpoint.path), use_safetensors=not checkpoint.pickle_weights
        ).merge_and_unload()
        has_tokenizer = any((checkpoint.path / name).is_file()
                            for name in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = (AutoTokenizer.from_pretrained(str(checkpoint.path)) if has_tokenizer
                     else base_tokenizer)
        return model.eval(), tokenizer
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(checkpoint.path), dtype=dtype, use_safetensors=not checkpoint.pickle_weights,
            trust_remote_code=checkpoint.trust_remote_code,
            # accelerate places the layers over every visible GPU (and CPU if need be)
            **({"device_map": "auto"} if device == SHARDED else {}),
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(checkpoint.path), trust_remote_code=checkpoint.trust_remote_code
        )
    except Exception as error:
        raise CheckpointError(f"cannot load {checkpoint.spec}: {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}") from error
    loaded: Any = model
    return (loaded if device == SHARDED else loaded.to(device)).eval(), tokenizer
