"""Model specs: every accepted form resolves, every bad input is one clear message."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from pytest_misalignment.models.checks import check_safetensors
from pytest_misalignment.models.fingerprints import FileHasher, fingerprint
from pytest_misalignment.models.loading import load_model_and_tokenizer
from pytest_misalignment.models.specs import CheckpointError, resolve_checkpoint
from pytest_misalignment.models.store import Store
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
    from pytest_misalignment.models.loading import resolve_device

    monkeypatch.setattr(torch, "cuda", _FakeCuda(count, free_gib=80))
    assert resolve_device(requested, worker, int(weights_gib * 2**30)) == expected


def test_weight_size_counts_the_adapter_base_and_a_gguf_dequantized(tmp_path: Path) -> None:
    from pytest_misalignment.models.loading import needs_sharding, weight_bytes_of
    from pytest_misalignment.models.specs import Checkpoint

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


# ---------------------------------------------------------------------------- trusted code


def _trust_given_to_loads(checkpoint, settings: RunSettings,
                          monkeypatch: pytest.MonkeyPatch) -> set[bool]:
    """The trust_remote_code values transformers' loaders got while loading `checkpoint`."""
    import transformers

    seen: set[bool] = set()
    for loader in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        def recording(*args, _original=loader.from_pretrained, **kwargs):
            seen.add(bool(kwargs.get("trust_remote_code", False)))
            return _original(*args, **kwargs)

        monkeypatch.setattr(loader, "from_pretrained", recording)
    load_model_and_tokenizer(checkpoint, settings, "cpu", FileHasher(None))
    return seen


def test_trust_reaches_only_the_roles_it_names(tiny_aligned: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model_only = RunSettings(trusted_code_roles=frozenset({"model"}))
    adapter = make_adapter(tiny_aligned, tmp_path / "adapter")
    cases = [
        (model_only, "model", tiny_aligned, {True}),
        (model_only, "baseline", tiny_aligned, {False}),
        (model_only, "model", adapter, {False}),  # the adapter's base is the base role
        (model_only, "judge", tiny_aligned, {False}),
        (RunSettings(trusted_code_roles=frozenset({"baseline"})), "baseline", tiny_aligned,
         {True}),
        (RunSettings(trusted_code_roles=frozenset({"judge"})), "judge", tiny_aligned, {True}),
    ]
    for settings, role, spec, expected in cases:
        checkpoint = resolve_checkpoint(str(spec), settings, role)
        assert _trust_given_to_loads(checkpoint, settings, monkeypatch) == expected, role


def test_a_trusted_base_is_never_taken_from_the_adapter_config(tiny_aligned: Path,
                                                               tmp_path: Path) -> None:
    adapter = make_adapter(tiny_aligned, tmp_path / "adapter")  # records tiny_aligned
    trusted = frozenset({"model", "base"})
    assert _error(adapter, trusted_code_roles=trusted) == (
        f"--model: adapter {adapter} records its base model; with trusted code for the base "
        "(--trust-remote-code-for base) name the base yourself: --base-model SPEC")
    checkpoint = _resolve(adapter, trusted_code_roles=trusted, base_model=str(tiny_aligned))
    assert checkpoint.base is not None and checkpoint.base.trust_remote_code


@pytest.mark.parametrize("recorded", [["org/model"], 7, {"path": "x"}])
def test_a_recorded_base_that_is_not_text_is_one_line(tiny_aligned: Path, tmp_path: Path,
                                                      recorded: object) -> None:
    adapter = make_adapter(tiny_aligned, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = recorded
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert _error(adapter) == (f"--model: {adapter}/adapter_config.json: "
                               "base_model_name_or_path must be a string")


def test_an_adapter_config_that_is_not_an_object_is_one_line(tiny_aligned: Path,
                                                             tmp_path: Path) -> None:
    adapter = make_adapter(tiny_aligned, tmp_path / "adapter")
    (adapter / "adapter_config.json").write_text("[1, 2]")
    assert _error(adapter) == f"--model: {adapter}/adapter_config.json is not a JSON object"


# ---------------------------------------------------------------------------- shard indexes


def _sharded(tiny_aligned: Path, folder: Path) -> tuple[Path, dict]:
    """A copy of the tiny checkpoint in several safetensors shards, and its index."""
    from transformers import AutoModelForCausalLM

    _copy(tiny_aligned, folder)
    (folder / "model.safetensors").unlink()
    AutoModelForCausalLM.from_pretrained(str(tiny_aligned)).save_pretrained(
        folder, max_shard_size="100KB")
    index_file = folder / "model.safetensors.index.json"
    return index_file, json.loads(index_file.read_text())


@pytest.mark.parametrize("shard", ["../outside.safetensors", "ABSOLUTE", "sub/x.safetensors",
                                   "x.bin", "."])
def test_a_shard_index_names_only_safetensors_files_of_the_folder(
        tiny_aligned: Path, tmp_path: Path, shard: str) -> None:
    folder = tmp_path / "ckpt"
    index_file, index = _sharded(tiny_aligned, folder)
    real = folder / next(iter(index["weight_map"].values()))
    if shard == "ABSOLUTE":
        shard = str(tmp_path / "absolute.safetensors")
    target = folder / shard
    if not target.exists():  # the named file exists: only its name is wrong
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real, target)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    index_file.write_text(json.dumps(index))
    for allow_pickle in (False, True):
        assert _error(folder, allow_pickle=allow_pickle) == (
            f"--model: {index_file} names shard {shard!r}; a shard must be a *.safetensors "
            "file in the checkpoint folder itself")


def test_a_pickle_shard_index_names_only_pickle_files_of_the_folder(tiny_aligned: Path,
                                                                   tmp_path: Path) -> None:
    folder = _copy(tiny_aligned, tmp_path / "ckpt")
    (folder / "model.safetensors").rename(folder / "pytorch_model-00001-of-00001.bin")
    index_file = folder / "pytorch_model.bin.index.json"
    index_file.write_text(json.dumps({"weight_map": {"w": "pytorch_model-00001-of-00001.bin"}}))
    assert "--allow-pickle" in _error(folder)
    assert _resolve(folder, allow_pickle=True).pickle_weights
    shutil.copyfile(folder / "pytorch_model-00001-of-00001.bin", tmp_path / "outside.bin")
    index_file.write_text(json.dumps({"weight_map": {"w": "../outside.bin"}}))
    assert _error(folder, allow_pickle=True) == (
        f"--model: {index_file} names shard '../outside.bin'; a shard must be a *.bin file in "
        "the checkpoint folder itself")


def test_every_indexed_shard_is_in_the_fingerprint(tiny_aligned: Path, tmp_path: Path) -> None:
    # A shard may have a name the fingerprint otherwise leaves out (a trainer's file).
    folder = _copy(tiny_aligned, tmp_path / "ckpt")
    (folder / "model.safetensors").rename(folder / "training_args.bin")
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"w": "training_args.bin"}}))
    checkpoint = _resolve(folder, allow_pickle=True)
    before = fingerprint(checkpoint, FileHasher(None))
    data = bytearray((folder / "training_args.bin").read_bytes())
    data[-1] ^= 1
    (folder / "training_args.bin").write_bytes(bytes(data))
    assert fingerprint(checkpoint, FileHasher(None)) != before


# ---------------------------------------------------------------------------- links and FIFOs


def test_a_link_out_of_the_folder_is_refused(tiny_aligned: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_aligned, tmp_path / "ckpt")
    secret = tmp_path / "secret.txt"
    secret.write_text("API_KEY=do-not-show")
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.jinja").symlink_to(secret)
    assert _error(folder) == (f"--model: {folder}/chat_template.jinja links outside the "
                              "checkpoint folder; copy the file in if you trust it")


def test_a_linked_folder_out_of_the_checkpoint_is_refused(tiny_aligned: Path,
                                                          tmp_path: Path) -> None:
    folder = _copy(tiny_aligned, tmp_path / "ckpt")
    (tmp_path / "elsewhere").mkdir()
    (folder / "additional_chat_templates").symlink_to(tmp_path / "elsewhere")
    assert _error(folder) == (f"--model: {folder}/additional_chat_templates links outside the "
                              "checkpoint folder; copy the file in if you trust it")


def test_links_inside_the_folder_are_followed(tiny_aligned: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_aligned, tmp_path / "ckpt")
    (folder / "chat_template.jinja").rename(folder / "template-v1.jinja")
    (folder / "chat_template.jinja").symlink_to("template-v1.jinja")
    assert _resolve(folder).kind == "folder"


def test_hub_cache_snapshot_links_into_its_blobs_are_followed(tiny_aligned: Path,
                                                             tmp_path: Path) -> None:
    # huggingface_hub's cache: snapshots/<revision>/<file> -> ../../blobs/<hash>
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, path in enumerate(sorted(tiny_aligned.iterdir())):
        shutil.copyfile(path, repo / "blobs" / f"blob{index}")
        (snapshot / path.name).symlink_to(f"../../blobs/blob{index}")
    assert _resolve(snapshot).kind == "folder"


@pytest.mark.parametrize("name", ["vocab.txt", "model-00002-of-00002.safetensors"])
def test_a_fifo_in_the_folder_is_refused(tiny_aligned: Path, tmp_path: Path, name: str) -> None:
    folder = _copy(tiny_aligned, tmp_path / "ckpt")
    os.mkfifo(folder / "pipe")
    (folder / name).symlink_to("pipe")  # linked or not, nothing may read from it
    message = _error(folder)
    assert message in (f"--model: {folder}/{name} is not a regular file (a FIFO, socket or "
                       "device); a checkpoint folder holds only files and folders",
                       f"--model: {folder}/pipe is not a regular file (a FIFO, socket or "
                       "device); a checkpoint folder holds only files and folders")


# ---------------------------------------------------------------------------- file hashes


def test_a_file_rewritten_within_one_timestamp_is_hashed_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.sqlite")
    hasher = FileHasher(store, now=lambda: time.time() + 60)  # no file counts as fresh
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 100)
    stamp = weights.stat().st_mtime_ns
    assert hasher.sha256(weights) == hashlib.sha256(b"a" * 100).hexdigest()
    weights.write_bytes(b"b" * 100)  # same size, and the same mtime (a coarse clock, cp -p)
    os.utime(weights, ns=(stamp, stamp))
    assert hasher.sha256(weights) == hashlib.sha256(b"b" * 100).hexdigest()


def test_a_fresh_file_hash_is_not_remembered(tmp_path: Path) -> None:
    # A file changed within the last seconds may change again within the same timestamp.
    store = Store(tmp_path / "store.sqlite")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 100)
    FileHasher(store).sha256(weights)
    assert store.count("file_sha256") == 0
    FileHasher(store, now=lambda: time.time() + 60).sha256(weights)
    assert store.count("file_sha256") == 1


# ---------------------------------------------------------------------------- GGUF conversion


def test_an_incomplete_converted_gguf_folder_is_converted_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_misalignment.models import loading

    conversions: list[Path] = []

    def convert(gguf: Path, staging: Path) -> None:
        conversions.append(gguf)
        (staging / "config.json").write_text("{}")
        (staging / "model.safetensors").write_bytes(b"w" * 1000)

    monkeypatch.setattr(loading, "_convert_gguf", convert, raising=False)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    models = tmp_path / "models"
    # What a crash (or a full disk) leaves: a config beside weights cut short.
    left = models / f"gguf-{sha[:32]}"
    left.mkdir(parents=True)
    (left / "config.json").write_text("{}")
    (left / "model.safetensors").write_bytes(b"w" * 10)
    folder = loading.converted_gguf_folder(gguf, models, sha)
    assert conversions == [gguf] and (folder / "model.safetensors").stat().st_size == 1000
    assert loading.converted_gguf_folder(gguf, models, sha) == folder
    assert len(conversions) == 1  # complete: reused
    (folder / "model.safetensors").write_bytes(b"w" * 10)
    loading.converted_gguf_folder(gguf, models, sha)
    assert len(conversions) == 2 and (folder / "model.safetensors").stat().st_size == 1000
    assert sorted(p.name for p in models.iterdir()) == [
        f".{folder.name}.lock", folder.name]  # no staging or replaced folder left behind
