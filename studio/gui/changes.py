"""The app-wide notice of what changed, the watch on the data directory, and a panel's reload job.

`ChangeNotifier` is the one QObject the main window owns and hands to every panel: an operation
calls `announce(Changes(...))` once when it is done, and every screen that shows what changed
refreshes from the `changed` signal. `DataDirWatcher` turns what another process (the CLI) did to the
data directory into the same notice: it watches adapters/ and each adapter's folder (a rename rewrites
the studio.json inside it), trash/, runs/ and models/ (debounced), and takes another look when the
application becomes active again; what the app announced itself is not announced twice, and what
another process did meanwhile is still announced. `Reload` runs a panel's reading in a worker, one at
a time, so that a burst of notices ends in one up-to-date view and an older reading never paints over
a newer one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QFileSystemWatcher, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication

from studio.core.changes import Changes, DiskState
from studio.core.paths import DataDir
from studio.gui.workers import start_job

log = logging.getLogger(__name__)
DEBOUNCE_MS = 300  # a copy or a training run's save touches a folder many times in a row


class ChangeNotifier(QObject):
    """`changed(Changes)` once per operation that changed what the user owns."""

    changed = Signal(object)

    def announce(self, changes: Changes) -> None:
        if changes:
            log.debug("Announcing %s", changes)
            self.changed.emit(changes)


class DataDirWatcher(QObject):
    """Announces what another process changed in the data directory (see the module docstring)."""

    def __init__(self, data: DataDir, notifier: ChangeNotifier, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.data, self.notifier = data, notifier
        self.seen = DiskState.read(data)
        self.unannounced = Changes()  # seen on disk when the app announced something else, not yet told
        self._announcing = False
        self.timer = QTimer(self, singleShot=True, interval=DEBOUNCE_MS)
        self.timer.timeout.connect(self.look)
        self.folders = [data.adapters, data.trash, data.runs, data.models]
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
        self.stopped = False
        self.fs = QFileSystemWatcher([str(f) for f in self.folders], self)
        self.fs.directoryChanged.connect(lambda _path: self.timer.start())
        self._watch_adapter_folders()
        notifier.changed.connect(self._announced)
        app = QGuiApplication.instance()
        self._listening = isinstance(app, QGuiApplication)
        if self._listening:
            app.applicationStateChanged.connect(self._state_changed)

    def _state_changed(self, state: Qt.ApplicationState) -> None:
        if state == Qt.ApplicationState.ApplicationActive and not self.stopped:
            self.timer.start()  # the user may have used the CLI meanwhile

    def _watch_adapter_folders(self) -> None:
        """Watch each adapter's own folder as well: a rename or a tag replaces the studio.json inside it,
        which changes nothing in adapters/ itself."""
        wanted = {str(f) for f in self.data.adapters.iterdir() if f.is_dir() and not f.name.startswith(".")}
        watched = set(self.fs.directories()) - {str(f) for f in self.folders}
        if wanted - watched:
            self.fs.addPaths(sorted(wanted - watched))
        if watched - wanted:
            self.fs.removePaths(sorted(watched - wanted))

    def _announced(self, changes: Changes) -> None:
        """The app said what it did: that is on disk now and is no news when the folder event comes. What
        else changed since the last look (the CLI, meanwhile) is kept for the next look to announce."""
        if not self._announcing:
            now = DiskState.read(self.data)
            self.unannounced |= now.changes_since(self.seen).without(changes)
            self.seen = now
            if changes.adapters and not self.stopped:
                self._watch_adapter_folders()
            if self.unannounced:
                self.timer.start()

    def look(self) -> Changes:
        """Compare the data directory with the last look; announce what differs. Returns it (for tests)."""
        now = DiskState.read(self.data)
        changes = self.unannounced | now.changes_since(self.seen)
        self.seen, self.unannounced = now, Changes()
        if changes.adapters and not self.stopped:
            self._watch_adapter_folders()
        self._announcing = True
        try:
            self.notifier.announce(changes)
        finally:
            self._announcing = False
        return changes

    def stop(self) -> None:
        """No more looks (the window closes); stopping twice is harmless."""
        self.stopped = True
        self.timer.stop()
        if self.fs.directories():
            self.fs.removePaths(self.fs.directories())
        app = QGuiApplication.instance()
        if isinstance(app, QGuiApplication) and self._listening:
            self._listening = False
            app.applicationStateChanged.disconnect(self._state_changed)


class Reload:
    """A panel's reading job: `start()` reads in a worker and hands the result to `show` on the GUI thread.
    A start while a reading runs asks for one more after it; only the newest reading is shown."""

    def __init__(self, parent: QObject, read: Callable[[], Any], show: Callable[[Any], None],
                 on_error: Callable[[BaseException, str], None]) -> None:
        self.parent, self.read, self.show, self.on_error = parent, read, show, on_error
        self.running = False
        self.again = False

    def start(self) -> None:
        if self.running:
            self.again = True
            return
        self.running, self.again = True, False
        start_job(lambda emit: self.read(), on_done=self._done, on_error=self._failed, parent=self.parent)

    def _done(self, result: Any) -> None:
        self.running = False
        if self.again:  # stale: what changed meanwhile is not in it
            self.start()
            return
        self.show(result)

    def _failed(self, err: BaseException, details: str) -> None:
        self.running = False
        if self.again:
            self.start()
            return
        self.on_error(err, details)
