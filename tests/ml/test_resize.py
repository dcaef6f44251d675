"""Rank reduction by SVD: exact at full rank, the truncated-SVD optimum below it (Eckart-Young), energy
reported per module and overall, a new library adapter with lineage that loads in plain peft, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from studio.core.errors import StudioError
from tests.tiny_model import make_tiny_adapter


def test_full_rank_reproduces_the_delta():
    import torch

    from studio.ml.blend.resize import resize_delta

    torch.manual_seed(0)
    a, b = torch.randn(6, 20), torch.randn(30, 6)
    new_a, new_b, kept, total, values = resize_delta(a, b, 1.5, 6)
    want = 1.5 * b.double() @ a.double()
    assert new_a.shape == (6, 20) and new_b.shape == (30, 6)
    assert torch.allclose(new_b @ new_a, want, atol=1e-10)
    assert kept == pytest.approx(total) and len(values) == 6


def test_smaller_rank_is_the_truncated_svd_optimum():
    import torch

    from studio.ml.blend.resize import resize_delta

    torch.manual_seed(1)
    a, b = torch.randn(8, 40), torch.randn(24, 8)
    delta = 0.5 * b.double() @ a.double()
    u, s, vh = torch.linalg.svd(delta)
    best = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
    new_a, new_b, kept, total, values = resize_delta(a, b, 0.5, 3)
    assert new_a.shape == (3, 40) and new_b.shape == (24, 3)
    assert torch.allclose(new_b @ new_a, best, atol=1e-9)
    # Eckart-Young: the error is exactly the energy dropped.
    assert float(torch.linalg.norm(delta - new_b @ new_a) ** 2) == pytest.approx(float((s[3:] ** 2).sum()))
    assert kept / total == pytest.approx(float((s[:3] ** 2).sum() / (s ** 2).sum()))
    assert values == pytest.approx(s[:8].tolist())


@pytest.fixture
def library(studio_home, tiny_base_dir: Path, tmp_path: Path):
    from studio.core.library.store import AdapterLibrary

    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    folder = make_tiny_adapter(tiny_base_dir, tmp_path / "parent", rank=8, seed=5, targets=("q_proj", "v_proj"))
    config = json.loads((folder / "adapter_config.json").read_text())
    config["use_rslora"] = True  # scaling alpha / sqrt(r): the resize must fold peft's own scaling in
    (folder / "adapter_config.json").write_text(json.dumps(config))
    lib = AdapterLibrary(studio_home)
    lib.import_path(folder, name="parent")
    return lib


def _deltas(base: Path, adapter: Path) -> dict[str, object]:
    """Module name -> scaling * B @ A, as plain peft computes it."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            a, b = module.lora_A["default"].weight.double(), module.lora_B["default"].weight.double()
            out[name] = (module.scaling["default"] * b @ a).detach()
    return out


def test_resized_adapter_is_a_new_library_entry_that_loads_in_peft(library, tiny_base_dir):
    import torch

    from studio.ml.blend.resize import resize_adapter

    parent = library.get("parent")
    events = []
    result = resize_adapter(library, "parent", 3, "parent r3", progress=events.append)
    entry = result.entry
    assert entry.id != parent.id and entry.manifest.name == "parent r3"
    assert {e.id for e in library.list()} == {parent.id, entry.id}
    m = entry.manifest
    assert m.rank == 3 and m.source == "resize" and m.base_model == "tiny-llama"
    assert m.base_fingerprint == parent.manifest.base_fingerprint
    assert m.lineage.parents == [parent.id]
    assert m.lineage.recipe["method"] == "resize" and m.lineage.recipe["from_rank"] == 8
    config = json.loads((entry.path / "adapter_config.json").read_text())
    assert config["r"] == 3 and config["lora_alpha"] == 3 and not config["use_rslora"]
    assert result.previous_rank == 8 and len(result.layers) == 4  # 2 layers x (q, v)
    assert 0 < result.min_layer_energy <= result.retained_energy < 1
    assert result.min_layer_energy == min(x.retained for x in result.layers)
    assert events[-1].fraction == 1.0 and "energy" in events[-1].message

    before, after = _deltas(tiny_base_dir, parent.path), _deltas(tiny_base_dir, entry.path)  # plain peft loads it
    assert before.keys() == after.keys()
    kept = total = 0.0
    for name, delta in before.items():
        u, s, vh = torch.linalg.svd(delta)
        assert torch.allclose(after[name], u[:, :3] @ torch.diag(s[:3]) @ vh[:3], atol=1e-5), name
        kept, total = kept + float((s[:3] ** 2).sum()), total + float((s ** 2).sum())
    assert result.retained_energy == pytest.approx(kept / total, rel=1e-6)


@pytest.mark.parametrize("rank", [0, -1, 8, 12])
def test_refuses_ranks_that_do_not_shrink_it(library, rank):
    from studio.ml.blend.resize import resize_adapter

    before = sorted(p.name for p in library.data.root.iterdir())
    with pytest.raises(StudioError, match=r"between 1 and 7 \(the adapter's rank is 8\)"):
        resize_adapter(library, "parent", rank, "nope")
    assert [e.manifest.name for e in library.list()] == ["parent"]
    assert sorted(p.name for p in library.data.root.iterdir()) == before  # no scratch left behind
