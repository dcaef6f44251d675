"""The Chat panel: adapters side by side on one base model, blind A/B votes, leaderboard, prompt sets.

Two to four panes (studio.gui.chat.pane) each answer with the base, an adapter, or a live blend.
One prompt goes to every pane; a single ChatEngine (loaded once, in a worker, by
studio.gui.chat.work) streams all answers at once, in one batch when the adapters allow, with the
same settings and seed. Tokens arrive as worker events and are painted on a ~10 Hz timer. In blind
mode the two panes are shuffled into A and B (`rng`, injectable for tests); the vote goes to
studio.db and the names are revealed. Sessions are saved as the user chats and can be reopened;
transcripts copy or export as Markdown or JSON. Panes, blind draws, votes, sessions and transcripts
live in studio.gui.chat.compare; the Prompt sets, Leaderboard and Sessions tabs in their own modules.
The adapters the panes offer and the base models are re-read after every notice of the app's
ChangeNotifier that touches them (a run, a blend, an import, a delete, the CLI); votes are announced.

Imports studio.ml only inside worker functions.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from studio.core.basemodels import DEFAULT_BASE_ID
from studio.core.changes import Changes
from studio.core.chat.records import Records
from studio.core.errors import StudioError
from studio.core.paths import DataDir
from studio.gui.changes import ChangeNotifier, Reload
from studio.gui.chat.compare import MIN_PANES, ComparisonMixin, fits
from studio.gui.chat.controls import SettingsBar, VoteBar
from studio.gui.chat.leaderboard import LeaderboardView, SessionsView
from studio.gui.chat.pane import ChatPane
from studio.gui.chat.prompt_sets import PromptSetView
from studio.gui.chat.work import (
    BASE,
    ChatWork,
    EngineLoading,
    EngineReady,
    PaneEvent,
    SetAnswer,
)
from studio.gui.error_dialog import show_error
from studio.gui.settings_dialog import BASE_MODEL_KEY
from studio.gui.workers import start_job

log = logging.getLogger(__name__)
SHUTDOWN_WAIT_S = 15.0


def scan(data: DataDir) -> tuple[list, list[tuple[str, str]], dict[str, str]]:
    """Runs in a worker: library entries; (id, fingerprint) of the bases in models/ (+ the default) and of
    those the adapters record elsewhere (the Hugging Face cache, a folder) that are here; and each adapter's
    base id as the one base resolver finds it (what it records, when that base is not here)."""
    from studio.core.basemodels import DEFAULT_BASE_HUB_ID, folder_fingerprint, studio_models
    from studio.core.library.adapter_folder import base_claims, first_base_found, read_adapter_config
    from studio.core.library.store import AdapterLibrary

    bases = [(m.id, m.fingerprint) for m in studio_models(data)]
    if DEFAULT_BASE_ID not in {b for b, _ in bases}:
        bases.append((DEFAULT_BASE_ID, ""))  # converted on first use
    known = {b for b, _ in bases}
    entries = AdapterLibrary(data).list()
    base_of: dict[str, str] = {}
    located: dict[tuple[str, ...], str] = {}  # many adapters share a base: resolve each claim list once
    for entry in entries:
        try:
            claims = tuple(base_claims(entry.manifest, read_adapter_config(entry.path, repr(entry.name))))
        except StudioError:
            claims = (entry.manifest.base_model,) if entry.manifest.base_model else ()
        if claims not in located:
            found = first_base_found(data, list(claims))
            if found is None:  # not here: the default is converted on first use, else only the exact id
                located[claims] = DEFAULT_BASE_ID if DEFAULT_BASE_HUB_ID in claims else claims[0] if claims else ""
            else:
                located[claims] = found.id
                if found.id not in known:
                    known.add(found.id)
                    try:
                        bases.append((found.id, folder_fingerprint(found.path)))
                    except StudioError as err:
                        log.info("Base %s is not usable in chat: %s", found.id, err)
        base_of[entry.id] = located[claims]
    return entries, bases, base_of


class ChatPanel(ComparisonMixin, QWidget):
    blend_requested = Signal(dict)  # {adapter id: weight} from a pane's live sliders
    answer_finished = Signal(int)  # pane index

    def __init__(self, data: DataDir, changes: ChangeNotifier, parent: QWidget | None = None, *,
                 rng: random.Random | None = None) -> None:
        super().__init__(parent)
        self.data, self.records, self.rng = data, Records(data.database), rng or random.Random()
        self.changes = changes
        self.reload = Reload(self, lambda: scan(self.data), self._fill, self._refresh_failed)
        self.work = ChatWork(data)
        self.entries: list = []
        self.bases: dict[str, str] = {}  # base id -> fingerprint ("" until known)
        self.base_of: dict[str, str] = {}  # adapter id -> the id of the base it records (see scan)
        self.panes: list[ChatPane] = []
        self.blind, self.revealed, self.voted = False, False, False
        self.assignment: dict[str, str] = {}  # "A"/"B" -> ref while blind
        self.session_id: str | None = None
        self.last_prompt = ""
        self.engine_job: str | None = None  # "chat" | "set" while the engine works
        self._idle = threading.Event()
        self._idle.set()
        self._closing = False
        self._pending: tuple[list[str], bool] | None = None
        self.flush_timer = QTimer(self, interval=100)
        self.flush_timer.timeout.connect(self._flush)

        self.base_combo = QComboBox(minimumContentsLength=22)
        self.base_combo.activated.connect(lambda _: self._base_changed())
        self.settings_bar = SettingsBar()
        self.status = QLabel("")
        self.status.setStyleSheet("color: palette(mid)")
        top = QHBoxLayout()
        top.addWidget(QLabel("Base model:"))
        top.addWidget(self.base_combo)
        top.addWidget(self.status, 1)

        self.blind_check = QCheckBox("Blind A/B")
        self.blind_check.setToolTip("Hide which adapter answers in which pane until you vote")
        self.blind_check.toggled.connect(self.set_blind)
        self.add_button, self.remove_button = QPushButton("Add pane"), QPushButton("Remove pane")
        self.add_button.clicked.connect(self.add_pane)
        self.remove_button.clicked.connect(self.remove_pane)
        self.new_button = QPushButton("New chat")
        self.new_button.clicked.connect(lambda: self.new_chat(reshuffle=True))
        self.copy_button, self.export_button = QPushButton("Copy transcript"), QPushButton("Export…")
        self.copy_button.clicked.connect(self.copy_transcript)
        self.export_button.clicked.connect(lambda: self.export_transcript())
        tools = QHBoxLayout()
        for w in (self.blind_check, self.add_button, self.remove_button, self.new_button):
            tools.addWidget(w)
        tools.addStretch(1)
        tools.addWidget(self.copy_button)
        tools.addWidget(self.export_button)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, childrenCollapsible=False)
        self.vote_bar = VoteBar()
        self.vote_bar.voted.connect(self.vote)
        self.prompt_edit = QPlainTextEdit(placeholderText="Ask every pane the same thing (Ctrl+Enter sends)")
        self.prompt_edit.setMaximumHeight(72)
        QShortcut(QKeySequence("Ctrl+Return"), self.prompt_edit, activated=self._send_clicked)
        self.send_button, self.stop_button = QPushButton("Send"), QPushButton("Stop all", enabled=False)
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self._send_clicked)
        self.stop_button.clicked.connect(self.stop_all)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        ask_row = QHBoxLayout()
        ask_row.addWidget(self.prompt_edit, 1)
        ask_row.addLayout(buttons)
        chat = QWidget()
        chat_layout = QVBoxLayout(chat)
        chat_layout.addLayout(tools)
        chat_layout.addWidget(self.splitter, 1)
        chat_layout.addWidget(self.vote_bar)
        chat_layout.addLayout(ask_row)

        self.prompt_sets = PromptSetView(self.records, self.rng, changes)
        self.prompt_sets.run_requested.connect(self.run_prompt_set)
        self.prompt_sets.stop_requested.connect(self.stop_all)
        self.leaderboard = LeaderboardView(data, self.records, changes)
        self.sessions = SessionsView(self.records)
        self.sessions.open_requested.connect(self.open_session)
        self.tabs = QTabWidget()
        for widget, title in ((chat, "Side by side"), (self.prompt_sets, "Prompt sets"),
                              (self.leaderboard, "Leaderboard"), (self.sessions, "Sessions")):
            self.tabs.addTab(widget, title)
        self.tabs.currentChanged.connect(self._tab_changed)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.settings_bar)
        layout.addWidget(self.tabs, 1)
        for _ in range(MIN_PANES):
            self.add_pane()
        changes.changed.connect(self._changed)
        self.refresh()

    # ------------------------------------------------------------ library and bases

    def refresh(self) -> None:
        """Re-read the library and the base models (in a worker)."""
        if not self._closing:
            self.reload.start()

    @property
    def refreshing(self) -> bool:
        return self.reload.running

    def _changed(self, changes: Changes) -> None:
        if changes.adapters or changes.base_models:
            self.refresh()

    def _refresh_failed(self, err: BaseException, details: str) -> None:
        if not self._closing:
            show_error(self, err, details)

    def _fill(self, result: tuple[list, list[tuple[str, str]], dict[str, str]]) -> None:
        if self._closing:
            return
        self.entries, bases, self.base_of = result
        keep = self.base_combo.currentData()
        if keep is None:  # first fill: the default base if it has adapters, else one that has
            keep = QSettings().value(BASE_MODEL_KEY, DEFAULT_BASE_ID, type=str)
            used = [b for b, f in bases if any(fits(e, b, f, self.base_of) for e in self.entries)]
            keep = keep if keep in used or not used else used[0]
        self.bases = dict(bases)
        self.base_combo.clear()
        for base_id, fingerprint in bases:
            note = "" if fingerprint else " (converted on first use)"
            self.base_combo.addItem(base_id + note, base_id)
        self.base_combo.setCurrentIndex(max(self.base_combo.findData(keep), 0))
        self._update_choices()
        if self._pending is not None:
            refs, blind = self._pending
            self._pending = None
            self.open_comparison(refs, blind)

    def base_id(self) -> str:
        return self.base_combo.currentData() or DEFAULT_BASE_ID

    def base_key(self) -> str:
        """What votes of this base are stored under: its fingerprint (once known), else its id."""
        return self.bases.get(self.base_id()) or self.base_id()

    def choices(self) -> list[tuple[str, str]]:
        base = self.base_id()
        return [(e.name, e.id) for e in self.entries if fits(e, base, self.bases.get(base, ""), self.base_of)]

    def _update_choices(self) -> None:
        choices = self.choices()
        offered = {ref for _, ref in choices}
        gone = []
        for pane in self.panes:
            before = pane.binding()
            name = pane.display_name()
            pane.set_choices(choices)
            if not before.is_blend and before.ref not in (BASE, *offered):
                gone.append(name)
        self.prompt_sets.set_choices([("Base model", BASE), *choices])
        if gone:  # never switch a pane to the base without a word: the user would compare base with base
            self.status.setText(f"{', '.join(sorted(set(gone)))} left the library (deleted or on another "
                                "base): its pane answers with the base model now.")

    def _base_changed(self) -> None:
        self._update_choices()
        self.new_chat(reshuffle=True)

    # ------------------------------------------------------------ asking

    def busy(self) -> bool:
        """Generating (re-reading the library is not work to ask about before closing)."""
        return bool(self.engine_job)

    def _send_clicked(self) -> None:
        if self.ask(self.prompt_edit.toPlainText()):
            self.prompt_edit.clear()

    def ask(self, prompt: str) -> bool:
        """Send one prompt to every pane; all stream at once. False when busy or nothing to ask."""
        prompt = prompt.strip()
        if not prompt or self.engine_job or self._closing:
            return False
        bindings = [p.binding() for p in self.panes]
        if any(b.is_blend and not b.weights for b in bindings):
            show_error(self, StudioError("A live-blend pane has no adapter checked.", hint="Tick at least one."))
            return False
        settings = self.settings_bar.values()
        panes = [b.to_dict() for b in bindings]
        if self.session_id is None:
            self.session_id = self.records.create_session(prompt[:60], self.base_id(), panes,
                                                          self._session_settings()).id
        else:
            self.records.update_session(self.session_id, panes=panes, settings=self._session_settings())
        for i, (pane, binding) in enumerate(zip(self.panes, bindings, strict=True)):
            self.records.add_message(self.session_id, i, "user", prompt, adapter=binding.ref)
            pane.begin(prompt)
        self.last_prompt, self.voted = prompt, False
        conversations = [list(p.conversation) for p in self.panes]
        base = self.base_id()

        def job(emit):
            from studio.ml.chat.generation import GenerationSettings

            self.work.ask(emit, base, conversations, bindings, GenerationSettings.from_dict(settings).check())

        self._start_engine("chat", job, self._chat_done)
        return True

    def _start_engine(self, kind: str, func, on_done) -> None:
        self.engine_job = kind
        self.work.stop.clear()
        self._idle.clear()

        def job(emit):
            try:
                return func(emit)
            finally:
                if self._closing:  # the panel is gone: free the model from here
                    self.work.close()
                self._idle.set()

        for pane in self.panes:
            pane.set_locked(True)
        self._update_controls()
        self.flush_timer.start()
        start_job(job, on_done=on_done, on_error=self._engine_failed, on_event=self._on_event, parent=self)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, PaneEvent) and event.pane < len(self.panes):
            self._pane_event(self.panes[event.pane], event.pane, event.event)
        elif isinstance(event, EngineLoading):
            self.status.setText(event.message or f"Loading {event.base}…")
        elif isinstance(event, EngineReady):
            self.bases[event.base] = event.fingerprint
            self.prompt_sets.set_base_key(event.fingerprint)
            precision = {"none": "full precision", "4bit": "4-bit"}.get(event.quant, event.quant)
            self.status.setText(f"{event.base} on {event.device.upper()} ({precision}), loaded in {event.seconds:.1f} s")
        elif isinstance(event, SetAnswer):
            self.prompt_sets.add_result(event.prompt, event.answers)

    def _pane_event(self, pane: ChatPane, index: int, event: Any) -> None:
        kind = type(event).__name__
        if kind == "Token":
            pane.add_token(event.text)
        elif kind == "Finished":
            pane.finish(event)
            if self.session_id:
                meta = {"tokens": event.tokens, "tokens_per_second": event.tokens_per_second,
                        "stop_reason": event.stop_reason}
                self.records.add_message(self.session_id, index, "assistant", event.text, adapter=event.adapter,
                                         meta=meta)
            self.answer_finished.emit(index)
        elif kind == "Trimmed":
            pane.note(f"Left out the {event.n_dropped_turns} oldest messages to fit the context.")
        elif kind == "TemplateWarning":
            pane.note(event.message)

    def _flush(self) -> None:
        for pane in self.panes:
            pane.flush()

    def _job_ended(self) -> None:
        self.engine_job = None
        self.flush_timer.stop()
        self._flush()
        for pane in self.panes:
            pane.set_locked(False)
        self._update_controls()

    def _chat_done(self, _result: Any) -> None:
        self._job_ended()

    def _engine_failed(self, err: BaseException, details: str) -> None:
        kind = self.engine_job
        self._job_ended()
        for pane in self.panes:
            if pane.streaming:  # drop the unanswered question so the conversation stays well-formed
                pane.streaming = False
                if pane.conversation and pane.conversation[-1]["role"] == "user":
                    pane.conversation.pop()
                pane.note("Failed: " + str(err).splitlines()[0])
        if kind == "set":
            self.prompt_sets.run_finished(failed=True)
        if not self._closing:
            self.status.setText("Failed.")
            show_error(self, err, details)

    def stop_all(self) -> None:
        """Ask every answer to stop after its current token (cooperative)."""
        self.work.stop.set()

    def _update_controls(self) -> None:
        running = bool(self.engine_job)
        self.send_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        for w in (self.new_button, self.blind_check, self.base_combo):
            w.setEnabled(not running)
        self._retitle()

    # ------------------------------------------------------------ prompt sets

    def run_prompt_set(self, prompts: list[str], ref_a: str, ref_b: str) -> None:
        if self.engine_job or self._closing:
            return
        settings = self.settings_bar.values()
        self.prompt_sets.run_started(self.base_key(), settings)
        base = self.base_id()

        def job(emit):
            from studio.ml.chat.generation import GenerationSettings

            return self.work.run_set(emit, base, prompts, [ref_a, ref_b], GenerationSettings.from_dict(settings).check())

        self._start_engine("set", job, self._set_done)

    def _set_done(self, _count: Any) -> None:
        self._job_ended()
        self.prompt_sets.run_finished()

    def _tab_changed(self, index: int) -> None:
        widget = self.tabs.widget(index)
        if widget is self.leaderboard:
            self.leaderboard.refresh(self.base_key())
        elif widget is self.sessions:
            self.sessions.refresh()
        elif widget is self.prompt_sets:
            self.prompt_sets.refresh()

    def shutdown(self) -> None:
        """Stop generating, wait a while for the worker, free the engine; stop the timers."""
        self._closing = True
        self.work.stop.set()
        self.flush_timer.stop()
        self.leaderboard.shutdown()
        if self._idle.wait(SHUTDOWN_WAIT_S):
            self.work.close()
        else:
            log.warning("The chat worker did not stop within %.0f s; it frees the model when it ends.",
                        SHUTDOWN_WAIT_S)
