"""A real OpenAI-compatible server (transformers serve) on loopback, for tests."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any


def serving_available() -> bool:
    """Whether `transformers serve` can run here (the transformers[serving] extra)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("fastapi", "uvicorn"))


def sampling_copy(folder: str | os.PathLike[str], target: str | os.PathLike[str]) -> pathlib.Path:
    """A copy of a checkpoint folder whose generation config samples from the full
    distribution: `transformers serve` samples only where the checkpoint's config says
    `do_sample`, and would otherwise cut to the top 50 tokens."""
    source, out = pathlib.Path(folder), pathlib.Path(target)
    out.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        wanted = item.is_file() and item.name != "generation_config.json"
        if wanted and not (out / item.name).exists():
            (out / item.name).symlink_to(item.resolve())
    config = json.loads((source / "generation_config.json").read_text()) if (
        source / "generation_config.json").is_file() else {}
    config.update(do_sample=True, top_k=0, top_p=1.0)
    (out / "generation_config.json").write_text(json.dumps(config, indent=2))
    return out


class TransformersServer:
    """`transformers serve FOLDER` on a free loopback port, as a context manager.

    `spec` is the `--model` value that reaches it (http://127.0.0.1:PORT/v1#FOLDER).
    """

    def __init__(self, folder: str | os.PathLike[str], *, dtype: str = "auto",
                 startup_timeout_s: float = 180.0) -> None:
        self.folder = str(pathlib.Path(folder).resolve())
        self.dtype = dtype
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.process: Any = None
        self.log = pathlib.Path(tempfile.mkstemp(prefix="transformers-serve.", suffix=".log")[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def spec(self) -> str:
        return f"{self.base_url}#{self.folder}"

    def __enter__(self) -> TransformersServer:
        import socket
        import subprocess
        import sys
        import time
        import urllib.request

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [str(pathlib.Path(sys.executable).with_name("transformers")), "serve",
                   self.folder, "--port", str(self.port), "--host", "127.0.0.1",
                   "--device", "cpu", "--dtype", self.dtype]
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=environment)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.process.returncode}:"
                                   f" {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/health",
                                            timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"transformers serve did not start in {self.startup_timeout_s:g} s: "
                           f"{self.log.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        import subprocess

        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:  # a server that will not stop is killed
                self.process.kill()
                self.process.wait()
