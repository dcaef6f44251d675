"""Render studio screens offscreen with real content and save them as PNGs for the README.

    .venv/bin/python scripts/take_screenshots.py                  # every screen, into docs/screenshots/
    .venv/bin/python scripts/take_screenshots.py --only run_browser --out /tmp/shots
    .venv/bin/python scripts/take_screenshots.py --base default   # the real SmolLM2 (converted if needed)

Everything happens in a temporary LORA_STUDIO_HOME with isolated QSettings: the user's data and
settings are never touched. The base model is the default one when it is already converted in the
user's data directory (`--base auto`), otherwise a tiny random model (`--base tiny`); the runs shown
are real training runs on it. Each screen is one function registered with `@screen(name)` that gets
a Shot (the data directory, the base, wait and save helpers, and the runs made so far, so a later
screen reuses an earlier one's run); add a screen by writing another such function.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PySide6.QtCore import QSettings, QThreadPool  # noqa: E402
from PySide6.QtWidgets import QApplication, QWidget  # noqa: E402

if TYPE_CHECKING:
    from studio.core.paths import DataDir

log = logging.getLogger("screenshots")
SIZE = (1280, 800)
SCREENS: dict[str, Callable[[Shot], None]] = {}


def screen(name: str) -> Callable[[Callable[[Shot], None]], Callable[[Shot], None]]:
    """Register a function that renders and saves the screenshot `name`.png."""
    def register(func: Callable[[Shot], None]) -> Callable[[Shot], None]:
        SCREENS[name] = func
        return func
    return register


@dataclass
class Shot:
    """What a screen function needs: the data directory, the base model and a few helpers."""

    app: QApplication
    data: DataDir
    base: str
    out: Path
    steps: int
    runs: dict[str, str] = field(default_factory=dict)  # role -> run id, made by earlier screens
    saved: list[Path] = field(default_factory=list)

    def wait(self, condition: Callable[[], bool], what: str, timeout_s: float = 600) -> None:
        """Process events until `condition()` holds (the GUI keeps running while workers work)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            self.app.processEvents()
            time.sleep(0.02)

    def settle(self, seconds: float = 0.4) -> None:
        """Let timers (chart redraws) and layouts run."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.app.processEvents()
            time.sleep(0.02)

    def show(self, widget: QWidget) -> QWidget:
        widget.resize(*SIZE)
        widget.show()
        self.settle(0.2)
        return widget

    def save(self, widget: QWidget, name: str) -> Path:
        self.settle()
        path = self.out / f"{name}.png"
        if not widget.grab().save(str(path)):
            raise OSError(f"could not write {path}")
        self.saved.append(path)
        log.info("saved %s", path)
        return path

    def close(self, widget: QWidget) -> None:
        """Close a screen once its background jobs are done (none may outlive it)."""
        self.wait(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, "background jobs")
        shutdown = getattr(widget, "shutdown", None)
        if shutdown is not None:
            shutdown()
        widget.close()
        widget.deleteLater()
        self.settle(0.1)


# ---------------------------------------------------------------- runs shared by screens

def train(shot: Shot, config, stop_after: int = 0) -> str:
    """A real run on the GUI thread (no window is up while it trains); returns its run id."""
    from studio.core.train import events as ev
    from studio.ml.train.run import run_training

    steps: list[int] = []

    def on_event(event) -> None:
        if isinstance(event, ev.Step):
            steps.append(event.step)

    result = run_training(config, shot.data, on_event=on_event,
                          should_stop=lambda: bool(stop_after) and len(steps) >= stop_after)
    if result.status not in ("finished", "stopped"):
        raise RuntimeError(f"the run failed: {result.message}")
    log.info("run %s: %s at step %d", result.run_id, result.status, result.step)
    return result.run_id


def demo_run_config(shot: Shot, **overrides):
    """The first-run demo's settings on the sample dataset, shortened to `shot.steps`."""
    from studio.core.train.demo import demo_config

    every = max(1, shot.steps // 6)
    config = demo_config("cpu", steps=shot.steps, base=shot.base)
    config = config.replace(eval_every=every, sample_every=every, checkpoint_every=max(1, shot.steps // 3),
                            memory_every=1, device="cpu")
    return config.replace(**overrides) if overrides else config


# ---------------------------------------------------------------- screens

def _wizard(shot: Shot):
    from studio.core.train.demo import SAMPLE_DATASET
    from studio.gui.train.wizard import TrainWizard

    wizard = TrainWizard(shot.data, base=shot.base, folder=SAMPLE_DATASET)
    shot.show(wizard)
    page = wizard.data_page
    shot.wait(lambda: page.isComplete() and not page.rendering and bool(page.rendered), "the scan and samples")
    return wizard


@screen("train_wizard_data")
def wizard_data(shot: Shot) -> None:
    wizard = _wizard(shot)
    page = wizard.data_page
    # A chat sample: its answer is highlighted as trained.
    chat = next((i for i, s in enumerate(page.rendered) if s.trained and s.source.endswith(".jsonl:1")), 0)
    page.show_sample(chat)
    shot.save(wizard, "train_wizard_data")
    shot.close(wizard)


@screen("train_wizard_settings")
def wizard_settings(shot: Shot) -> None:
    wizard = _wizard(shot)
    wizard.next()
    page = wizard.settings_page
    shot.wait(lambda: page.device.detected and page.last is not None, "the device and the estimate")
    shot.wait(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, "the list of base models")
    page.preset_buttons["knowledge"].setChecked(True)  # rank 64 on the dial
    page.advanced_button.click()  # the whole page: the advanced settings open
    shot.save(wizard, "train_wizard_settings")
    shot.close(wizard)


@screen("train_dashboard")
def dashboard(shot: Shot) -> None:
    from studio.gui.changes import ChangeNotifier
    from studio.gui.train.panel import TrainPanel

    panel = shot.show(TrainPanel(shot.data, ChangeNotifier()))
    shot.wait(lambda: panel.browser.runs is not None, "the run list")
    results: list = []
    panel.run_finished.connect(results.append)
    panel.start_run(demo_run_config(shot, tags=("demo",)))
    shot.wait(lambda: bool(results), "the training run", timeout_s=3600)
    if results[0].status != "finished":
        raise RuntimeError(f"the dashboard's run ended {results[0].status}: {results[0].message}")
    shot.runs["demo"] = results[0].run_id
    shot.wait(lambda: not panel.browser.busy(), "the run list")
    shot.save(panel, "train_dashboard")
    shot.close(panel)


@screen("run_browser")
def run_browser(shot: Shot) -> None:
    from studio.gui.changes import ChangeNotifier
    from studio.gui.train.panel import TrainPanel

    if "demo" not in shot.runs:
        shot.runs["demo"] = train(shot, demo_run_config(shot))
    # A second run with other settings to compare, and a paused one (resumable).
    shot.runs["attention"] = train(shot, demo_run_config(
        shot, adapter_name="Vellmar facts, attention only", rank=8, alpha=16.0, targets="attention",
        learning_rate=5e-4))
    shot.runs["paused"] = train(shot, demo_run_config(shot, adapter_name="Vellmar facts, rank 64", rank=64,
                                                      alpha=128.0), stop_after=max(2, shot.steps // 3))
    panel = shot.show(TrainPanel(shot.data, ChangeNotifier()))
    shot.wait(lambda: panel.browser.runs is not None and not panel.browser.busy(), "the run list")
    panel.tabs.setCurrentWidget(panel.browser)
    panel.browser.select([shot.runs["demo"], shot.runs["attention"]])
    shot.save(panel, "run_browser")
    shot.close(panel)


# ---------------------------------------------------------------- set-up

@screen("welcome")
def welcome(shot: Shot) -> None:
    """The first start: the machine report, the default model, the route to a bigger base."""
    from studio.gui.main_window import WELCOME_DONE_KEY, MainWindow

    QSettings().setValue(WELCOME_DONE_KEY, False)
    window = shot.show(MainWindow(shot.data))
    page = window.welcome
    shot.wait(lambda: window.device_kind != "" and "…" not in page.machine_label.text(), "the machine report")
    shot.save(window, "welcome")
    window.close_welcome()
    shot.close(window)


@screen("trash_and_error")
def trash_and_error(shot: Shot) -> None:
    """The trash dialog with a deleted adapter, and the error box a broken import gets."""
    from PySide6.QtWidgets import QMessageBox

    from studio.core.library.store import AdapterLibrary
    from studio.gui.changes import ChangeNotifier
    from studio.gui.library.panel import LibraryPanel
    from tests.tiny_model import make_tiny_adapter

    base_dir = shot.data.models / shot.base
    library = AdapterLibrary(shot.data)
    for name, seed in (("pirate voice", 1), ("sea shanty facts", 2)):
        library.import_path(make_tiny_adapter(base_dir, shot.data.root / "made" / name, base_name=shot.base, seed=seed), name=name)
    panel = shot.show(LibraryPanel(shot.data, ChangeNotifier()))
    shot.wait(lambda: panel.table.rowCount() == len(library.list()) >= 2, "the library")
    panel.select(library.get("sea shanty facts").id)
    panel.delete_selected()
    shot.wait(lambda: panel.table.rowCount() == len(library.list()), "the delete")
    dialog = panel.open_trash()
    shot.save(dialog, "trash")
    dialog.close()
    broken = shot.data.root / "holiday-photos"
    broken.mkdir()
    (broken / "beach.jpg").write_bytes(b"\xff\xd8\xff")
    panel.import_path(broken)
    shot.wait(lambda: any(isinstance(w, QMessageBox) and w.isVisible() for w in shot.app.topLevelWidgets()),
              "the error box")
    box = next(w for w in shot.app.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible())
    shot.save(box, "error_dialog")
    box.close()
    shot.close(panel)


@screen("settings_dialog")
def settings_dialog(shot: Shot) -> None:
    from studio.gui.settings_dialog import SettingsDialog

    dialog = SettingsDialog()
    dialog.show()
    shot.save(dialog, "settings_dialog")
    dialog.close()


def prepare_base(data, choice: str, user_home: Path) -> str:
    """Put the base model in the temporary data directory; returns its id."""
    from studio.core.basemodels import DEFAULT_BASE_ID
    from studio.ml.base.default_model import DONE_MARKER, ensure_default_model

    converted = user_home / "models" / DEFAULT_BASE_ID
    if choice == "auto":
        choice = "default" if (converted / DONE_MARKER).exists() else "tiny"
    if choice == "default":
        if (converted / DONE_MARKER).exists():
            (data.models / DEFAULT_BASE_ID).symlink_to(converted, target_is_directory=True)
        else:
            log.info("converting the default model (once, into the temporary data directory)…")
            ensure_default_model(data)
        return DEFAULT_BASE_ID
    from tests.tiny_model import make_tiny_base

    make_tiny_base(data.models / "tiny-llama", hidden_size=64, layers=2)
    return "tiny-llama"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(SCREENS), help="the screens to render (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--base", choices=["auto", "tiny", "default"], default="auto")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the runs shown")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from studio.core.paths import data_dir, default_home

    user_home = Path(os.environ.get("LORA_STUDIO_HOME") or default_home())
    temp = Path(tempfile.mkdtemp(prefix="lora-studio-shots-"))
    os.environ["LORA_STUDIO_HOME"] = str(temp / "home")
    app = QApplication.instance() or QApplication([sys.argv[0]])
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(temp / "settings"))
    app.setOrganizationName("LoRA Studio Screenshots")
    app.setApplicationName("LoRA Studio Screenshots")
    from studio.gui.settings_dialog import BASE_MODEL_KEY, apply_theme

    apply_theme(app, "light")
    data = data_dir(temp / "home")
    base = prepare_base(data, args.base, user_home)
    QSettings().setValue(BASE_MODEL_KEY, base)
    args.out.mkdir(parents=True, exist_ok=True)
    shot = Shot(app=app, data=data, base=base, out=args.out, steps=args.steps)
    log.info("data directory %s, base %s", data.root, base)
    try:
        for name in args.only or list(SCREENS):
            started = time.monotonic()
            SCREENS[name](shot)
            log.info("%s done in %.0f s", name, time.monotonic() - started)
    finally:
        if args.keep:
            log.info("kept %s", temp)
        else:
            shutil.rmtree(temp, ignore_errors=True)
    print("\n".join(str(p) for p in shot.saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
