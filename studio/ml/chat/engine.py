"""The chat engine: one base model in memory, LoRA adapters attached on demand, streamed answers.

`ChatEngine(base)` (a resolved base, or its folder) loads the base once through studio.ml.base.loading
(4-bit NF4 on CUDA by default, full precision on a CPU). Adapters are attached (loading.attach_adapter,
which refuses any whose init would rewrite the shared base) under their library id, kept up to
`max_loaded_adapters` (the least recently used is deleted) and switched with `set_adapter`; "base"
runs with the adapters disabled. Two or more panes answering at once share one `generate` call via
peft's mixed-adapter batches (`adapter_names=`, "__base__" for the base) unless an adapter uses DoRA
or weights are merged; then they run one after the other. `set_adapter_weights` makes a live blend
(peft's exact "cat" combination) without writing an adapter.

Every call is an iterator of typed events (see studio.ml.chat.generation) fed by a worker thread that
owns the model while it runs; `should_stop` cancels between tokens. Meant for one GUI worker thread
or the CLI; calls from several threads are serialised.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.basemodels import BaseModelInfo, inspect_base_model
from studio.core.errors import StudioError
from studio.core.progress import ShouldStop
from studio.ml.base.hardware import choose_device
from studio.ml.base.loading import (
    chat_template_sha256,
    chat_template_text,
    free_memory,
    load_base_model,
    load_tokenizer,
    resolve_quant,
)
from studio.ml.chat.adapters import BASE, LIVE, PEFT_BASE, AdapterSet, LoadedAdapter
from studio.ml.chat.generation import (
    ChatEvent,
    Emit,
    Finished,
    GenerationSettings,
    Message,
    RowStreamer,
    Started,
    StopRequested,
    TemplateWarning,
    Trimmed,
    normalize_messages,
    render_prompt,
    safe_pad_id,
    stop_ids,
)

log = logging.getLogger(__name__)

__all__ = ["BASE", "LIVE", "ChatEngine"]


class _Done:
    pass


@dataclass
class _Failure:
    error: BaseException


class ChatEngine:
    """One base model, many adapters, streamed answers. See the module docstring."""

    def __init__(self, base: BaseModelInfo | Path | str, *, quant: str = "auto", max_loaded_adapters: int = 4,
                 library: Any = None, device: str | None = None) -> None:
        # A resolved base keeps the id it was found by (studio id, repo id); a folder is identified here.
        self.base_info = base if isinstance(base, BaseModelInfo) else inspect_base_model(base)
        self.base_folder = self.base_info.path
        self.fingerprint = self.base_info.fingerprint
        self._lock = threading.RLock()
        self.base_loads = 0
        choice = choose_device(device)
        self.quant, self.device = resolve_quant(quant, choice), choice.kind
        self.tokenizer = load_tokenizer(self.base_folder, distinct_pad=False)  # safe_pad_id picks the pad
        self.base_model = load_base_model(self.base_folder, self.quant, choice)
        self.base_loads += 1  # the base is loaded here, once; nothing else ever loads it again
        self.base_template = chat_template_text(self.tokenizer)
        self.base_template_sha256 = chat_template_sha256(self.base_template)
        self.adapters = AdapterSet(self.base_model, base_id=self.base_info.id, fingerprint=self.fingerprint,
                                   base_template=self.base_template, max_loaded=max_loaded_adapters,
                                   library=library)
        config = self.base_model.config
        self.context_tokens = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.stop_ids = stop_ids(self.tokenizer, template=self.base_template,
                                 generation_config=self.base_model.generation_config)
        self.pad_id = safe_pad_id(self.tokenizer, self.stop_ids)
        log.info("Chat engine: %s (%s, %s), stop ids %s, pad id %s", self.base_info.id, self.quant, self.device,
                 self.stop_ids, self.pad_id)

    # ------------------------------------------------------------ adapters

    @property
    def model(self):
        """The model generate runs on: the base until an adapter is attached, then peft's wrapper."""
        return self.adapters.model

    @property
    def is_peft(self) -> bool:
        return self.adapters.is_peft

    @property
    def loaded_adapters(self) -> list[str]:
        """Ids of the attached adapters, least recently used first (live blends not included)."""
        return list(self.adapters.loaded)

    def peft_name(self, adapter: str) -> str:
        """The name peft knows an attached adapter (or live blend) by."""
        slot = self.adapters.live.get(adapter) or self.adapters.loaded.get(adapter)
        if slot is None:
            raise StudioError(f"{adapter!r} is not attached.")
        return slot.peft_name

    def load_adapter(self, ref: Any) -> str:
        """Attach an adapter (library id or name, library entry, or folder) and return its id."""
        with self._lock:
            return self.adapters.load(ref)

    def unload_adapter(self, adapter_id: str) -> None:
        with self._lock:
            self.adapters.unload(adapter_id)

    def set_adapter_weights(self, weights: Mapping[str, float], *, name: str = LIVE) -> str:
        """A live blend {adapter: weight} usable as adapter `name` (e.g. one per pane) until replaced
        or unloaded. Exact (peft's "cat" combination); nothing is written to disk."""
        with self._lock:
            return self.adapters.blend(weights, name)

    def batch_blocker(self, adapters: Sequence[str]) -> str:
        """Why these adapters cannot share one batch ("" when they can)."""
        with self._lock:
            return self.adapters.batch_blocker(self.adapters.slots(adapters))

    # ------------------------------------------------------------ generation

    def stream(self, messages: Sequence[Message], adapter: str = BASE, settings: GenerationSettings | None = None,
               should_stop: ShouldStop | None = None) -> Iterator[ChatEvent]:
        """Stream one answer: Started, maybe Trimmed / TemplateWarning, Token..., Finished."""
        for _, event in self.stream_many([messages], [adapter], settings, should_stop):
            yield event

    def stream_many(self, conversations: Sequence[Sequence[Message]], adapters: Sequence[str],
                    settings: GenerationSettings | None = None, should_stop: ShouldStop | None = None, *,
                    batch: bool = True) -> Iterator[tuple[int, ChatEvent]]:
        """Several panes at once: (pane index, event). One conversation is shared by every pane.

        Panes share one batched `generate` when `batch` and the adapters allow it (no DoRA, nothing
        merged); otherwise they answer one after the other.
        """
        if len(conversations) == 1 and len(adapters) > 1:
            conversations = [conversations[0]] * len(adapters)
        if len(conversations) != len(adapters) or not adapters:
            raise StudioError("Give one conversation per pane (or one shared by all).")
        settings = (settings or GenerationSettings()).check()
        return self._run(lambda emit, cancel: self._answer(conversations, adapters, settings, should_stop,
                                                           batch, emit, cancel))

    def generate_batch(self, messages: Sequence[Message], adapters: Sequence[str],
                       settings: GenerationSettings | None = None) -> list[str]:
        """The answers of several adapters (or "base") to one conversation, in one batch when possible."""
        return [f.text for f in self.answers([messages], adapters, settings)]

    def answers(self, conversations: Sequence[Sequence[Message]], adapters: Sequence[str],
                settings: GenerationSettings | None = None, *, batch: bool = True) -> list[Finished]:
        finished: dict[int, Finished] = {}
        for pane, event in self.stream_many(conversations, adapters, settings, batch=batch):
            if isinstance(event, Finished):
                finished[pane] = event
        return [finished[i] for i in range(len(adapters))]

    def _run(self, job) -> Iterator[tuple[int, ChatEvent]]:
        """Run `job(emit, cancel)` on a worker thread that holds the model; yield what it emits."""
        events: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def target() -> None:
            try:
                with self._lock:
                    job(lambda pane, event: events.put((pane, event)), cancel)
            except BaseException as err:  # handed to the caller's thread
                events.put(_Failure(err))
            finally:
                events.put(_Done())

        worker = threading.Thread(target=target, name="chat-generate", daemon=True)
        worker.start()
        try:
            while True:
                item = events.get()
                if isinstance(item, _Done):
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            cancel.set()  # the caller stopped iterating: stop generating too
            worker.join(timeout=60)

    def _answer(self, conversations, adapters, settings: GenerationSettings, should_stop: ShouldStop | None,
                batch: bool, emit: Emit, cancel: threading.Event) -> None:
        slots = self.adapters.slots(adapters)
        prompts = []
        for pane, (conversation, slot) in enumerate(zip(conversations, slots, strict=True)):
            if slot is not None and slot.template_warning:
                emit(pane, TemplateWarning(slot.id, slot.template_warning))
            messages = normalize_messages(conversation, settings.system_prompt)
            template = slot.template if slot is not None else self.base_template
            prompt = render_prompt(self.tokenizer, messages, template, self.context_tokens, settings.max_new_tokens)
            if prompt.dropped:
                emit(pane, Trimmed(prompt.dropped, len(prompt.input_ids), self.context_tokens))
            prompts.append(prompt.input_ids)
        labels = [BASE if s is None else s.id for s in slots]
        blocker = self.adapters.batch_blocker(slots) if batch and len(adapters) > 1 else "single"
        if not blocker:
            names = [PEFT_BASE if s is None else s.peft_name for s in slots] if self.is_peft else None
            self._generate(list(range(len(adapters))), prompts, labels, names, None, settings, should_stop,
                           emit, cancel)
            return
        if len(adapters) > 1:
            log.info("Answering one pane after the other: %s", blocker)
        for pane, slot in enumerate(slots):
            if cancel.is_set() or (should_stop and should_stop()):
                emit(pane, Finished(text="", tokens=0, tokens_per_second=0.0, stop_reason="stopped", adapter=labels[pane]))
                continue
            self._generate([pane], [prompts[pane]], [labels[pane]], None, slot, settings, should_stop, emit, cancel)

    def _generate(self, panes: list[int], prompts: list[list[int]], labels: list[str], adapter_names: list[str] | None,
                  slot: LoadedAdapter | None, settings: GenerationSettings, should_stop: ShouldStop | None,
                  emit: Emit, cancel: threading.Event) -> None:
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        config = GenerationConfig(max_new_tokens=settings.max_new_tokens, eos_token_id=list(self.stop_ids),
                                  pad_token_id=self.pad_id, bos_token_id=self.tokenizer.bos_token_id,
                                  **settings.generate_kwargs())
        stop = StopRequested(cancel.is_set, should_stop)
        streamer = RowStreamer(self.tokenizer, panes, labels, self.stop_ids, settings.max_new_tokens, emit,
                               cancelled=lambda: stop.triggered)
        for pane, label, prompt in zip(panes, labels, prompts, strict=True):
            emit(pane, Started(label, len(prompt), batched=len(panes) > 1))
        if settings.seed is not None:
            torch.manual_seed(int(settings.seed))
        kwargs: dict[str, Any] = {}
        if adapter_names is not None:
            kwargs["adapter_names"] = adapter_names
        with torch.inference_mode(), self._activate(slot, adapter_names is not None):
            self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                streamer=streamer, stopping_criteria=StoppingCriteriaList([stop]), **kwargs)

    def _activate(self, slot: LoadedAdapter | None, mixed: bool):
        """The adapter a single-adapter generate runs with: set_adapter, or disabled for the base."""
        if mixed or not self.is_peft:
            return contextlib.nullcontext()
        if slot is None:
            return self.model.disable_adapter()
        self.model.set_adapter(slot.peft_name)
        self.adapters.touch(slot.id)
        return contextlib.nullcontext()

    def close(self) -> None:
        """Drop the model (its memory is returned once no one else holds it)."""
        with self._lock:
            self.adapters = None
            self.base_model = None
            free_memory()
