"""The comparison half of the chat panel: its panes, blind draws, votes, sessions and transcripts.

`ComparisonMixin` is mixed into studio.gui.chat.panel.ChatPanel and works on what the panel builds:
`panes`, `splitter`, `records`, `rng`, `settings_bar`, `vote_bar`, the buttons, `base_id()` /
`base_key()` / `choices()`, and the state attributes set in its __init__. Two to four panes; blind
mode keeps two and shuffles their bindings into A and B with `rng` (studio.core.chat.ratings); a vote
goes to studio.db (studio.core.chat.records), is announced and reveals the names; a session (panes, settings,
messages) is reopened from the database; transcripts render as Markdown or JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QApplication, QFileDialog

from studio.core.atomic import write_text
from studio.core.changes import Changes
from studio.core.chat.ratings import blind_assignment, winner_code
from studio.core.errors import StudioError
from studio.gui.chat.controls import VOTES
from studio.gui.chat.pane import ChatPane
from studio.gui.chat.work import BASE, PaneBinding, PaneTranscript, transcript_json, transcript_markdown
from studio.gui.error_dialog import show_error

MIN_PANES, MAX_PANES = 2, 4


def fits(entry: Any, base_id: str, fingerprint: str, base_of: Mapping[str, str]) -> bool:
    """Whether a library entry was made on this base: by fingerprint when both are known, else by the id
    the base resolver gave the base it records (`base_of`, from studio.gui.chat.panel.scan)."""
    claimed = entry.manifest.base_fingerprint
    if claimed and fingerprint:
        return claimed == fingerprint
    return base_of.get(entry.id, entry.manifest.base_model) == base_id


class ComparisonMixin:
    """Panes, blind mode, votes, sessions and transcripts of the chat panel (see the module docstring)."""

    panes: list[ChatPane]
    entries: list
    base_of: dict[str, str]
    assignment: dict[str, str]
    session_id: str | None
    engine_job: str | None

    def _session_settings(self) -> dict[str, Any]:
        return {**self.settings_bar.values(), "blind": self.blind, "assignment": self.assignment,
                "revealed": self.revealed}

    # ------------------------------------------------------------ panes

    def add_pane(self) -> ChatPane | None:
        if len(self.panes) >= MAX_PANES or self.blind or self.engine_job:
            return None
        pane = ChatPane(len(self.panes))
        pane.set_choices(self.choices())
        pane.blend_requested.connect(self.blend_requested)
        pane.binding_changed.connect(self._update_vote_bar)
        self.panes.append(pane)
        self.splitter.addWidget(pane)
        self._retitle()
        return pane

    def remove_pane(self) -> None:
        if len(self.panes) <= MIN_PANES or self.engine_job:
            return
        pane = self.panes.pop()
        pane.setParent(None)
        pane.deleteLater()
        self._retitle()

    def _retitle(self) -> None:
        hidden = self.blind and not self.revealed
        for i, pane in enumerate(self.panes):
            letter = chr(ord("A") + i)
            pane.set_title(letter if hidden else f"{letter} · {pane.display_name()}" if self.blind else letter,
                           hide_binding=self.blind)
        self.add_button.setEnabled(len(self.panes) < MAX_PANES and not self.blind and not self.engine_job)
        self.remove_button.setEnabled(len(self.panes) > MIN_PANES and not self.engine_job)
        self._update_vote_bar()

    def set_blind(self, on: bool) -> None:
        """Blind A/B: two panes, their bindings shuffled into A and B, names hidden until the vote."""
        if on and any(p.binding().is_blend for p in self.panes[:2]):
            show_error(self, StudioError("A blind comparison is between two adapters (or an adapter and the base), "
                                         "not a live blend.", hint="Bind both panes to one adapter each."))
            on = False
        self.blind_check.blockSignals(True)
        self.blind_check.setChecked(on)
        self.blind_check.blockSignals(False)
        while on and len(self.panes) > MIN_PANES:
            self.remove_pane()
        self.blind = on
        self.new_chat(reshuffle=True)

    def new_chat(self, reshuffle: bool = False) -> None:
        """Fresh conversations (and, when blind, a fresh draw of which side is A)."""
        if self.engine_job:
            return
        for pane in self.panes:
            pane.clear()
        self.session_id, self.voted, self.revealed, self.last_prompt = None, False, False, ""
        self.vote_bar.show_result("")
        if self.blind and reshuffle:
            self.assignment = blind_assignment([p.binding().ref for p in self.panes], self.rng)
            for i, pane in enumerate(self.panes):
                pane.set_binding(PaneBinding(self.assignment[chr(ord("A") + i)]))
        self._retitle()

    def open_comparison(self, refs: list[str], blind: bool = False) -> None:
        """Bind the panes to these adapters (ids or names, or "base"); one ref is compared with the base."""
        if self.refreshing:  # the list is being re-read (a notice said it changed): bind once it is in
            self._pending = (list(refs), blind)
            return
        if self.engine_job:
            show_error(self, StudioError("Wait for the answers to finish (or stop them) first."))
            return
        try:
            ids = [BASE if r == BASE else self._entry(r).id for r in refs][:MAX_PANES]
        except StudioError as err:
            show_error(self, err)
            return
        if len(ids) == 1:
            ids.append(BASE if ids[0] != BASE else ids[0])
        named = [self._entry(i) for i in ids if i != BASE]
        if named:  # the base the adapters were trained on
            base = next((b for b, f in self.bases.items() if fits(named[0], b, f, self.base_of)), None)
            if base is not None and base != self.base_id():
                self.base_combo.setCurrentIndex(self.base_combo.findData(base))
                self._update_choices()
        self.blind_check.blockSignals(True)
        self.blind_check.setChecked(False)
        self.blind_check.blockSignals(False)
        self.blind = False
        while len(self.panes) > max(MIN_PANES, len(ids)):
            self.remove_pane()
        while len(self.panes) < len(ids):
            self.add_pane()
        for pane, ref in zip(self.panes, ids, strict=False):
            pane.set_binding(PaneBinding(ref))
        self.tabs.setCurrentIndex(0)
        self.prompt_edit.setFocus()
        self.prompt_sets.choose_sides(ids[0], ids[1])
        if blind:
            self.set_blind(True)
        else:
            self.new_chat()

    def _entry(self, ref: str):
        for entry in self.entries:
            if ref in (entry.id, entry.name):
                return entry
        raise StudioError(f"No adapter {ref!r} is in the library.")

    # ------------------------------------------------------------ voting

    def _update_vote_bar(self) -> None:
        panes = self.panes
        answered = len(panes) == 2 and all(p.last_finished is not None for p in panes) and not self.engine_job
        refs = [p.binding() for p in panes]
        why = ""
        if len(panes) != 2:
            why = "Votes compare exactly two panes."
        elif any(b.is_blend for b in refs):
            why = "A live blend cannot be rated; bake it in the Blend panel first."
        elif refs[0].ref == refs[1].ref:
            why = "Both panes answer with the same adapter."
        elif self.voted:
            why = "Voted; ask another question to vote again."
        self.vote_bar.set_open(answered and not why, why)

    def vote(self, choice: str) -> None:
        """Record A, B, tie or both_bad for the latest answers; in blind mode, reveal the names."""
        a_pane, b_pane = self.panes[0], self.panes[1]
        a, b = a_pane.binding().ref, b_pane.binding().ref
        assignment = {"A": a, "B": b}
        self.records.add_vote(self.base_key(), self.last_prompt, a, b, winner_code(choice, assignment, a, b),
                              blind=self.blind, session_id=self.session_id, answer_a=a_pane.answer,
                              answer_b=b_pane.answer, settings=self.settings_bar.values())
        self.voted, self.revealed = True, True
        if self.session_id:
            self.records.update_session(self.session_id, settings=self._session_settings())
        self.vote_bar.show_result(f"Saved: {dict(VOTES)[choice]}. A was {a_pane.display_name()}, B was {b_pane.display_name()}.")
        self._retitle()
        self.changes.announce(Changes(votes_cast=1))

    # ------------------------------------------------------------ sessions and transcripts

    def open_session(self, session_id: str) -> None:
        if self.engine_job:
            return
        session = self.records.session(session_id)
        if self.base_combo.findData(session.base) >= 0:
            self.base_combo.setCurrentIndex(self.base_combo.findData(session.base))
            self._update_choices()
        self.settings_bar.set_values(session.settings)
        self.blind = bool(session.settings.get("blind"))
        self.blind_check.blockSignals(True)
        self.blind_check.setChecked(self.blind)
        self.blind_check.blockSignals(False)
        while len(self.panes) > max(MIN_PANES, len(session.panes)):
            self.remove_pane()
        while len(self.panes) < len(session.panes):
            self.add_pane()
        self.new_chat()
        self.session_id = session.id
        self.assignment = dict(session.settings.get("assignment") or {})
        self.revealed = bool(session.settings.get("revealed"))
        self.voted = self.revealed
        for i, (pane, spec) in enumerate(zip(self.panes, session.panes, strict=False)):
            pane.set_binding(PaneBinding.from_dict(spec))
            pane.conversation = self.records.conversation(session.id, i)
            pane.render()
        self.last_prompt = next((m["content"] for m in reversed(self.panes[0].conversation)
                                 if m["role"] == "user"), "")
        self._retitle()
        self.tabs.setCurrentIndex(0)

    def transcripts(self) -> list[PaneTranscript]:
        hidden = self.blind and not self.revealed
        out = []
        for i, pane in enumerate(self.panes):
            letter = chr(ord("A") + i)
            label = letter if hidden else f"{letter}: {pane.display_name()}"
            adapter = "" if hidden else (pane.binding().ref if not pane.binding().is_blend else "blend")
            out.append(PaneTranscript(label, adapter, [dict(m) for m in pane.conversation]))
        return out

    def transcript(self, fmt: str = "md") -> str:
        make = transcript_json if fmt == "json" else transcript_markdown
        return make(self.base_id(), self.settings_bar.values(), self.transcripts(),
                    blind=self.blind and not self.revealed)

    def copy_transcript(self) -> None:
        QApplication.clipboard().setText(self.transcript("md"))
        self.status.setText("Transcript copied as Markdown.")

    def export_transcript(self, path: Path | str | None = None) -> Path | None:
        """Write the transcript; .json gives JSON, anything else Markdown. Asks for a path when none."""
        if path is None:
            chosen, _ = QFileDialog.getSaveFileName(self, "Export transcript", "chat.md",
                                                    "Markdown (*.md);;JSON (*.json)")
            if not chosen:
                return None
            path = chosen
        path = Path(path)
        write_text(path, self.transcript("json" if path.suffix.lower() == ".json" else "md"))
        self.status.setText(f"Transcript saved to {path}.")
        return path
