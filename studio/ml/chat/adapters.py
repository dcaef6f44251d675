"""The adapters attached to the chat engine's one base model: LRU, base check, templates, live blends.

`AdapterSet` wraps the base model in a peft `PeftModel` when the first adapter arrives, attaches
more with `load_adapter` under their library id, keeps at most `max_loaded` of them (the least
recently used is deleted with `delete_adapter`), refuses an adapter whose manifest names another
base fingerprint or whose initialisation would rewrite the shared base (see
studio.ml.base.loading.attach_adapter), and picks the chat template each adapter is rendered with (its folder's own, else
the base's), warning when that is not the template it was trained with. `blend` makes a live,
weighted "cat" combination (exact, scaling 1) under a temporary name, without writing anything.

Not thread-safe on its own: the chat engine calls it under its lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError
from studio.core.library.manifest import AdapterManifest, read_manifest
from studio.ml.base.loading import attach_adapter, chat_template_sha256

log = logging.getLogger(__name__)

BASE = "base"  # the base model alone, always available
LIVE = "__live__"  # the default name of a live blend
PEFT_BASE = "__base__"  # peft's name for "no adapter" in mixed batches


@dataclass
class LoadedAdapter:
    """An adapter attached to the model: its id, peft name, folder, manifest and chat template."""

    id: str
    peft_name: str
    path: Path | None
    manifest: AdapterManifest | None
    template: str  # the chat template its prompts are rendered with
    template_warning: str  # "" unless it was trained with another template
    dora: bool


def folder_template(folder: Path) -> str:
    """The chat template an adapter folder carries (chat_template.jinja or tokenizer_config.json)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tok_config = folder / "tokenizer_config.json"
    if tok_config.is_file():
        with contextlib.suppress(OSError, ValueError):
            template = json.loads(tok_config.read_text(encoding="utf-8")).get("chat_template") or ""
            return template if isinstance(template, str) else ""
    return ""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:40]


class AdapterSet:
    """Adapters on one base model. `model` is the base until the first adapter, then a PeftModel."""

    def __init__(self, base_model: Any, *, base_id: str, fingerprint: str, base_template: str,
                 max_loaded: int = 4, library: Any = None) -> None:
        if max_loaded < 1:
            raise StudioError("At least one adapter must be allowed to stay loaded.")
        self.base_model = base_model
        self.model = base_model
        self.base_id, self.fingerprint, self.base_template = base_id, fingerprint, base_template
        self.max_loaded = max_loaded
        self.library = library
        self.loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()  # least recently used first
        self.live: dict[str, LoadedAdapter] = {}
        self._count = 0

    @property
    def is_peft(self) -> bool:
        return self.model is not self.base_model

    def resolve(self, ref: Any) -> tuple[str, Path, AdapterManifest | None]:
        """(id, folder, manifest) of a library entry, an adapter folder, or a library id / name."""
        if hasattr(ref, "path") and hasattr(ref, "manifest"):
            return str(ref.id), Path(ref.path), ref.manifest
        text = str(ref)
        candidate = Path(text).expanduser()
        if candidate.is_dir() and (candidate / "adapter_config.json").exists():
            return candidate.name, candidate, read_manifest(candidate)
        if self.library is None:
            raise StudioError(f"{text!r} is neither a loaded adapter nor an adapter folder.",
                              hint="Give an adapter folder, or open the chat engine with the library.")
        entry = self.library.get(text)
        return str(entry.id), Path(entry.path), entry.manifest

    def load(self, ref: Any, *, pinned: Sequence[str] = ()) -> str:
        """Attach an adapter and return its id; past the limit, the least recently used adapter
        not in `pinned` is deleted. Already attached: it only becomes the most recently used."""
        if isinstance(ref, str) and ref in self.loaded:
            self.loaded.move_to_end(ref)
            return ref
        adapter_id, path, manifest = self.resolve(ref)
        if adapter_id in self.loaded:
            self.loaded.move_to_end(adapter_id)
            return adapter_id
        if adapter_id in (BASE, PEFT_BASE) or adapter_id in self.live:
            raise StudioError(f"{adapter_id!r} is a reserved name and cannot be an adapter id.")
        self.check_fits(adapter_id, manifest)
        self._count += 1
        peft_name = f"a{self._count}_{_safe(adapter_id)}"
        self._attach(path, peft_name, adapter_id)
        template, warning = self.template_for(adapter_id, path, manifest)
        dora = bool(getattr(self.model.peft_config[peft_name], "use_dora", False))
        self.loaded[adapter_id] = LoadedAdapter(adapter_id, peft_name, path, manifest, template, warning, dora)
        self._evict(keep={adapter_id, *pinned})
        return adapter_id

    def check_fits(self, adapter_id: str, manifest: AdapterManifest | None) -> None:
        wanted = manifest.base_fingerprint if manifest else ""
        if manifest and wanted and wanted != self.fingerprint:
            raise StudioError(
                f"Adapter {manifest.name or adapter_id!r} was trained on {manifest.base_model or 'another base'} "
                f"(fingerprint {wanted}), but the loaded base is {self.base_id} (fingerprint {self.fingerprint}).",
                hint=f"Chat with it on {manifest.base_model or 'the base it was trained on'} instead.")

    def _attach(self, path: Path, peft_name: str, adapter_id: str) -> None:
        try:
            self.model = attach_adapter(self.model, path, adapter_name=peft_name, label=repr(adapter_id))
        except StudioError:
            raise
        except Exception as err:
            raise StudioError(f"Adapter {adapter_id!r} could not be attached to {self.base_id}: {err}.",
                              hint="Check that it was trained on this base model.") from err
        self.model.eval()

    def template_for(self, adapter_id: str, path: Path | None, manifest: AdapterManifest | None) -> tuple[str, str]:
        """The template this adapter is rendered with, and a warning when it was trained with another."""
        template = (folder_template(path) if path else "") or self.base_template
        trained = manifest.chat_template_sha256 if manifest else ""
        used = chat_template_sha256(template)
        if trained and trained != used:
            return template, (f"{adapter_id!r} was trained with another chat template (sha256 {trained[:12]}…) "
                              f"than the one used now ({used[:12]}…); its answers may be off.")
        return template, ""

    def _evict(self, keep: set[str]) -> None:
        while len(self.loaded) > self.max_loaded:
            victim = next((a for a in self.loaded if a not in keep), None)
            if victim is None:
                log.info("Keeping %d adapters attached (over the limit of %d) for this request.",
                         len(self.loaded), self.max_loaded)
                return
            self.unload(victim)

    def _delete(self, peft_name: str) -> None:
        with warnings.catch_warnings():  # peft warns when the active adapter goes; each call sets its own
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            self.model.delete_adapter(peft_name)

    def unload(self, adapter_id: str) -> None:
        if adapter_id in self.live:
            self._delete(self.live.pop(adapter_id).peft_name)
            return
        loaded = self.loaded.pop(adapter_id, None)
        if loaded is not None:
            log.info("Unloading adapter %s", adapter_id)
            self._delete(loaded.peft_name)

    def blend(self, weights: Mapping[str, float], name: str = LIVE) -> str:
        """A live blend of these adapters with these weights, usable as adapter `name` until replaced."""
        from studio.ml.blend.weighted import make_plain_scaling

        if not weights:
            raise StudioError("Give at least one adapter and its weight.")
        if name in self.loaded or name in (BASE, PEFT_BASE):
            raise StudioError(f"{name!r} is already an adapter's name; give the live blend another one.")
        ids: list[str] = []
        for ref in weights:
            ids.append(self.load(ref, pinned=[*ids, *(r for r in weights if r in self.loaded)]))
        parents = [self.loaded[i] for i in ids]
        if any(p.dora for p in parents):
            raise StudioError("A live blend cannot include a DoRA adapter.", hint="Blend it in the blend panel instead.")
        names, values = [p.peft_name for p in parents], [float(w) for w in weights.values()]
        if len(names) == 1:  # peft turns a one-adapter "cat" into "linear"; use two halves instead
            names, values = names * 2, [values[0] / 2] * 2
        if name in self.live:
            self.unload(name)
        self._count += 1
        peft_name = f"live{self._count}_{_safe(name)}"
        self.model.add_weighted_adapter(names, values, peft_name, combination_type="cat")
        make_plain_scaling(self.model, peft_name)  # rsLoRA parents: the cat copy must not rescale
        self.model.eval()
        self.live[name] = LoadedAdapter(name, peft_name, None, None, parents[0].template, "", False)
        return name

    def slots(self, adapters: Sequence[str]) -> list[LoadedAdapter | None]:
        """The attached adapter of each pane (None for the base), attaching what is missing. The
        adapters of one request are pinned, so none of them evicts another."""
        keep = {a for a in adapters if a in self.loaded}
        keep |= {Path(a).name for a in adapters if Path(a).name in self.loaded and Path(a).is_dir()}
        out: list[LoadedAdapter | None] = []
        for adapter in adapters:
            if adapter == BASE:
                out.append(None)
            elif adapter in self.live:
                out.append(self.live[adapter])
            else:
                adapter_id = self.load(adapter, pinned=[*keep, *(s.id for s in out if s is not None)])
                out.append(self.loaded[adapter_id])
        return out

    def batch_blocker(self, slots: Sequence[LoadedAdapter | None]) -> str:
        """Why these panes cannot share a mixed-adapter batch ("" when they can)."""
        if any(s is not None and s.dora for s in slots):
            return "DoRA adapters cannot share a mixed-adapter batch"
        if self.is_peft:
            from peft.tuners.lora import LoraLayer

            if any(isinstance(m, LoraLayer) and m.merged for m in self.model.modules()):
                return "merged adapter weights cannot share a mixed-adapter batch"
        return ""

    def touch(self, adapter_id: str) -> None:
        if adapter_id in self.loaded:
            self.loaded.move_to_end(adapter_id)
