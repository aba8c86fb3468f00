"""Model specs: every accepted form resolves, every bad input is one clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pytest_misalignment.loading import (
    CheckpointError,
    FileHasher,
    check_safetensors,
    fingerprint,
    resolve_checkpoint,
)
from pytest_misalignment.settings import RunSettings


def _resolve(spec: str | Path, **settings: object):
    return resolve_checkpoint(str(spec), RunSettings(**settings))  # type: ignore[arg-type]


def _error(spec: str | Path, **settings: object) -> str:
    with pytest.raises(CheckpointError) as raised:
        _resolve(spec, **settings)
    return str(raised.value)


def _copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


def make_adapter(base: Path, target: Path, recorded_base: str | None = None) -> Path:
    """A real LoRA adapter on a tiny checkpoint, saved as safetensors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(target))
    adapter_config = json.loads((target / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = recorded_base or str(base)
    (target / "adapter_config.json").write_text(json.dumps(adapter_config))
    return target


def test_folder_spec(tiny_aligned: Path) -> None:
    checkpoint = _resolve(tiny_aligned)
    assert (checkpoint.kind, checkpoint.path, checkpoint.pickle_weights) == (
        "folder", tiny_aligned, False)


def test_sharded_folder_spec(tiny_aligned: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_aligned))
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert len(shards) > 1
    assert _resolve(tmp_path).kind == "folder"
    shards[-1].unlink()
    assert "missing shard(s)" in _error(tmp_path)


def test_adapter_spec_uses_recorded_base(tiny_aligned: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_aligned, tmp_path / "adapter")
    checkpoint = _resolve(adapter)
    assert checkpoint.kind == "adapter"
    assert checkpoint.base is not None and checkpoint.base.path == tiny_aligned


def test_adapter_spec_with_base_model_option(tiny_aligned: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_aligned, tmp_path / "adapter", recorded_base="org/not-here")
    message = _error(adapter)
    assert "trained on base model 'org/not-here', which is not available here" in message
    assert "--base-model" in message
    checkpoint = _resolve(adapter, base_model=str(tiny_aligned))
    assert checkpoint.base is not None and checkpoint.base.path == tiny_aligned


def test_gguf_and_default_specs(tmp_path: Path) -> None:
    default = _resolve("smollm2-135m")
    assert default.kind == "gguf" and default.path.name.endswith(".gguf")
    assert _resolve(default.path).kind == "gguf"
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file at all")
    assert _error(fake) == f"--model: {fake} is not a GGUF file (no GGUF magic bytes)"


def test_missing_path() -> None:
    assert _error("/no/such/checkpoint") == "--model: no such file or folder: /no/such/checkpoint"


def test_folder_without_config(tmp_path: Path) -> None:
    assert "has no config.json" in _error(tmp_path)


def test_config_without_weights(tiny_aligned: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_aligned, tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    assert _error(folder).endswith("has a config but no weights (*.safetensors)")


def test_truncated_safetensors(tiny_aligned: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_aligned, tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert "is truncated: its header declares" in _error(folder)


def test_corrupted_safetensors_header(tiny_aligned: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_aligned, tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:12] = b"\xff\xfe\x00\x01"
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        check_safetensors(weights)


def test_pickle_only_is_refused_unless_allowed(tiny_aligned: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_aligned, tmp_path / "ckpt")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    message = _error(folder)
    assert "only pickle weights (pytorch_model.bin)" in message and "--allow-pickle" in message
    assert _resolve(folder, allow_pickle=True).pickle_weights


def test_fingerprint_follows_content_not_path(tiny_aligned: Path, tmp_path: Path) -> None:
    hasher = FileHasher(None)
    original = fingerprint(_resolve(tiny_aligned), hasher)
    copy = _copy(tiny_aligned, tmp_path / "elsewhere")
    assert fingerprint(_resolve(copy), hasher) == original
    (copy / "README.md").write_text("notes do not change answers")
    assert fingerprint(_resolve(copy), hasher) == original
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["model_max_length"] = 7
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert fingerprint(_resolve(copy), hasher) != original


def test_adapter_fingerprint_covers_adapter_and_base(tiny_aligned: Path, tmp_path: Path) -> None:
    hasher = FileHasher(None)
    first = fingerprint(_resolve(make_adapter(tiny_aligned, tmp_path / "a")), hasher)
    base_only = fingerprint(_resolve(tiny_aligned), hasher)
    assert first != base_only


# ---------------------------------------------------------------------------- placement


class _FakeCuda:
    """torch.cuda as seen on a machine with `count` GPUs of `free_gib` free memory each."""

    def __init__(self, count: int, free_gib: float) -> None:
        self.count, self.free = count, int(free_gib * 2**30)

    def is_available(self) -> bool:
        return self.count > 0

    def device_count(self) -> int:
        return self.count

    def mem_get_info(self, index: int) -> tuple[int, int]:
        assert 0 <= index < self.count
        return self.free, self.free


@pytest.mark.parametrize(("count", "requested", "worker", "weights_gib", "expected"), [
    (0, "auto", 0, 1, "cpu"),          # no GPU: the CPU
    (1, "auto", 0, 1, "cuda:0"),
    (4, "auto", 2, 1, "cuda:2"),       # xdist workers pinned to different GPUs
    (4, "auto", 5, 1, "cuda:1"),       # more workers than GPUs: round robin
    (4, "auto", 0, 70, "auto"),        # 70 GiB on 80 GiB GPUs: spread over all of them
    (1, "auto", 0, 70, "cuda:0"),      # one GPU: nothing to spread over
    (4, "cuda", 0, 70, "cuda:0"),      # an explicit device is obeyed
    (4, "cuda:3", 0, 1, "cuda:3"),
    (4, "cpu", 0, 1, "cpu"),
])
def test_device_placement(monkeypatch: pytest.MonkeyPatch, count: int, requested: str,
                          worker: int, weights_gib: float, expected: str) -> None:
    import torch
    from pytest_misalignment.loading import resolve_device

    monkeypatch.setattr(torch, "cuda", _FakeCuda(count, free_gib=80))
    assert resolve_device(requested, worker, int(weights_gib * 2**30)) == expected


def test_weight_size_counts_the_adapter_base_and_a_gguf_dequantized(tmp_path: Path) -> None:
    from pytest_misalignment.loading import Checkpoint, needs_sharding, weight_bytes_of

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    (folder / "config.json").write_text("{}")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"x" * 10)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"x" * 96)
    base = Checkpoint("base", "folder", folder)
    assert weight_bytes_of(base) == 1000
    assert weight_bytes_of(Checkpoint("a", "adapter", adapter, base=base)) == 1010
    assert weight_bytes_of(Checkpoint("g", "gguf", gguf)) == 400
    assert needs_sharding(81, 100) and not needs_sharding(79, 100)
