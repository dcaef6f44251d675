"""The Blend panel's work without widgets: the form as a BlendSpec, the live check in words, the jobs.

`Catalog.load` (the adapter list with each one's blend facts, headers only) and `BlendWork.run`
(load the parents, blend, preview, save through studio.ml.blend.weighted.BlendSession) run in workers;
studio.ml is imported inside `BlendWork.run` only, so the window opens without torch. The rest is
small pure helpers the panel calls on the GUI thread: the check text, parent references, names.
Plain Python, no Qt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from studio.core.blend.checks import (
    DENSITY_METHODS,
    RANDOM_METHODS,
    SVD_METHODS,
    AdapterFacts,
    BlendPlan,
    BlendRecipe,
    check_blend,
    read_adapter_facts,
    suitable_methods,
)
from studio.core.errors import StudioError
from studio.core.library.store import AdapterLibrary
from studio.core.paths import DataDir
from studio.core.progress import Cancelled, StageProgress, span

Emit = Callable[[Any], None]


def knobs(method: str) -> tuple[bool, bool, bool]:
    """Which of density, target rank and seed this method uses."""
    return method in DENSITY_METHODS, method in SVD_METHODS, method in RANDOM_METHODS


@dataclass(frozen=True)
class BlendSpec:
    """What the form asks for: enough to tell whether the blend in memory is still current."""

    adapters: tuple[str, ...]
    weights: tuple[float, ...]
    method: str
    density: float | None
    rank: int | None
    seed: int

    @classmethod
    def from_form(cls, weights: Mapping[str, float], method: str, density: float, rank: int,
                  seed: int) -> BlendSpec:
        """Keep only the knobs the method uses, so an unused knob's change does not force a re-blend."""
        uses_density, uses_rank, uses_seed = knobs(method)
        return cls(adapters=tuple(weights), weights=tuple(weights.values()), method=method,
                   density=density if uses_density else None, rank=rank if uses_rank else None,
                   seed=seed if uses_seed else 0)

    def options(self) -> dict[str, Any]:
        return {"density": self.density, "rank": self.rank, "seed": self.seed}


@dataclass(frozen=True)
class BlendOutcome:
    """What a preview or save job hands back to the GUI thread."""

    spec: BlendSpec
    result_rank: int
    exact: bool
    seconds: float
    answer: str | None = None
    saved_id: str | None = None
    saved_name: str | None = None

    def describe(self) -> str:
        """One status line: what was made, or where it was saved."""
        if self.saved_id:
            return f"Saved {self.saved_name!r} to the library with its recipe."
        # "not the exact sum" rather than "approximate": linear/ties/dare compute something else.
        kind = "exact" if self.exact else "not the exact sum"
        return f"Blend ready ({kind}, rank {self.result_rank}, {self.seconds:.1f} s)."


@dataclass(frozen=True)
class CheckText:
    """The live check in words: the plan (None when refused) and the sentence the panel shows."""

    plan: BlendPlan | None
    text: str

    @property
    def ok(self) -> bool:
        return self.plan is not None


def describe_check(facts: Sequence[AdapterFacts], spec: BlendSpec) -> CheckText:
    """Check the form with blend_checks (headers only) and say what the blend will be or why not."""
    plan = None
    try:
        plan = check_blend(list(facts), spec.weights, spec.method, **spec.options())
    except StudioError as err:
        text = f"✗ {err.message}" + (f"\n{err.hint}" if err.hint else "")
    else:
        kind = ("the exact weighted sum of the updates" if plan.exact
                else "not the exact weighted sum of the updates")
        text = (f"✓ Can blend: rank {plan.result_rank}, {kind}, "
                f"{len(plan.modules)} modules ({', '.join(plan.targets)}).")
        text += "".join(f"\n• {w}" for w in plan.warnings)
    if len(facts) > 1 and plan is None:
        fits = suitable_methods(list(facts))
        if fits and spec.method not in fits and "Use one of" not in text:
            text += f"\nMethods that fit these adapters: {', '.join(fits)}."
    return CheckText(plan, text)


@dataclass
class Catalog:
    """The adapter list as last loaded: entries by id (library order), each one's blend facts or
    why it cannot be blended. Filled in a worker, then only read on the GUI thread."""

    entries: dict[str, Any] = field(default_factory=dict)  # id -> studio.core.library.store entry
    facts: dict[str, AdapterFacts | str] = field(default_factory=dict)

    @classmethod
    def load(cls, library: AdapterLibrary) -> Catalog:
        """Runs in a worker: list the library and read each adapter's headers (no weights)."""
        catalog = cls()
        for e in library.list():
            catalog.entries[e.id] = e
            try:
                catalog.facts[e.id] = read_adapter_facts(e.path, e.manifest, ref=e.id)
            except StudioError as err:
                catalog.facts[e.id] = str(err)
        return catalog

    def base_of(self, adapter_id: str) -> str:
        return self.entries[adapter_id].manifest.base_model or "?"

    def bases(self) -> list[str]:
        return sorted({self.base_of(i) for i in self.entries})

    def usable(self, ids: Iterable[str]) -> list[AdapterFacts]:
        """The blend facts of these adapters, skipping those that cannot be blended."""
        return [f for i in ids if isinstance(f := self.facts.get(i), AdapterFacts)]

    def cells(self, adapter_id: str) -> list[str]:
        """The table's Rank, Targets and Made by cells."""
        fact, source = self.facts.get(adapter_id), self.entries[adapter_id].manifest.source
        if isinstance(fact, AdapterFacts):
            return [str(fact.rank), ", ".join(fact.targets), source]
        return ["?", "cannot be blended", source]

    def summary(self) -> str:
        return (f"{len(self.entries)} adapters in the library." if self.entries else
                "The library is empty: train or import adapters first.")

    def resolve(self, weights: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
        """Map references (ids or names) to ids: (id -> weight for each reference, those not found)."""
        by_name = {e.manifest.name: i for i, e in self.entries.items()}
        wanted = {(ref if ref in self.entries else by_name.get(ref, ref)): w for ref, w in weights.items()}
        return wanted, [ref for ref in wanted if ref not in self.entries]

    def has_recipe(self, adapter_id: str) -> bool:
        entry = self.entries.get(adapter_id)
        return bool(entry and entry.manifest.lineage.recipe.get("parents"))

    def recipe(self, adapter_id: str) -> BlendRecipe:
        """The blend recipe an adapter was made from; StudioError when it has none."""
        entry = self.entries.get(adapter_id)
        return BlendRecipe.from_dict(entry.manifest.lineage.recipe if entry else {})


def auto_name(facts: Sequence[AdapterFacts]) -> str:
    """The suggested name of a blend of these parents ("" for fewer than two)."""
    return "blend-" + "-".join(f.name for f in facts)[:60] if len(facts) > 1 else ""


def parse_tags(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


class BlendWork:
    """The BlendSession the panel's workers share (one job at a time) and its cooperative stop flag.

    `run` executes in a worker, everything else on the GUI thread while idle."""

    def __init__(self, library: AdapterLibrary, data: DataDir) -> None:
        self.library, self.data = library, data
        self.session = None  # a studio.ml.blend.weighted.BlendSession
        self.blended: BlendSpec | None = None  # the recipe of the blend held in the session
        self.stop = threading.Event()

    def run(self, emit: Emit, spec: BlendSpec, prompt: str | None,
            save: tuple[str, list[str]] | None) -> BlendOutcome:
        """(Re)load the session if the parents changed, blend if the recipe changed, then ask / save."""
        from studio.ml.blend.weighted import BlendSession

        if self.session is not None and tuple(self.session.adapters) != spec.adapters:
            self.close()
        if self.session is None:
            self.session = BlendSession(self.library, list(spec.adapters), data=self.data,
                                        progress=span(emit, 0.0, 0.5), should_stop=self.stop.is_set)
        session = self.session
        if self.blended != spec or session.result is None:
            self.blended = None
            session.progress = span(emit, 0.5, 0.85)
            session.blend(spec.weights, spec.method, **spec.options())
            self.blended = spec
        plan = session.result.plan
        outcome = BlendOutcome(spec=spec, result_rank=plan.result_rank, exact=plan.exact,
                               seconds=session.result.seconds)
        if prompt is not None:
            emit(StageProgress("preview", 0.9, "Asking the blend…"))
            outcome = replace(outcome, answer=session.preview(prompt))
        if self.stop.is_set():
            raise Cancelled("Stopped.", hint="Nothing was saved.")
        if save is not None:
            session.progress = span(emit, 0.9, 1.0)
            entry = session.save(save[0], tags=save[1])
            outcome = replace(outcome, saved_id=entry.id, saved_name=entry.name)
        return outcome

    def close(self) -> None:
        """Let go of the loaded model (only while no job runs)."""
        session, self.session, self.blended = self.session, None, None
        if session is not None:
            session.close()
