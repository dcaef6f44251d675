"""Reduce a LoRA adapter's rank by SVD, as a new adapter in the library, and report the energy kept.

Each module's update is delta = scaling * B @ A. Its exact SVD is found cheaply from QR
factorisations of B and A^T (only an r x r matrix is decomposed, never the full out x in delta),
and the best rank-R approximation (Eckart-Young) is kept: B' = U_R sqrt(S_R), A' = sqrt(S_R) V_R^T,
saved with lora_alpha = R (scaling 1, no rsLoRA), so B' @ A' is the truncated delta itself.
Retained energy = sum of kept squared singular values / sum of all, per module and overall.

The new adapter keeps its parent's base, targets and dataset summary; its lineage names the parent
and a "resize" recipe. Plain LoRA only: DoRA, trained embeddings, modules_to_save and per-module
rank/alpha patterns are refused. `should_stop` is checked between modules.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.core import scratch
from studio.core.errors import StudioError
from studio.core.library.manifest import MANIFEST_NAME, AdapterManifest, Lineage
from studio.core.progress import Cancelled, OnProgress, ShouldStop, StageProgress

log = logging.getLogger(__name__)

WEIGHTS = "adapter_model.safetensors"
_NOT_COPIED = {WEIGHTS, "adapter_config.json", MANIFEST_NAME, "README.md"}


@dataclass(frozen=True)
class LayerEnergy:
    module: str
    retained: float  # fraction of the squared singular values kept, 0..1
    singular_values: tuple[float, ...]  # all of them, largest first


@dataclass
class ResizeResult:
    entry: Any  # the new AdapterEntry
    rank: int
    previous_rank: int
    retained_energy: float  # over all modules together
    min_layer_energy: float
    min_layer: str
    layers: list[LayerEnergy] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.entry.to_dict(), "rank": self.rank, "previous_rank": self.previous_rank,
                "retained_energy": self.retained_energy, "min_layer_energy": self.min_layer_energy,
                "min_layer": self.min_layer, "seconds": round(self.seconds, 2),
                "layers": [{"module": x.module, "retained": x.retained} for x in self.layers]}


def delta_svd(a, b, scaling: float):
    """(U, S, Vh) of scaling * b @ a (b: out x r, a: r x in) without forming the product; float64."""
    import torch

    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    qb, rb = torch.linalg.qr(b)  # b = qb rb, qb: out x r
    qa, ra = torch.linalg.qr(a.T)  # a^T = qa ra, qa: in x r
    u, s, vh = torch.linalg.svd(scaling * rb @ ra.T)  # r x r
    return qb @ u, s, vh @ qa.T


def resize_delta(a, b, scaling: float, rank: int):
    """The best rank-`rank` factors of scaling * b @ a (float64), with the energy they keep.

    Returns (new_a, new_b, kept energy, total energy, all singular values largest first).
    """
    u, s, vh = delta_svd(a, b, scaling)
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    energy = s.square()
    return (root[:, None] * vh[:rank], u[:, :rank] * root, float(energy[:rank].sum()), float(energy.sum()),
            tuple(float(x) for x in s))


def _read(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("use_dora"):
        raise StudioError("DoRA adapters cannot be resized by SVD (their magnitude vectors depend on the rank).")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise StudioError("Adapters with per-module ranks or alphas (rank_pattern / alpha_pattern) cannot be "
                          "resized yet.")
    if not (folder / WEIGHTS).exists():
        raise StudioError(f"{folder.name} has no {WEIGHTS}.")
    return config, load_file(str(folder / WEIGHTS))


def _pairs(tensors: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """module prefix -> (A key, B key); refuses anything that is not a LoRA A/B matrix."""
    pairs: dict[str, dict[str, str]] = {}
    for key in tensors:
        for part, slot in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
            if key.endswith(part):
                pairs.setdefault(key[: -len(part)], {})[slot] = key
                break
        else:
            raise StudioError(f"The adapter holds {key!r}, which is not a LoRA A/B matrix (trained embeddings "
                              "or modules_to_save); it cannot be resized.")
    broken = [m for m, p in pairs.items() if set(p) != {"A", "B"}]
    if broken:
        raise StudioError(f"The adapter's {broken[0]} lacks its lora_A or lora_B matrix.")
    return {m: (p["A"], p["B"]) for m, p in pairs.items()}


def _scaling(config: dict[str, Any]) -> float:
    r, alpha = int(config["r"]), float(config.get("lora_alpha", 8))
    return alpha / (r ** 0.5 if config.get("use_rslora") else r)


def resize_folder(src: Path | str, out: Path | str, rank: int, *, progress: OnProgress | None = None,
                  should_stop: ShouldStop | None = None) -> tuple[int, list[LayerEnergy], float]:
    """Write the rank-`rank` version of the peft adapter in `src` to the (new) folder `out`.

    Returns (previous rank, per-module energies, overall retained energy). Refuses rank <= 0 or
    rank >= the current rank.
    """
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    config, tensors = _read(src)
    current = int(config["r"])
    if rank <= 0 or rank >= current:
        raise StudioError(f"The new rank must be between 1 and {current - 1} (the adapter's rank is {current}); "
                          f"got {rank}.", hint="Choose a smaller rank than the adapter has.")
    scaling = _scaling(config)
    pairs = _pairs(tensors)
    layers: list[LayerEnergy] = []
    saved: dict[str, Any] = {}
    kept_total = energy_total = 0.0
    for i, (module, (key_a, key_b)) in enumerate(sorted(pairs.items())):
        if should_stop and should_stop():
            raise Cancelled("Resizing stopped.", hint="Nothing was saved.")
        if progress and i % 8 == 0:
            progress(StageProgress("svd", 0.1 + 0.8 * i / len(pairs), f"SVD of module {i + 1}/{len(pairs)}…"))
        a, b = tensors[key_a], tensors[key_b]
        new_a, new_b, kept, total, values = resize_delta(a, b, scaling, rank)
        saved[key_a] = new_a.to(a.dtype).contiguous()
        saved[key_b] = new_b.to(b.dtype).contiguous()
        kept_total, energy_total = kept_total + kept, energy_total + total
        name = module.removeprefix("base_model.model.")
        layers.append(LayerEnergy(module=name, retained=kept / total if total > 0 else 1.0, singular_values=values))
    out.mkdir(parents=True, exist_ok=False)
    new_config = {**config, "r": rank, "lora_alpha": rank, "use_rslora": False, "rank_pattern": {},
                  "alpha_pattern": {}}
    (out / "adapter_config.json").write_text(json.dumps(new_config, indent=2), encoding="utf-8")
    save_file(saved, str(out / WEIGHTS), metadata={"format": "pt"})
    for item in src.iterdir():  # tokenizer / chat template files travel with the adapter
        if item.is_file() and item.name not in _NOT_COPIED and not item.name.startswith("."):
            shutil.copy2(item, out / item.name)
    overall = kept_total / energy_total if energy_total > 0 else 1.0
    return current, layers, overall


def resize_adapter(library, adapter: str, rank: int, name: str, *, progress: OnProgress | None = None,
                   should_stop: ShouldStop | None = None, tags: tuple[str, ...] = (),
                   notes: str = "") -> ResizeResult:
    """Resize a library adapter to `rank` and save the result as a new adapter called `name`."""
    started = time.monotonic()
    if not name.strip():
        raise StudioError("The resized adapter needs a name.", hint="e.g. --name 'persona r8'")
    parent = library.get(adapter)
    if progress:
        progress(StageProgress("check", 0.0, f"Reading {parent.manifest.name}…"))
    root = Path(library.data.root)
    with scratch.work_dir(root if root.is_dir() else tempfile.gettempdir(), "resize") as work:
        folder = work / "adapter"
        previous, layers, overall = resize_folder(parent.path, folder, rank, progress=progress,
                                                  should_stop=should_stop)
        weakest = min(layers, key=lambda x: x.retained)
        if progress:
            progress(StageProgress("save", 0.95, f"Saving {name}…"))
        entry = library.add_new(folder, _manifest(parent, name, rank, previous, overall, weakest, tags, notes),
                                move=True)
    if progress:
        progress(StageProgress("done", 1.0, f"Saved {name}: rank {previous} -> {rank}, "
                                            f"{overall:.1%} of the energy kept."))
    return ResizeResult(entry=entry, rank=rank, previous_rank=previous, retained_energy=overall,
                        min_layer_energy=weakest.retained, min_layer=weakest.module, layers=layers,
                        seconds=time.monotonic() - started)


def _manifest(parent, name: str, rank: int, previous: int, overall: float, weakest: LayerEnergy,
              tags: tuple[str, ...], notes: str) -> AdapterManifest:
    m = parent.manifest
    recipe = {"method": "resize", "rank": rank, "from_rank": previous, "algorithm": "svd",
              "retained_energy": overall, "min_layer_energy": weakest.retained, "min_layer": weakest.module}
    return AdapterManifest(
        id="", name=name, base_model=m.base_model, base_fingerprint=m.base_fingerprint, method="lora",
        rank=rank, alpha=float(rank), target_modules=list(m.target_modules),
        hyperparameters={"resized_from_rank": previous}, dataset=dict(m.dataset),
        metrics={"retained_energy": overall, "min_layer_energy": weakest.retained},
        lineage=Lineage(parents=[parent.id], recipe=recipe), tags=list(tags), notes=notes, source="resize",
        chat_template_sha256=m.chat_template_sha256,
    )
