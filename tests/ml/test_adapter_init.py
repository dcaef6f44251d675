"""Adapters whose peft initialisation rewrites the base (PiSSA, OLoRA...) never change the shared base:
refused at import and by the chat engine, and every loader attaches adapters with a base-keeping init."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from studio.core.errors import StudioError
from studio.ml.chat.generation import GenerationSettings
from tests.tiny_model import make_tiny_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GREEDY = GenerationSettings(temperature=0, max_new_tokens=8)
ASK = [{"role": "user", "content": "What is the capital of France?"}]


def make_init_adapter(base_dir: Path, out: Path, init: str, *, converted_out: Path | None = None) -> Path:
    """A real peft adapter made with `init` (e.g. "pissa"), its B nudged as a step of training would.
    With `converted_out`, also save it converted to plain LoRA the way peft documents."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=init))
    if converted_out is not None:
        initial = out.parent / f"{out.name}-initial"
        peft_model.peft_config["default"].init_lora_weights = True  # peft's recipe for the initial copy
        peft_model.save_pretrained(initial)
        peft_model.peft_config["default"].init_lora_weights = init
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(0.01 * torch.randn_like(param))
    peft_model.save_pretrained(out)
    if converted_out is not None:
        peft_model.save_pretrained(converted_out, path_initial_model_for_weight_conversion=str(initial))
        return peft_model
    return out


def base_weights(model) -> dict:
    """Every base-layer weight of a (peft-wrapped) model, cloned."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" not in name}


@pytest.fixture(scope="module")
def pissa(tiny_base_dir, tmp_path_factory) -> Path:
    folder = make_init_adapter(tiny_base_dir, tmp_path_factory.mktemp("pissa") / "pissa", "pissa")
    assert json.loads((folder / "adapter_config.json").read_text())["init_lora_weights"] == "pissa"
    return folder


def test_plain_peft_loading_of_a_pissa_adapter_rewrites_the_base(tiny_base_dir, pissa):
    """The defect itself (a precondition for the tests below): peft re-runs PiSSA on the base it loads onto."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)
    before = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    PeftModel.from_pretrained(base, pissa)
    after = base.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(before, after)


def test_import_refuses_a_pissa_adapter_and_says_how_to_convert_it(pissa, tiny_base_dir, studio_home):
    from studio.core.library.store import AdapterLibrary

    library = AdapterLibrary(studio_home)
    with pytest.raises(StudioError) as err:
        library.import_path(pissa)
    assert "'pissa'" in str(err.value) and "base model's weights" in str(err.value)
    assert "path_initial_model_for_weight_conversion" in err.value.hint
    assert library.list() == [] and list(studio_home.adapters.iterdir()) == []


def test_other_base_rewriting_inits_are_refused_and_base_keeping_ones_are_not(tmp_path):
    from studio.core.library.adapter_folder import check_init_keeps_base, neutral_init

    for init in ("pissa_niter_4", "olora", "corda", "loftq", "lora_ga"):
        with pytest.raises(StudioError, match="rewrites the base"):
            check_init_keeps_base({"init_lora_weights": init}, "x")
        assert neutral_init(init) is True
    for init in (True, False, "gaussian", "eva", "orthogonal", "mica"):
        check_init_keeps_base({"init_lora_weights": init}, "x")
        assert neutral_init(init) == init
    check_init_keeps_base({}, "x")


def test_engine_refuses_a_hand_copied_pissa_folder_and_the_base_answers_stay(tiny_base_dir, pissa, studio_home,
                                                                             tmp_path):
    from studio.core.library.store import AdapterLibrary
    from studio.ml.chat.engine import ChatEngine

    library = AdapterLibrary(studio_home)
    plain = library.import_path(make_tiny_adapter(tiny_base_dir, tmp_path / "plain", seed=1, base_name=str(tiny_base_dir)))
    copied = studio_home.adapters / "copied-pissa"
    shutil.copytree(pissa, copied)  # by hand, past the import check
    (problem,) = library.problems()
    assert problem[0] == copied and "pissa" in problem[1]

    engine = ChatEngine(tiny_base_dir, library=library)
    engine.load_adapter(plain.id)
    weights = base_weights(engine.model)
    before = engine.generate_batch(ASK, ["base", plain.id], GREEDY)
    with pytest.raises(StudioError, match="rewrites the base") as err:
        engine.load_adapter(copied)
    assert "path_initial_model_for_weight_conversion" in err.value.hint
    assert engine.loaded_adapters == [plain.id]
    assert engine.generate_batch(ASK, ["base", plain.id], GREEDY) == before
    after = base_weights(engine.model)
    assert after.keys() == weights.keys()
    assert all((after[k] == weights[k]).all() for k in weights)


def test_loaders_attach_with_a_base_keeping_init(tiny_base_dir, pissa):
    """Below the refusal: the config every loader hands to peft never runs a base-rewriting init."""
    import torch
    from transformers import AutoModelForCausalLM

    from studio.ml.base.loading import adapter_load_config

    config = adapter_load_config(pissa)
    assert config.init_lora_weights is True and config.inference_mode
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)
    weights = base_weights(base)
    model = PeftModel.from_pretrained(base, pissa, config=config)
    assert all(torch.equal(p, weights[n.removeprefix("base_model.model.").replace(".base_layer", "")])
               for n, p in model.named_parameters() if "lora_" not in n)


def test_a_converted_pissa_adapter_imports_and_answers_like_the_pissa_model(tiny_base_dir, studio_home, tmp_path):
    """The hint works: peft's conversion gives a plain LoRA that reproduces the PiSSA-trained model on the
    untouched base, in the chat engine beside the base."""
    import torch

    from studio.core.library.store import AdapterLibrary
    from studio.ml.chat.engine import ChatEngine

    converted = tmp_path / "converted"
    pissa_model = make_init_adapter(tiny_base_dir, tmp_path / "trained", "pissa", converted_out=converted)
    library = AdapterLibrary(studio_home)
    entry = library.import_path(converted)
    engine = ChatEngine(tiny_base_dir, library=library)
    engine.load_adapter(entry.id)
    ids = torch.tensor([[1, 20, 33, 47, 5, 60, 71, 2]])
    pissa_model.eval()
    with torch.inference_mode():
        want = pissa_model(input_ids=ids).logits
        engine.model.set_adapter(engine.peft_name(entry.id))
        got = engine.model(input_ids=ids).logits
        with engine.model.disable_adapter():
            base = engine.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(base, want, atol=1e-4)
