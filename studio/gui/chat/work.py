"""The chat panel's background half: one ChatEngine kept across jobs, and transcripts as MD / JSON.

`ChatWork` runs inside the panel's worker jobs (one at a time): it loads the base model once (the
default model is converted on first use), attaches adapters through the engine, turns a pane bound
to several adapters into a live blend (`ChatEngine.set_adapter_weights`, nothing written), and
reports what happens as small frozen event dataclasses that the GUI thread applies to the panes.
Stopping is cooperative through `stop` (checked between tokens by the engine).

Plain Python, no Qt; studio.ml is imported only inside its methods.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from studio.core.errors import StudioError
from studio.core.paths import DataDir
from studio.core.progress import StageProgress

log = logging.getLogger(__name__)

BASE = "base"
Emit = Callable[[Any], None]


@dataclass(frozen=True)
class PaneBinding:
    """What one pane answers with: "base", an adapter id, or a live blend {adapter id: weight}."""

    ref: str = BASE
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def is_blend(self) -> bool:
        return bool(self.weights)

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": "blend", "weights": dict(self.weights)} if self.is_blend else {"adapter": self.ref}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PaneBinding:
        weights = {str(k): float(v) for k, v in (data.get("weights") or {}).items()}
        return cls(ref="blend" if weights else str(data.get("adapter") or BASE), weights=weights)


@dataclass(frozen=True)
class EngineLoading:
    base: str
    message: str = ""  # what the load is doing now, when there is more to say than "loading"


@dataclass(frozen=True)
class EngineReady:
    """The base model is in memory (reported once per load)."""

    base: str
    fingerprint: str
    device: str
    quant: str
    seconds: float


@dataclass(frozen=True)
class PaneEvent:
    """One chat event (studio.ml.chat.generation: Started, Token, Trimmed, TemplateWarning, Finished) of a pane."""

    pane: int
    event: Any


@dataclass(frozen=True)
class SetAnswer:
    """The answers of the two sides of a prompt-set run to prompt `index`."""

    index: int
    prompt: str
    answers: tuple[str, ...]


class ChatWork:
    """The engine the panel's jobs share. `ensure`/`ask`/`run_set` run in a worker, one at a time."""

    def __init__(self, data: DataDir, quant: str = "auto") -> None:
        self.data = data
        self.quant = quant
        self.engine = None  # a studio.ml.chat.engine.ChatEngine
        self.engine_base: str | None = None
        self.stop = threading.Event()

    def base(self, base_id: str, emit: Emit | None = None):
        """The resolved base (studio.ml.base.default_model.resolve_base), the default converted on first use."""
        from studio.ml.base.default_model import resolve_base

        def converting(event: StageProgress) -> None:
            if emit is not None:
                emit(EngineLoading(base_id, f"Preparing the default model (first use only, "
                                            f"{event.fraction or 0:.0%}): {event.message}"))

        return resolve_base(self.data, base_id, converting)[0]

    def ensure(self, emit: Emit, base_id: str):
        """The engine for this base, loading it (once) if another base or none is loaded."""
        if self.engine is not None and self.engine_base == base_id:
            return self.engine
        self.close()
        from studio.core.library.store import AdapterLibrary
        from studio.ml.chat.engine import ChatEngine

        emit(EngineLoading(base_id))
        started = time.perf_counter()
        self.engine = ChatEngine(self.base(base_id, emit), quant=self.quant, library=AdapterLibrary(self.data))
        self.engine_base = base_id
        e = self.engine
        emit(EngineReady(base_id, e.fingerprint, e.device, e.quant, time.perf_counter() - started))
        return e

    def _adapters(self, engine, bindings: Sequence[PaneBinding]) -> list[str]:
        """The engine's name for each pane; a blend pane gets its own live blend, rebuilt each ask so
        the sliders' current weights apply."""
        names = []
        for index, binding in enumerate(bindings):
            if binding.is_blend:
                names.append(engine.set_adapter_weights(binding.weights, name=f"__pane{index}__"))
            else:
                names.append(binding.ref)
        return names

    def ask(self, emit: Emit, base_id: str, conversations: Sequence[Sequence[dict[str, str]]],
            bindings: Sequence[PaneBinding], settings: Any) -> None:
        """Every pane answers its own conversation; one batched generate when the adapters allow."""
        engine = self.ensure(emit, base_id)
        adapters = self._adapters(engine, bindings)
        for pane, event in engine.stream_many(conversations, adapters, settings, should_stop=self.stop.is_set):
            emit(PaneEvent(pane, event))

    def run_set(self, emit: Emit, base_id: str, prompts: Sequence[str], refs: Sequence[str], settings: Any) -> int:
        """Each prompt through both sides (one batch each); returns how many prompts were answered."""
        from studio.ml.chat.generation import Finished

        if len(refs) != 2 or refs[0] == refs[1]:
            raise StudioError("Pick two different sides (adapters or the base) to run the prompt set through.")
        engine = self.ensure(emit, base_id)
        done = 0
        for index, prompt in enumerate(prompts):
            if self.stop.is_set():
                break
            answers = {}
            for pane, event in engine.stream_many([[{"role": "user", "content": prompt}]], list(refs), settings,
                                                  should_stop=self.stop.is_set):
                if isinstance(event, Finished):
                    answers[pane] = event.text
            if self.stop.is_set():
                break
            emit(SetAnswer(index, prompt, (answers.get(0, ""), answers.get(1, ""))))
            done += 1
        return done

    def close(self) -> None:
        """Free the engine (its memory returns once nothing else holds the model)."""
        if self.engine is not None:
            self.engine.close()
        self.engine, self.engine_base = None, None


# ---------------------------------------------------------------- transcripts


@dataclass(frozen=True)
class PaneTranscript:
    label: str  # what the reader sees: "A" in an unrevealed blind comparison, else the adapter's name
    adapter: str  # "" while blind and unrevealed
    messages: list[dict[str, str]]


def transcript_json(base: str, settings: dict[str, Any], panes: Sequence[PaneTranscript], *,
                    blind: bool = False) -> str:
    body = {"schema_version": 1, "base": base, "blind": blind, "settings": settings,
            "panes": [{"label": p.label, "adapter": p.adapter, "messages": p.messages} for p in panes]}
    return json.dumps(body, indent=2, ensure_ascii=False)


def transcript_markdown(base: str, settings: dict[str, Any], panes: Sequence[PaneTranscript], *,
                        blind: bool = False) -> str:
    lines = [f"# Chat on {base}", ""]
    if blind:
        lines += ["Blind comparison: names are hidden until the vote.", ""]
    shown = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "system_prompt" and v not in (None, ""))
    lines += [f"Settings: {shown}", ""]
    if settings.get("system_prompt"):
        lines += [f"System prompt: {settings['system_prompt']}", ""]
    for pane in panes:
        lines += [f"## {pane.label}", ""]
        for message in pane.messages:
            who = "You" if message["role"] == "user" else pane.label if message["role"] == "assistant" else "System"
            lines += [f"**{who}:**", "", message["content"].strip() or "_(no answer)_", ""]
    return "\n".join(lines).rstrip() + "\n"
