"""Blend recipes and the compatibility check that runs before anything is loaded.

A blend makes one new LoRA adapter from several adapters of the same base with peft's
`add_weighted_adapter`. This module knows the methods and what each one really computes, reads
what decides compatibility from the adapter folders alone (adapter_config.json, the safetensors
header, studio.json), and turns a request into a checked `BlendPlan` or a `StudioError` that says
why not and which methods would work. The GUI can call it on every change of the form.

Imports no torch or peft and loads no weights, so the check is cheap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError
from studio.core.library.manifest import AdapterManifest, read_manifest
from studio.core.tensorfiles import read_header

# "exact" is the studio's name for peft's "cat": it stacks the adapters' A and B matrices, so the
# blend's update is exactly sum(weight_i * scaling_i * B_i @ A_i); the price is rank = sum of ranks.
METHODS: tuple[str, ...] = (
    "exact", "cat", "svd", "linear", "ties", "ties_svd", "dare_linear", "dare_ties",
    "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd",
)
PEFT_METHOD = {m: ("cat" if m == "exact" else m) for m in METHODS}
SAME_RANK_METHODS = frozenset({"linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"})
SVD_METHODS = frozenset(m for m in METHODS if m.endswith("svd"))
DENSITY_METHODS = frozenset(m for m in METHODS if m not in ("exact", "cat", "svd", "linear"))
RANDOM_METHODS = frozenset(m for m in METHODS if m.startswith("dare"))
DEFAULT_DENSITY = 0.5

METHOD_HELP: dict[str, str] = {
    "exact": "Exact weighted sum of the updates (peft's cat): stacks A and B, rank = sum of ranks.",
    "cat": "Stacks the adapters' A and B matrices: exactly the weighted sum of the updates, "
           "rank = sum of ranks.",
    "svd": "Forms the exact weighted sum of the updates, then keeps its top singular directions at "
           "the chosen rank (an approximation; exact if rank >= sum of ranks).",
    "linear": "Adds the A matrices and the B matrices separately, each scaled by sqrt(weight): cheap and "
              "same rank, but NOT the weighted sum of the updates (cross terms appear). Equal ranks only.",
    "ties": "TIES on A and B separately (keep the top `density` values, elect signs, average the "
            "agreeing ones), each scaled by sqrt(weight); not the sum of updates. Equal ranks only.",
    "ties_svd": "TIES on the full updates (trim to `density`, elect signs), then SVD to the chosen rank.",
    "dare_linear": "DARE on A and B separately (drop values at random, keep `density`, rescale), "
                   "then linear; random (seeded) and not the sum of updates. Equal ranks only.",
    "dare_ties": "DARE random dropping, then TIES sign election, on A and B separately; random "
                 "(seeded) and not the sum of updates. Equal ranks only.",
    "dare_linear_svd": "DARE random dropping on the full updates, weighted sum, then SVD to the "
                       "chosen rank; random (seeded).",
    "dare_ties_svd": "DARE random dropping and TIES sign election on the full updates, then SVD to "
                     "the chosen rank; random (seeded).",
    "magnitude_prune": "Keeps the largest `density` fraction of A and B values separately, then "
                       "linear; not the sum of updates. Equal ranks only.",
    "magnitude_prune_svd": "Keeps the largest `density` fraction of each full update, weighted "
                           "sum, then SVD to the chosen rank.",
}


@dataclass(frozen=True)
class AdapterFacts:
    """What decides whether an adapter can be blended, read from its folder without torch."""

    ref: str  # library id (or the folder path when outside the library)
    name: str
    folder: Path
    base_model: str
    base_fingerprint: str
    rank: int  # peft's `r`, or the largest rank in rank_pattern
    alpha: float
    use_rslora: bool
    use_dora: bool
    peft_type: str
    modules: dict[str, tuple[int, int, int]]  # module path -> (rank, in_features, out_features)
    problems: tuple[str, ...] = ()  # features that add_weighted_adapter cannot blend

    @property
    def targets(self) -> list[str]:
        """Short names of the targeted module kinds (q_proj, v_proj, ...)."""
        return sorted({path.rsplit(".", 1)[-1] for path in self.modules})


def _module_key(tensor_name: str) -> tuple[str, str] | None:
    for marker, kind in ((".lora_A", "A"), (".lora_B", "B"), (".lora_embedding_A", "A"),
                         (".lora_embedding_B", "B")):
        if marker + "." in tensor_name or tensor_name.endswith(marker):
            return tensor_name.split(marker)[0], kind
    return None


def read_adapter_facts(folder: Path | str, manifest: AdapterManifest | None = None,
                       ref: str | None = None) -> AdapterFacts:
    """Read adapter_config.json, the weights' header and studio.json of one adapter folder."""
    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise StudioError(f"{folder} has no adapter_config.json, so it is not a peft adapter.") from err
    except (OSError, ValueError) as err:
        raise StudioError(f"{config_path} is not valid JSON: {err}.") from err
    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        raise StudioError(f"{folder} has no adapter_model.safetensors.",
                          hint="Only safetensors adapters can be blended; convert .bin adapters first.")
    header = read_header(weights)
    manifest = manifest if manifest is not None else read_manifest(folder)
    a_shapes: dict[str, tuple[int, ...]] = {}
    b_shapes: dict[str, tuple[int, ...]] = {}
    problems: list[str] = []
    for name, info in header.items():
        if "lora_magnitude_vector" in name:
            continue
        key = _module_key(name)
        if key is None:
            if "modules_to_save" in name or "trainable_tokens" in name:
                problems.append("it trains whole modules (modules_to_save / trainable tokens)")
            continue
        module, kind = key
        if name.endswith(".bias"):
            problems.append("it trains LoRA biases (lora_bias)")
            continue
        (a_shapes if kind == "A" else b_shapes)[module] = info.shape
    modules = {}
    for module, a_shape in a_shapes.items():
        b_shape = b_shapes.get(module)
        if b_shape is None or len(a_shape) != 2 or len(b_shape) != 2:
            raise StudioError(f"{weights} is missing lora_B for {module} or has odd shapes.")
        modules[module] = (int(a_shape[0]), int(a_shape[1]), int(b_shape[0]))
    if not modules:
        raise StudioError(f"{weights} holds no LoRA A/B matrices.")
    rank_pattern = config.get("rank_pattern") or {}
    rank = max([int(config.get("r", 0) or 0), *[int(v) for v in rank_pattern.values()]])
    if config.get("use_dora"):
        problems.append("it is a DoRA adapter (peft does not blend DoRA magnitude vectors)")
    if config.get("lora_bias"):
        problems.append("it trains LoRA biases (lora_bias)")
    if config.get("modules_to_save"):
        problems.append("it trains whole modules (modules_to_save)")
    if config.get("target_parameters"):
        problems.append("it targets raw parameters (target_parameters)")
    if config.get("trainable_token_indices"):
        problems.append("it trains token embeddings (trainable_token_indices)")
    return AdapterFacts(
        ref=ref or (manifest.id if manifest else str(folder)),
        name=manifest.name if manifest else folder.name,
        folder=folder,
        base_model=(manifest.base_model if manifest and manifest.base_model
                    else str(config.get("base_model_name_or_path") or "")),
        base_fingerprint=manifest.base_fingerprint if manifest else "",
        rank=rank,
        alpha=float(config.get("lora_alpha", rank) or rank),
        use_rslora=bool(config.get("use_rslora")),
        use_dora=bool(config.get("use_dora")),
        peft_type=str(config.get("peft_type", "LORA")),
        modules=modules,
        problems=tuple(dict.fromkeys(problems)),
    )


@dataclass
class BlendRecipe:
    """How a blend was made: enough to make it again (stored in the manifest's lineage)."""

    parents: list[str]  # library ids
    weights: list[float]
    method: str
    density: float | None = None
    rank: int | None = None  # the SVD target rank (None for other methods)
    seed: int = 0  # DARE's random drop mask
    parent_names: list[str] = field(default_factory=list)
    majority_sign_method: str = "total"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlendRecipe:
        try:
            return cls(parents=[str(p) for p in data["parents"]],
                       weights=[float(w) for w in data["weights"]],
                       method=str(data["method"]),
                       density=None if data.get("density") is None else float(data["density"]),
                       rank=None if data.get("rank") is None else int(data["rank"]),
                       seed=int(data.get("seed", 0)),
                       parent_names=[str(n) for n in data.get("parent_names", [])],
                       majority_sign_method=str(data.get("majority_sign_method", "total")))
        except (KeyError, TypeError, ValueError) as err:
            raise StudioError(f"This blend recipe is incomplete or malformed ({err}).",
                              hint="A recipe needs parents, weights and method.") from err


@dataclass
class BlendPlan:
    """A checked blend: the normalised recipe and what the result will be."""

    recipe: BlendRecipe
    peft_method: str
    result_rank: int
    exact: bool  # the result's update equals the weighted sum of the parents' updates
    base_model: str
    base_fingerprint: str
    targets: list[str]
    modules: list[str]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "recipe": self.recipe.to_dict()}


def suitable_methods(facts: Sequence[AdapterFacts]) -> list[str]:
    """The methods that can combine these adapters (rank-wise); empty if they cannot be blended."""
    same_ranks = len({tuple(sorted((m, r[0]) for m, r in f.modules.items())) for f in facts}) == 1 \
        and len({f.rank for f in facts}) == 1
    return [m for m in METHODS if same_ranks or m not in SAME_RANK_METHODS]


def facts_of_entries(entries: Sequence[Any]) -> list[AdapterFacts]:
    """Facts for library entries (anything with .id, .path and .manifest), in order."""
    return [read_adapter_facts(e.path, e.manifest, ref=e.id) for e in entries]


def _check_same_base(facts: Sequence[AdapterFacts]) -> None:
    prints = {f.base_fingerprint for f in facts if f.base_fingerprint}
    if len(prints) > 1:
        described = "; ".join(f"{f.name!r} on {f.base_model or '?'} ({f.base_fingerprint or 'no fingerprint'})"
                              for f in facts)
        raise StudioError(f"These adapters were trained on different base models: {described}.",
                          hint="Only adapters of the same base can be blended.")
    if len(prints) <= 1 and not all(f.base_fingerprint for f in facts):
        bases = {f.base_model for f in facts if f.base_model}
        if len(bases) > 1:
            described = "; ".join(f"{f.name!r} on {f.base_model or '?'}" for f in facts)
            raise StudioError(f"These adapters name different base models: {described}.",
                              hint="Only adapters of the same base can be blended.")
    first = facts[0]
    for other in facts[1:]:
        for module, (_, n_in, n_out) in other.modules.items():
            mine = first.modules.get(module)
            if mine and (mine[1], mine[2]) != (n_in, n_out):
                raise StudioError(f"{first.name!r} and {other.name!r} have different layer shapes at "
                                  f"{module}, so they belong to different base models.",
                                  hint="Only adapters of the same base can be blended.")


def _check_same_targets(facts: Sequence[AdapterFacts]) -> None:
    first = facts[0]
    for other in facts[1:]:
        if set(other.modules) == set(first.modules):
            continue
        if other.targets != first.targets:
            detail = (f"{first.name!r} adapts {', '.join(first.targets)}; "
                      f"{other.name!r} adapts {', '.join(other.targets)}")
        else:
            only_first = len(set(first.modules) - set(other.modules))
            only_other = len(set(other.modules) - set(first.modules))
            detail = (f"both adapt {', '.join(first.targets)} but in different layers "
                      f"({only_first} modules only in {first.name!r}, {only_other} only in {other.name!r})")
        raise StudioError(f"These adapters target different modules: {detail}.",
                          hint="Blend adapters trained on the same target modules and layers.")


def check_blend(facts: Sequence[AdapterFacts], weights: Sequence[float], method: str, *,
                density: float | None = None, rank: int | None = None, seed: int = 0,
                majority_sign_method: str = "total") -> BlendPlan:
    """Check a blend request; return the plan or raise StudioError saying why and what would work."""
    facts = list(facts)
    weights = [float(w) for w in weights]
    if method not in METHODS:
        raise StudioError(f"Unknown blend method {method!r}.", hint=f"Pick one of: {', '.join(METHODS)}.")
    if len(facts) < 2:
        raise StudioError("A blend needs at least two adapters.",
                          hint="To scale one adapter, blend it with another at weight 0, or retrain it.")
    if len(weights) != len(facts):
        raise StudioError(f"{len(facts)} adapters but {len(weights)} weights were given.",
                          hint="Give one weight per adapter, in the same order.")
    if any(not math.isfinite(w) for w in weights) or not any(weights):
        raise StudioError("The weights must be finite numbers and not all zero.",
                          hint="Use e.g. 1 and 0.5; a negative weight subtracts an adapter.")
    refs = [f.ref for f in facts]
    if len(set(refs)) != len(refs):
        raise StudioError("The same adapter appears twice in this blend.",
                          hint="Give it once, with the sum of its weights.")
    for f in facts:
        if f.peft_type.upper() != "LORA":
            raise StudioError(f"{f.name!r} is a {f.peft_type} adapter; only LoRA adapters can be blended.")
        if f.problems:
            raise StudioError(f"{f.name!r} cannot be blended: {'; '.join(f.problems)}.",
                              hint="peft's add_weighted_adapter only combines plain LoRA matrices.")
    _check_same_base(facts)
    _check_same_targets(facts)
    warnings: list[str] = []
    ranks = [f.rank for f in facts]
    if method in SAME_RANK_METHODS and method not in suitable_methods(facts):
        can = ", ".join(m for m in suitable_methods(facts))
        raise StudioError(f"{method} needs adapters of equal rank, but the ranks are "
                          f"{', '.join(f'{f.name!r}: {f.rank}' for f in facts)}.",
                          hint=f"Use one of: {can} (exact/cat keeps everything; svd compresses to a rank).")
    if method in DENSITY_METHODS:
        density = DEFAULT_DENSITY if density is None else float(density)
        if not 0.0 < density <= 1.0:
            raise StudioError(f"Density {density} is out of range.",
                              hint="Density is the fraction of values kept: above 0 and at most 1.")
    elif density is not None:
        warnings.append(f"{method} does not prune, so the density {density} is ignored.")
        density = None
    max_rank = min(min(n_in, n_out) for f in facts for (_, n_in, n_out) in f.modules.values())
    if method in SVD_METHODS:
        rank = max(ranks) if rank is None else int(rank)
        if not 1 <= rank <= max_rank:
            raise StudioError(f"Rank {rank} is out of range for an SVD blend.",
                              hint=f"Pick a rank from 1 to {max_rank} (the smallest layer dimension).")
        if rank > sum(ranks):
            warnings.append(f"Rank {rank} is above the sum of ranks ({sum(ranks)}); the extra "
                            "directions are zero. Use 'exact' for a lossless blend.")
        result_rank = rank
    else:
        if rank is not None and not (method in ("exact", "cat") and rank == sum(ranks)):
            warnings.append(f"{method} does not take a target rank; {rank} is ignored.")
        rank = None
        result_rank = sum(ranks) if method in ("exact", "cat") else ranks[0]
    if majority_sign_method not in ("total", "frequency"):
        raise StudioError(f"Unknown majority sign method {majority_sign_method!r}.",
                          hint="Use 'total' or 'frequency'.")
    exact = method in ("exact", "cat") or (method == "svd" and rank is not None and rank >= sum(ranks))
    if any(w < 0 for w in weights) and method in SAME_RANK_METHODS:
        warnings.append(f"{method} puts a negative weight's sign on A only (both sides scaled by "
                        "sqrt(|weight|)); with the cross terms between adapters this is not an exact "
                        "subtraction of updates. 'exact' subtracts exactly.")
    if any(f.use_rslora for f in facts):
        warnings.append("rsLoRA adapters: each parent's own scaling is applied, and the blend is saved "
                        "as a plain LoRA with scaling 1.")
    recipe = BlendRecipe(parents=refs, weights=weights, method=method, density=density, rank=rank,
                         seed=int(seed), parent_names=[f.name for f in facts],
                         majority_sign_method=majority_sign_method)
    first = facts[0]
    return BlendPlan(recipe=recipe, peft_method=PEFT_METHOD[method], result_rank=result_rank, exact=exact,
                     base_model=next((f.base_model for f in facts if f.base_model), ""),
                     base_fingerprint=next((f.base_fingerprint for f in facts if f.base_fingerprint), ""),
                     targets=first.targets, modules=sorted(first.modules), warnings=warnings)
