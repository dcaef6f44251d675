"""The welcome page shows the default model's first conversion and a base model download as they
go, from the StageProgress events of studio.core.progress, and announces each base model it adds."""

from __future__ import annotations

from pathlib import Path

from studio.core.progress import StageProgress


def test_the_conversion_and_a_download_report_through_the_progress_events(qtbot, studio_home, tiny_base_dir,
                                                                          monkeypatch, changes):
    import huggingface_hub

    from studio.gui.welcome import WelcomePage
    from studio.ml.base import default_model
    from tests.core.test_basemodels import FakeHub

    def convert(data, progress=None):  # the conversion itself: tests/e2e/test_default_model.py
        progress(StageProgress("convert", 0.4, "Dequantizing the weights…"))
        return tiny_base_dir

    monkeypatch.setattr(default_model, "ensure_default_model", convert)
    page = WelcomePage(studio_home, changes)
    qtbot.addWidget(page)
    added: list[set[str]] = []
    changes.changed.connect(lambda notice: added.append(set(notice.base_models_added)))
    values: list[int] = []
    page.model_progress.valueChanged.connect(values.append)
    with qtbot.waitSignal(page.default_model_ready, timeout=30_000) as ready:
        page.prepare_default_model()
    assert ready.args == [Path(tiny_base_dir)] and values == [40, 100]
    assert added == [{tiny_base_dir.name}]

    hub = FakeHub(tiny_base_dir)
    monkeypatch.setattr(huggingface_hub, "model_info", hub.model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    monkeypatch.setattr("PySide6.QtWidgets.QInputDialog.getText", lambda *args, **kwargs: ("someone/tiny-chat", True))
    shown: list[str] = []
    page.bigger_status.setText = shown.append  # every line the page shows, in order
    with qtbot.waitSignal(page.base_model_chosen, timeout=30_000):
        page.ask_download()
    assert shown[0] == "Downloading someone/tiny-chat…" and shown[-1] == "Downloaded someone/tiny-chat."
    assert any(line.endswith("files") for line in shown)
    assert added[1:] == [{"someone--tiny-chat"}]  # its folder in models/
