"""Blend adapters into a new one with peft's `add_weighted_adapter`, preview it, save it with its recipe.

`BlendSession` loads the base and the parent adapters once; `blend()` can then be called as often
as the user tweaks weights or method (each call replaces the previous blend in memory),
`preview()` asks the blend a question, and `save()` writes it to the library with its recipe in
the manifest's lineage, so `blend_from_recipe` can make it again.

Two traps of peft 0.21.2's `add_weighted_adapter` are handled here, never silently:
- it returns without a word when the new adapter's name already exists: every blend gets a fresh
  unique name, and the result is verified to exist on every module with a non-zero update;
- the new adapter copies its config from the first parent and sets `lora_alpha = r`, assuming a
  scaling of alpha / r = 1; when the first parent was trained with rsLoRA the copy keeps
  `use_rslora`, so peft would scale the blend by sqrt(r) on top. Each parent's own scaling (rsLoRA
  or not) is already folded into the blended matrices, so the blend is turned into a plain LoRA
  with scaling 1 (config and layers), and the scaling is verified.

peft's call is one atomic step: `should_stop` is honoured between stages, not inside the SVDs.
The GUI runs these calls in a worker thread.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.core import scratch
from studio.core.blend.checks import (
    SVD_METHODS,
    AdapterFacts,
    BlendPlan,
    BlendRecipe,
    check_blend,
    facts_of_entries,
    read_adapter_facts,
)
from studio.core.errors import StudioError
from studio.core.library.adapter_folder import adapter_base
from studio.core.library.manifest import AdapterManifest, Lineage
from studio.core.progress import Cancelled, OnProgress, ShouldStop, Steps

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class BlendResult:
    """A blend held in memory (not saved yet)."""

    adapter_name: str  # its name inside the session's PeftModel
    plan: BlendPlan
    layers: int
    update_norm: float  # Frobenius norm of all its updates together
    seconds: float

    @property
    def recipe(self) -> BlendRecipe:
        return self.plan.recipe

    def to_dict(self) -> dict[str, Any]:
        return {"adapter_name": self.adapter_name, "plan": self.plan.to_dict(), "layers": self.layers,
                "update_norm": self.update_norm, "seconds": round(self.seconds, 3)}


def _lora_layers(peft_model, name: str) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in peft_model.modules()
            if isinstance(m, LoraLayer) and (name in m.lora_A or name in m.lora_embedding_A)]


def _ab(layer, name: str):
    if name in layer.lora_A:
        return layer.lora_A[name].weight, layer.lora_B[name].weight
    return layer.lora_embedding_A[name], layer.lora_embedding_B[name]


def make_plain_scaling(peft_model, name: str) -> bool:
    """Make adapter `name` a plain LoRA with scaling alpha / r; True when rsLoRA had to be undone."""
    config = peft_model.peft_config[name]
    changed = bool(getattr(config, "use_rslora", False))
    config.use_rslora = False
    for layer in _lora_layers(peft_model, name):
        changed |= bool(layer.use_rslora.get(name, False))
        layer.use_rslora[name] = False
        layer.scaling[name] = layer.lora_alpha[name] / layer.r[name]
    return changed


def verify_blend(peft_model, name: str, expected_layers: int) -> tuple[int, float]:
    """Check the blend exists on every module, with scaling 1 and a non-zero, finite update."""
    import torch

    if name not in peft_model.peft_config:
        raise StudioError("peft did not create the blended adapter (add_weighted_adapter returned "
                          "without making it).", hint="This is a bug; please report it with the recipe.")
    layers = _lora_layers(peft_model, name)
    if len(layers) != expected_layers:
        raise StudioError(f"The blend covers {len(layers)} modules instead of {expected_layers}.",
                          hint="The parents' target modules differ; blend adapters with the same targets.")
    total = 0.0
    for layer in layers:
        if abs(layer.scaling[name] - 1.0) > 1e-6:
            raise StudioError(f"The blend's scaling is {layer.scaling[name]:.4g} instead of 1; its "
                              "weights would be applied at the wrong strength.",
                              hint="This peft version changed add_weighted_adapter; please report it.")
        a, b = (t.detach().float().flatten(1) for t in _ab(layer, name))  # A: (r, in), B: (out, r)
        # ||B A||_F^2 = trace((B^T B)(A A^T)): cheap, r x r.
        total += float(torch.trace((b.T @ b) @ (a @ a.T)))
    if not total > 0.0 or total != total or total == float("inf"):
        raise StudioError("The blend came out empty or invalid (its update is zero or not finite).",
                          hint="Check the weights (not all zero, not cancelling out) and the density.")
    return len(layers), total ** 0.5


def unique_adapter_name(peft_model, prefix: str = "blend") -> str:
    while True:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        if name not in peft_model.peft_config:
            return name


def apply_blend(peft_model, parent_names: Sequence[str], plan: BlendPlan,
                name: str | None = None) -> tuple[str, int, float]:
    """Run add_weighted_adapter for a checked plan on loaded parents; returns (name, layers, norm)."""
    import torch

    name = name or unique_adapter_name(peft_model)
    if name in peft_model.peft_config:  # peft would silently keep the old adapter
        raise StudioError(f"An adapter called {name!r} is already loaded; a blend needs a new name.")
    recipe = plan.recipe
    kwargs: dict[str, Any] = {"combination_type": plan.peft_method,
                              "majority_sign_method": recipe.majority_sign_method}
    if recipe.method in SVD_METHODS:
        kwargs["svd_rank"] = recipe.rank
    if recipe.density is not None:
        kwargs["density"] = recipe.density
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(recipe.seed)  # DARE's random masks come from the global generator
        try:
            peft_model.add_weighted_adapter(list(parent_names), list(recipe.weights), name, **kwargs)
        except (ValueError, TypeError, RuntimeError) as err:
            if name in peft_model.peft_config:
                peft_model.delete_adapter(name)
            raise StudioError(f"peft could not blend these adapters: {err}",
                              hint="Try the 'exact' or 'svd' method.") from err
    try:
        make_plain_scaling(peft_model, name)
        layers, norm = verify_blend(peft_model, name, expected_layers=len(plan.modules))
    except BaseException:
        if name in peft_model.peft_config:
            peft_model.delete_adapter(name)
        raise
    return name, layers, norm


@dataclass
class _Parent:
    ref: str
    entry: Any
    facts: AdapterFacts
    peft_name: str = ""


@dataclass
class BlendSession:
    """A base, its parent adapters and the current blend, in memory. Not thread-safe: one worker."""

    library: Any
    adapters: Sequence[str]
    data: Any = None  # DataDir; defaults to the library's
    device: str | None = None
    progress: OnProgress | None = None
    should_stop: ShouldStop | None = None
    parents: list[_Parent] = field(default_factory=list, init=False)
    result: BlendResult | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        from studio.ml.base.hardware import choose_device
        from studio.ml.base.loading import attach_adapter, load_full_precision, load_tokenizer
        from studio.ml.export.merge import estimate_export_bytes

        self.data = self.data if self.data is not None else getattr(self.library, "data", None)
        self._step("check", 0.0, "Reading the adapters…")
        for ref in self.adapters:
            entry = self.library.get(ref)
            facts = read_adapter_facts(entry.path, entry.manifest, ref=entry.id)
            self.parents.append(_Parent(ref=entry.id, entry=entry, facts=facts))
        # Refuse what no method can blend (bases, targets, DoRA...) before loading anything.
        check_blend(self.facts, [1.0] * len(self.parents), "exact")
        first = self.parents[0].entry
        base = adapter_base(self.data, first.path, first.manifest).inspect()
        for parent in self.parents:
            fp = parent.facts.base_fingerprint
            if fp and fp != base.fingerprint:
                raise StudioError(f"{parent.facts.name!r} was trained on a base with fingerprint {fp}, "
                                  f"but {base.id} has {base.fingerprint}.",
                                  hint="Only adapters of this base can be blended on it.")
        self.base = base
        choice = choose_device(self.device, needed_bytes=estimate_export_bytes(base.path, "bf16"))
        self.device = choice.kind
        dtype = "fp32" if self.device == "cpu" else "bf16"
        self._step("load", 0.05, f"Loading the base model {base.id}…")
        self.model = load_full_precision(base.path, dtype, choice)
        self.tokenizer = load_tokenizer(base.path, distinct_pad=False)
        n = len(self.parents)
        for i, parent in enumerate(self.parents):
            self._step("load", 0.4 + 0.55 * i / n, f"Loading adapter {parent.facts.name} ({i + 1}/{n})…")
            parent.peft_name = f"parent_{i}"
            self.model = attach_adapter(self.model, parent.entry.path, adapter_name=parent.peft_name,
                                        label=repr(parent.facts.name))
        self.model.eval()
        self._step("load", 1.0, "Adapters loaded.")

    # -------------------------------------------------------------- internals

    def _step(self, stage: str, fraction: float, message: str) -> None:
        # progress and should_stop are read each time: the GUI points them at each job in turn
        Steps(self.progress, self.should_stop, cancelled_hint="Nothing was saved.")(stage, fraction, message)

    @property
    def facts(self) -> list[AdapterFacts]:
        return [p.facts for p in self.parents]

    def _peft_name(self, ref: str) -> str:
        for parent in self.parents:
            if ref in (parent.ref, parent.facts.name, parent.peft_name):
                return parent.peft_name
        raise StudioError(f"{ref!r} is not one of this blend's adapters.")

    # -------------------------------------------------------------- the user's actions

    def check(self, weights: Sequence[float], method: str, *, density: float | None = None,
              rank: int | None = None, seed: int = 0, majority_sign_method: str = "total") -> BlendPlan:
        """The compatibility check alone (no tensors touched)."""
        return check_blend(self.facts, weights, method, density=density, rank=rank, seed=seed,
                           majority_sign_method=majority_sign_method)

    def blend(self, weights: Sequence[float], method: str, *, density: float | None = None,
              rank: int | None = None, seed: int = 0, majority_sign_method: str = "total") -> BlendResult:
        """Make the blend in memory, replacing the previous one. Raises StudioError or Cancelled."""
        started = time.monotonic()
        self._step("check", 0.0, "Checking that the adapters can be blended this way…")
        plan = self.check(weights, method, density=density, rank=rank, seed=seed,
                          majority_sign_method=majority_sign_method)
        self._drop_result()
        svd = " (one SVD per module, the slow part)" if plan.recipe.method in SVD_METHODS else ""
        self._step("blend", 0.1, f"Blending with {plan.recipe.method}{svd}…")
        name, layers, norm = apply_blend(self.model, [p.peft_name for p in self.parents], plan)
        try:
            self._step("verify", 0.9, "Checked: the blend exists on every module and is not empty.")
        except Cancelled:
            self.model.delete_adapter(name)
            raise
        self.model.set_adapter(name)
        self.result = BlendResult(adapter_name=name, plan=plan, layers=layers, update_norm=norm,
                                  seconds=time.monotonic() - started)
        self._step("done", 1.0, f"Blend ready: rank {plan.result_rank}, {layers} modules.")
        return self.result

    def preview(self, prompt: str, max_new_tokens: int = 64, *, adapter: str | None = None) -> str:
        """Greedy answer through the chat template: of the blend, a parent (id/name) or "base"."""
        from studio.ml.chat.generation import stop_ids
        from studio.ml.chat.smoke import greedy_chat

        stop = stop_ids(self.tokenizer, generation_config=self.model.generation_config)
        if adapter == "base":
            with self.model.disable_adapter():
                answer = greedy_chat(self.model, self.tokenizer, prompt, max_new_tokens=max_new_tokens,
                                     stop_ids=stop, require_template=False)
            return answer.text
        if adapter is None:
            if self.result is None:
                raise StudioError("There is no blend to preview yet.", hint="Blend first, then preview.")
            name = self.result.adapter_name
        else:
            name = self._peft_name(adapter)
        self.model.set_adapter(name)
        try:
            return greedy_chat(self.model, self.tokenizer, prompt, max_new_tokens=max_new_tokens,
                               stop_ids=stop, require_template=False).text
        finally:
            if self.result is not None:
                self.model.set_adapter(self.result.adapter_name)

    def save(self, name: str, *, tags: Sequence[str] = (), notes: str = ""):
        """Write the current blend to the library (source "blend", recipe in lineage); its entry."""
        if self.result is None:
            raise StudioError("There is no blend to save yet.", hint="Blend first, then save.")
        if not name.strip():
            raise StudioError("A blend needs a name.")
        result, plan = self.result, self.result.plan
        self._step("save", 0.0, f"Saving {name}…")
        root = self._scratch_root()
        with scratch.work_dir(root or tempfile.gettempdir(), "blend") as work:
            self.model.save_pretrained(work, selected_adapters=[result.adapter_name],
                                       save_embedding_layers=False)
            folder = work / result.adapter_name
            config_path = folder / "adapter_config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = self.base.id
            config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
            entry = self.library.add_new(folder, self._manifest(name, plan, config, tags, notes),
                                         move=root is not None)
        self._step("done", 1.0, f"Saved {name} to the library.")
        return entry

    def close(self) -> None:
        """Let go of the model (the session cannot be used afterwards)."""
        for attr in ("model", "tokenizer"):
            if hasattr(self, attr):
                delattr(self, attr)
        self.result = None
        import gc

        gc.collect()

    def __enter__(self) -> BlendSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- helpers

    def _drop_result(self) -> None:
        if self.result is not None:
            self.model.set_adapter(self.parents[0].peft_name)
            self.model.delete_adapter(self.result.adapter_name)
            self.result = None

    def _scratch_root(self) -> Path | None:
        root = getattr(self.data, "root", None)
        return Path(root) if root is not None and Path(root).is_dir() else None

    def _manifest(self, name: str, plan: BlendPlan, config: dict, tags: Sequence[str],
                  notes: str) -> AdapterManifest:
        import peft

        recipe = {**plan.recipe.to_dict(), "peft_method": plan.peft_method, "exact": plan.exact,
                  "peft_version": peft.__version__}
        first = self.parents[0].entry.manifest
        return AdapterManifest(
            id="", name=name, base_model=self.base.id, base_fingerprint=self.base.fingerprint,
            method="lora", rank=int(config["r"]), alpha=float(config["lora_alpha"]),
            target_modules=sorted(plan.targets),
            hyperparameters={"blend_method": plan.recipe.method, "weights": plan.recipe.weights},
            lineage=Lineage(parents=list(plan.recipe.parents), recipe=recipe),
            tags=list(tags), notes=notes, source="blend",
            chat_template_sha256=getattr(first, "chat_template_sha256", "") or "",
        )


def blend_adapters(library, adapters: Sequence[str], weights: Sequence[float], method: str, name: str, *,
                   density: float | None = None, rank: int | None = None, seed: int = 0,
                   majority_sign_method: str = "total", data=None, device: str | None = None,
                   progress: OnProgress | None = None,
                   should_stop: ShouldStop | None = None, tags: Sequence[str] = (), notes: str = ""):
    """Check, load, blend and save in one call (the CLI's path); the new library entry."""
    entries = [library.get(ref) for ref in adapters]
    # The torch-free check first, so a refusal costs nothing.
    options = {"density": density, "rank": rank, "seed": seed, "majority_sign_method": majority_sign_method}
    check_blend(facts_of_entries(entries), weights, method, **options)
    session = BlendSession(library, [e.id for e in entries], data=data, device=device,
                           progress=progress, should_stop=should_stop)
    try:
        session.blend(weights, method, **options)
        return session.save(name, tags=tags, notes=notes)
    finally:
        session.close()


def blend_from_recipe(library, recipe: BlendRecipe | dict, name: str, **kwargs):
    """Make a blend again from a recipe (a manifest's lineage.recipe); the new library entry."""
    if isinstance(recipe, dict):
        recipe = BlendRecipe.from_dict(recipe)
    return blend_adapters(library, recipe.parents, recipe.weights, recipe.method, name,
                          density=recipe.density, rank=recipe.rank, seed=recipe.seed,
                          majority_sign_method=recipe.majority_sign_method, **kwargs)

