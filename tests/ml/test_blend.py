"""Blending adapters: compatibility refusals, equality with peft's add_weighted_adapter for every
method, the exact (cat) blend equals the sum of the updates, rsLoRA scaling, no silent no-op,
preview / save with recipe / remake from recipe, cancellation, and the `blend` CLI verb."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from studio.core.blend.checks import (
    METHOD_HELP,
    METHODS,
    check_blend,
    read_adapter_facts,
    suitable_methods,
)
from studio.core.errors import StudioError
from tests.tiny_model import make_tiny_adapter

PROMPT_IDS = [[5, 17, 33, 2, 9, 41, 7]]


def make_adapter(base: Path, out: Path, *, rank: int = 4, seed: int = 0,
                 targets: tuple[str, ...] = ("q_proj", "v_proj"), rslora: bool = False) -> Path:
    make_tiny_adapter(base, out, rank=rank, seed=seed, targets=targets)
    if rslora:
        path = out / "adapter_config.json"
        config = json.loads(path.read_text())
        config["use_rslora"] = True
        path.write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def adapters(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("blend-adapters")
    return {
        "A": make_adapter(tiny_base_dir, root / "A", rank=4, seed=1),
        "B": make_adapter(tiny_base_dir, root / "B", rank=4, seed=2),
        "C": make_adapter(tiny_base_dir, root / "C", rank=8, seed=3),
        "R": make_adapter(tiny_base_dir, root / "R", rank=4, seed=4, rslora=True),
        "QKVO": make_adapter(tiny_base_dir, root / "QKVO", rank=4, seed=5,
                             targets=("q_proj", "k_proj", "v_proj", "o_proj")),
    }


def facts(adapters: dict[str, Path], *names: str):
    return [read_adapter_facts(adapters[n], ref=n) for n in names]


def load_peft(base: Path, adapters: dict[str, Path], names: tuple[str, ...]):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        peft_model.load_adapter(adapters[name], adapter_name=name)
    return peft_model.eval()


def lora_tensors(peft_model, name: str) -> dict[str, object]:
    return {key: value.detach().clone() for key, value in peft_model.state_dict().items()
            if f".{name}." in key and "lora_" in key}


def deltas(peft_model, name: str) -> list:
    from peft.tuners.lora import LoraLayer

    return [m.get_delta_weight(name) for m in peft_model.modules()
            if isinstance(m, LoraLayer) and name in m.lora_A]


# ------------------------------------------------------------------ torch-free checks


def test_every_method_is_explained_honestly():
    assert set(METHOD_HELP) == set(METHODS)
    assert "sqrt(weight)" in METHOD_HELP["linear"] and "NOT the weighted sum" in METHOD_HELP["linear"]
    assert "exactly the weighted sum" in METHOD_HELP["cat"] and "sum of ranks" in METHOD_HELP["cat"]
    assert "Exact" in METHOD_HELP["exact"]


def test_plan_for_exact_and_svd(adapters):
    plan = check_blend(facts(adapters, "A", "C"), [1, -0.5], "exact")
    assert (plan.peft_method, plan.result_rank, plan.exact) == ("cat", 12, True)
    assert plan.targets == ["q_proj", "v_proj"] and plan.recipe.parents == ["A", "C"]
    svd = check_blend(facts(adapters, "A", "C"), [1, 1], "svd", rank=6)
    assert (svd.result_rank, svd.exact, svd.recipe.rank) == (6, False, 6)
    ties = check_blend(facts(adapters, "A", "B"), [1, 1], "ties")
    assert ties.recipe.density == 0.5 and ties.recipe.rank is None


def test_refuses_unequal_ranks_for_linear_and_suggests_methods(adapters):
    with pytest.raises(StudioError) as err:
        check_blend(facts(adapters, "A", "C"), [1, 1], "linear")
    message = str(err.value)
    assert "equal rank" in message and "'A': 4" in message and "'C': 8" in message
    assert "exact" in message and "cat" in message and "svd" in message and "ties," not in message
    assert "linear" not in suitable_methods(facts(adapters, "A", "C"))
    assert "linear" in suitable_methods(facts(adapters, "A", "B"))


def test_refuses_different_targets(adapters):
    with pytest.raises(StudioError, match="target different modules") as err:
        check_blend(facts(adapters, "A", "QKVO"), [1, 1], "exact")
    assert "k_proj" in str(err.value)


def test_refuses_different_bases(adapters, tmp_path):
    from studio.core.library.manifest import AdapterManifest, write_manifest

    other = tmp_path / "other"
    shutil.copytree(adapters["B"], other)
    write_manifest(other, AdapterManifest(id="o", name="other", base_model="Qwen-0.5B",
                                          base_fingerprint="ffff0000ffff0000"))
    mine = tmp_path / "mine"
    shutil.copytree(adapters["A"], mine)
    write_manifest(mine, AdapterManifest(id="m", name="mine", base_model="tiny-llama",
                                         base_fingerprint="1234123412341234"))
    with pytest.raises(StudioError, match="different base models") as err:
        check_blend([read_adapter_facts(mine), read_adapter_facts(other)], [1, 1], "exact")
    assert "Qwen-0.5B" in str(err.value) and "tiny-llama" in str(err.value)
    # No fingerprints: the base names in adapter_config.json decide.
    config = json.loads((adapters["B"] / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "meta-llama/Llama-3.2-1B"
    plain = tmp_path / "plain"
    shutil.copytree(adapters["B"], plain)
    (plain / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(StudioError, match="different base models"):
        check_blend([read_adapter_facts(adapters["A"]), read_adapter_facts(plain)], [1, 1], "cat")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"weights": [1], "method": "cat"}, "weights were given"),
    ({"weights": [0, 0], "method": "cat"}, "not all zero"),
    ({"weights": [1, 1], "method": "blend-it"}, "Unknown blend method"),
    ({"weights": [1, 1], "method": "ties", "density": 1.5}, "Density"),
    ({"weights": [1, 1], "method": "svd", "rank": 500}, "Rank 500 is out of range"),
])
def test_refuses_bad_requests(adapters, kwargs, match):
    with pytest.raises(StudioError, match=match):
        check_blend(facts(adapters, "A", "B"), **kwargs)


def test_refuses_dora_and_duplicates(adapters, tmp_path):
    dora = tmp_path / "dora"
    shutil.copytree(adapters["B"], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    config["use_dora"] = True
    (dora / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(StudioError, match="DoRA"):
        check_blend([read_adapter_facts(adapters["A"]), read_adapter_facts(dora)], [1, 1], "cat")
    with pytest.raises(StudioError, match="twice"):
        check_blend(facts(adapters, "A", "A"), [1, 1], "cat")


# ------------------------------------------------------------------ blending on loaded adapters


DETERMINISTIC = ["cat", "svd", "linear", "ties", "ties_svd", "magnitude_prune", "magnitude_prune_svd"]
RANDOM = ["dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd"]


@pytest.mark.parametrize("method", DETERMINISTIC + RANDOM)
def test_blend_weights_equal_peft_add_weighted_adapter(tiny_base_dir, adapters, method):
    import torch

    from studio.ml.blend.weighted import apply_blend

    model = load_peft(tiny_base_dir, adapters, ("A", "B"))
    plan = check_blend(facts(adapters, "A", "B"), [0.7, -0.4], method, seed=11,
                       rank=3 if method.endswith("svd") else None)
    ours, layers, norm = apply_blend(model, ["A", "B"], plan)
    assert layers == 4 and norm > 0
    kwargs = {"combination_type": method, "svd_rank": plan.recipe.rank, "density": plan.recipe.density}
    torch.manual_seed(11)
    model.add_weighted_adapter(["A", "B"], [0.7, -0.4], "reference",
                               **{k: v for k, v in kwargs.items() if v is not None})
    mine = lora_tensors(model, ours)
    theirs = lora_tensors(model, "reference")
    assert len(mine) == len(theirs) == 8
    for key, value in mine.items():
        assert torch.equal(value, theirs[key.replace(ours, "reference")]), key


def test_exact_blend_equals_both_adapters_applied(tiny_base_dir, adapters):
    import torch

    from studio.ml.blend.weighted import apply_blend

    model = load_peft(tiny_base_dir, adapters, ("A", "C"))  # ranks 4 and 8
    ids = torch.tensor(PROMPT_IDS)
    model.base_model.set_adapter(["A", "C"])  # both updates on top of the base
    with torch.no_grad():
        both = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
    name, _, _ = apply_blend(model, ["A", "C"], check_blend(facts(adapters, "A", "C"), [1, 1], "exact"))
    model.set_adapter(name)
    with torch.no_grad():
        blended = model(ids).logits
    assert not torch.allclose(both, base, atol=1e-3)
    torch.testing.assert_close(blended, both, atol=1e-5, rtol=1e-5)
    assert model.peft_config[name].r == 12
    # With a negative weight, the update is exactly w_a * dA + w_c * dC on every module.
    sub, _, _ = apply_blend(model, ["A", "C"], check_blend(facts(adapters, "A", "C"), [1, -0.5], "exact"))
    for d_sub, d_a, d_c in zip(deltas(model, sub), deltas(model, "A"), deltas(model, "C"), strict=True):
        torch.testing.assert_close(d_sub, d_a - 0.5 * d_c, atol=1e-6, rtol=1e-5)
    # svd at rank >= sum of ranks is exact too; at a lower rank it is not.
    full, _, _ = apply_blend(model, ["A", "C"], check_blend(facts(adapters, "A", "C"), [1, 1], "svd", rank=12))
    low, _, _ = apply_blend(model, ["A", "C"], check_blend(facts(adapters, "A", "C"), [1, 1], "svd", rank=2))
    for d_full, d_low, d_a, d_c in zip(deltas(model, full), deltas(model, low), deltas(model, "A"),
                                       deltas(model, "C"), strict=True):
        torch.testing.assert_close(d_full, d_a + d_c, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(d_low, d_a + d_c, atol=1e-4)


def test_rslora_parent_scaling_is_handled(tiny_base_dir, adapters):
    import math

    import torch

    from studio.ml.blend.weighted import apply_blend

    model = load_peft(tiny_base_dir, adapters, ("R", "A"))
    assert model.peft_config["R"].use_rslora
    plan = check_blend(facts(adapters, "R", "A"), [1, 1], "exact")
    assert any("rsLoRA" in w for w in plan.warnings)
    name, _, _ = apply_blend(model, ["R", "A"], plan)
    expected = [d_r + d_a for d_r, d_a in zip(deltas(model, "R"), deltas(model, "A"), strict=True)]
    for got, want in zip(deltas(model, name), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert model.peft_config[name].use_rslora is False
    # The trap this guards against: raw peft keeps use_rslora from the first parent and
    # scales the blend by sqrt(r) on top of the scaling already folded into its matrices.
    model.add_weighted_adapter(["R", "A"], [1, 1], "raw", combination_type="cat")
    for got, want in zip(deltas(model, "raw"), expected, strict=True):
        torch.testing.assert_close(got, want * math.sqrt(8), atol=1e-5, rtol=1e-4)
    # linear blends of rsLoRA parents get the same fix.
    linear, _, _ = apply_blend(model, ["R", "A"], check_blend(facts(adapters, "R", "A"), [1, 1], "linear"))
    assert model.peft_config[linear].use_rslora is False


def test_a_blend_can_never_silently_do_nothing(tiny_base_dir, adapters):
    from studio.ml.blend.weighted import apply_blend

    model = load_peft(tiny_base_dir, adapters, ("A", "B"))
    plan = check_blend(facts(adapters, "A", "B"), [1, 1], "linear")
    first, _, _ = apply_blend(model, ["A", "B"], plan)
    second, _, _ = apply_blend(model, ["A", "B"], plan)
    assert first != second  # a fresh name every time
    with pytest.raises(StudioError, match="already loaded"):
        apply_blend(model, ["A", "B"], plan, name=first)
    # Weights that cancel out give an empty update: refused, not saved as a no-op adapter.
    plan.recipe.weights = [0.0, 0.0]
    before = set(model.peft_config)
    with pytest.raises(StudioError, match="empty"):
        apply_blend(model, ["A", "B"], plan)
    assert set(model.peft_config) == before  # the empty adapter was removed again


# ------------------------------------------------------------------ sessions and the library


@pytest.fixture
def library(studio_home, tiny_base_dir, adapters):
    from studio.core.library.store import AdapterLibrary

    shutil.copytree(tiny_base_dir, studio_home.models / "tiny-llama")
    lib = AdapterLibrary(studio_home)
    for key in ("A", "B", "C", "R", "QKVO"):
        lib.import_path(adapters[key], name=key)
    return lib


def peft_on_fresh_base(base: Path, *folders: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, folders[0], adapter_name="first")
    for i, folder in enumerate(folders[1:]):
        peft_model.load_adapter(folder, adapter_name=f"more{i}")
    if len(folders) > 1:
        peft_model.base_model.set_adapter(["first", *[f"more{i}" for i in range(len(folders) - 1)]])
    return peft_model.eval()


def logits(model):
    import torch

    with torch.no_grad():
        return model(torch.tensor(PROMPT_IDS)).logits


def test_session_previews_saves_with_recipe_and_remakes(library, tiny_base_dir):
    import torch
    from safetensors.torch import load_file

    from studio.ml.blend.weighted import BlendSession, blend_from_recipe
    from studio.ml.chat.smoke import greedy_chat

    events = []
    ids = [library.get("A").id, library.get("B").id]
    session = BlendSession(library, ["A", "B"], progress=events.append)
    assert events[-1].fraction == 1.0 and {e.stage for e in events} >= {"check", "load"}
    result = session.blend([1, 0.5], "dare_ties", density=0.7, seed=3)
    assert result.plan.result_rank == 4 and result.layers == 4 and result.update_norm > 0
    preview = session.preview("What is the capital of France?", max_new_tokens=6)
    assert isinstance(preview, str)
    blend_logits = logits(session.model)
    entry = session.save("mix", tags=["test"])

    manifest = entry.manifest
    assert (manifest.name, manifest.source, manifest.base_model) == ("mix", "blend", "tiny-llama")
    assert manifest.lineage.parents == ids and manifest.tags == ["test"]
    recipe = manifest.lineage.recipe
    assert (recipe["method"], recipe["weights"], recipe["density"], recipe["seed"]) == ("dare_ties", [1.0, 0.5],
                                                                                         0.7, 3)
    assert recipe["parent_names"] == ["A", "B"] and recipe["peft_method"] == "dare_ties"
    assert json.loads((entry.path / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-llama"
    # The saved adapter loads in plain peft and behaves exactly like the blend held in memory.
    plain = peft_on_fresh_base(tiny_base_dir, entry.path)
    torch.testing.assert_close(logits(plain), blend_logits, atol=1e-5, rtol=1e-5)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    again = greedy_chat(plain, tokenizer, "What is the capital of France?", max_new_tokens=6,
                        stop_ids=[tokenizer.convert_tokens_to_ids("<|im_end|>")], require_template=False)
    assert again.text == preview
    session.close()
    # The recipe makes the same adapter again (DARE's random mask is seeded).
    remade = blend_from_recipe(library, recipe, "mix again")
    assert remade.id != entry.id and remade.manifest.lineage.recipe["seed"] == 3
    first, second = (load_file(e.path / "adapter_model.safetensors") for e in (entry, remade))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_saved_blends_of_every_kind_load_in_plain_peft(library, tiny_base_dir):
    import torch

    from studio.ml.blend.weighted import BlendSession

    with BlendSession(library, ["A", "B"]) as session:
        for method, kwargs in [("linear", {}), ("ties", {"density": 0.6}), ("svd", {"rank": 3}),
                               ("magnitude_prune", {})]:
            session.blend([0.8, -0.3], method, **kwargs)
            expected = logits(session.model)
            entry = session.save(f"blend-{method}")
            config = json.loads((entry.path / "adapter_config.json").read_text())
            assert config["r"] == config["lora_alpha"] == (3 if method == "svd" else 4)
            torch.testing.assert_close(logits(peft_on_fresh_base(tiny_base_dir, entry.path)), expected,
                                       atol=1e-5, rtol=1e-5)
        assert len(session.model.peft_config) == 3  # two parents + only the latest blend


def test_rslora_blend_saved_equals_both_parents(library, tiny_base_dir):
    import torch

    from studio.ml.blend.weighted import blend_adapters

    entry = blend_adapters(library, ["R", "A"], [1, 1], "exact", "rs+plain")
    config = json.loads((entry.path / "adapter_config.json").read_text())
    assert config["use_rslora"] is False and config["r"] == 8
    both = peft_on_fresh_base(tiny_base_dir, library.get("R").path, library.get("A").path)
    torch.testing.assert_close(logits(peft_on_fresh_base(tiny_base_dir, entry.path)), logits(both),
                               atol=1e-5, rtol=1e-5)


def test_stopping_a_blend_saves_nothing(library):
    from studio.core.progress import Cancelled
    from studio.ml.blend.weighted import BlendSession

    seen = []
    session = BlendSession(library, ["A", "C"], progress=seen.append,
                           should_stop=lambda: bool(seen) and seen[-1].stage == "blend")
    with pytest.raises(Cancelled):
        session.blend([1, 1], "svd", rank=6)
    assert session.result is None and len(library.list()) == 5
    assert not any(name.startswith("blend_") for name in session.model.peft_config)
    with pytest.raises(StudioError, match="no blend to save"):
        session.save("nothing")


def test_refusals_come_before_loading(library, monkeypatch):
    from studio.ml.base import loading
    from studio.ml.blend import weighted as blend

    def no_loading(*args, **kwargs):
        raise AssertionError("the base should not be loaded for a refused blend")

    monkeypatch.setattr(loading, "load_full_precision", no_loading)
    with pytest.raises(StudioError, match="equal rank") as err:
        blend.blend_adapters(library, ["A", "C"], [1, 1], "ties", "nope")
    assert "exact" in err.value.hint and "svd" in err.value.hint
    with pytest.raises(StudioError, match="target different modules"):
        blend.BlendSession(library, ["A", "QKVO"])
    with pytest.raises(StudioError, match="at least two"):
        blend.BlendSession(library, ["A"])
    assert len(library.list()) == 5


# ------------------------------------------------------------------ CLI


def test_cli_blend_check_remake_and_methods(library, capsys):
    from studio.cli.main import run

    assert run(["blend", "A", "B", "--weights", "1", "0.5", "--method", "cat", "--name", "NEW", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["manifest"]["source"] == "blend" and out["plan"]["result_rank"] == 8
    assert out["manifest"]["lineage"]["recipe"]["weights"] == [1.0, 0.5]
    new = library.get("NEW")
    assert new.manifest.rank == 8

    assert run(["blend", "--remake", "NEW", "--name", "NEW2", "--weights", "1", "-1"]) == 0
    assert "Saved as NEW2" in capsys.readouterr().out
    assert library.get("NEW2").manifest.lineage.recipe["weights"] == [1.0, -1.0]

    assert run(["blend", "A", "C", "--method", "linear", "--check"]) == 1
    err = capsys.readouterr().err
    assert "equal rank" in err and "exact" in err and "svd" in err
    assert run(["blend", "A", "C", "--method", "svd", "--rank", "6", "--check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["result_rank"] == 6
    assert run(["blend", "--list-methods"]) == 0
    assert "sqrt(weight)" in capsys.readouterr().out
    assert run(["blend", "A", "B"]) == 1
    assert "--name is required" in capsys.readouterr().err
