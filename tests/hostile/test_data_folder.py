"""The data-folder reader attacked as a hostile or unlucky user would: huge files, pipes, devices,
links out of the folder and in loops, unreadable folders, JSON that breaks Python's parser.

Every case builds its folder in a tmp folder and checks two things: the scan (and the tokenizing
step) finishes in bounded time and memory, and the report names every path with a reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import tracemalloc
from pathlib import Path

import pytest

from studio.core.dataset import DEFAULT_MAX_FILE_MB, DataReport, FileReport, prepare_dataset, scan_folder
from studio.core.dataset.files import ReadLimits, read_limited
from studio.core.errors import StudioError

REPO = Path(__file__).resolve().parents[2]
CHAT = {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."}]}
posix_only = pytest.mark.skipif(os.name != "posix", reason="FIFOs, devices and chmod are POSIX")


def _chat(n: int, tag: str) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"{tag} question {i}"},
                                            {"role": "assistant", "content": f"{tag} answer {i}"}]}) + "\n"
                   for i in range(n))


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _scan_in_thread(folder: Path, timeout: float = 30.0, **kwargs) -> DataReport:
    """scan_folder, failing the test (instead of hanging it) when the scan blocks."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(scan=scan_folder(folder, **kwargs)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the scan of {folder} did not finish in {timeout} s (blocked on a file?)"
    return result["scan"].report


def _entry(report: DataReport, path: str) -> FileReport:
    try:
        return report.file(path)
    except KeyError:
        raise AssertionError(f"{path} is missing from the report: {[f.path for f in report.files]}") from None


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base_dir)


# --- size -----------------------------------------------------------------------------------------


def test_a_huge_file_is_reported_with_its_size_and_never_read(tmp_path: Path):
    folder = tmp_path / "data"
    _write(folder / "ok.jsonl", _chat(3, "ok"))
    with open(folder / "huge.txt", "wb") as f:
        f.truncate(20 * 10**9)  # sparse: 20 GB to the filesystem, nothing on disk
    tracemalloc.start()
    report = _scan_in_thread(folder)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * 10**6, f"the scan held {peak:,} bytes"
    huge = _entry(report, "huge.txt")
    assert not huge.used and huge.samples == 0
    assert "too large" in huge.error and "20,000 MB" in huge.error and "64 MB per file" in huge.error
    assert "--max-file-mb" in huge.error and "Split it" in huge.error
    assert report.file("ok.jsonl").samples == 3
    assert report.to_dict()["limits"] == {"max_file_bytes": 64 * 10**6, "max_total_bytes": 256 * 10**6}


def test_the_size_limit_is_the_callers_to_raise(tmp_path: Path, tokenizer):
    folder = tmp_path / "data"
    _write(folder / "book.txt", "A line of a long book about foxes and dogs.\n\n" * 70_000)  # 3.15 MB
    small = scan_folder(folder, max_file_mb=1)
    assert small.samples == [] and "3.1 MB, over the limit of 1.0 MB per file" in small.report.file("book.txt").error
    assert small.report.file("book.txt").size == 3_150_000
    raised = scan_folder(folder, max_file_mb=4)
    assert raised.report.file("book.txt").used and raised.report.file("book.txt").size == 3_150_000
    prepared = prepare_dataset(folder, tokenizer, seq_len=512, val_fraction=0, max_file_mb=4)
    assert prepared.report.file("book.txt").tokens > 100_000
    with pytest.raises(StudioError, match="positive number of MB"):
        scan_folder(folder, max_file_mb=0)


def test_a_scan_holds_a_bounded_total_and_reports_the_files_past_it(tmp_path: Path):
    folder = tmp_path / "data"
    for index in range(6):  # 6 x ~40 kB with a 50 kB per-file limit: the total stops at 200 kB
        _write(folder / f"part{index}.jsonl", _chat(400, f"part{index}"))
    report = scan_folder(folder, max_file_mb=0.05).report
    read = [f for f in report.files if f.used]
    refused = [f for f in report.files if not f.used]
    assert [f.path for f in read] == ["part0.jsonl", "part1.jsonl", "part2.jsonl", "part3.jsonl"]
    assert sum(f.size for f in read) <= 200_000
    assert [f.path for f in refused] == ["part4.jsonl", "part5.jsonl"]
    assert all("more than 200 kB of files in all" in f.error and "Move some files out" in f.error for f in refused)


def test_read_limited_stops_one_byte_over_the_limit(tmp_path: Path):
    big = _write(tmp_path / "big.txt", b"x" * 5000)
    limits = ReadLimits(max_file_bytes=4999, max_total_bytes=10**6)
    assert "over the limit" in read_limited(big, limits, limits.max_total_bytes).error
    assert read_limited(big, ReadLimits(5000, 10**6), 10**6).data == b"x" * 5000


_MEASURE = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from transformers import AutoTokenizer
    from studio.core.dataset import prepare_dataset
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
    tokenizer("warm up the tokenizer")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    prepared = prepare_dataset(Path(sys.argv[1]), tokenizer, seq_len=256, val_fraction=0)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_bytes": (after - before) * 1024, "tokens": sum(len(s) for s in prepared.train)}))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kB on Linux")
def test_tokenizing_a_big_paragraph_costs_its_tokens_and_no_more(tmp_path: Path, tiny_base_dir: Path):
    """One 2.7 MB paragraph (no blank line anywhere). Handed to the tokenizer whole and cut into
    windows by slicing the rest each time, it took 580 MB and 26 s; in chunks, ~80 MB and 4 s."""
    import random

    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "capital", "france", "paris"]
    _write(tmp_path / "data" / "one.txt", " ".join(rng.choice(words) for _ in range(500_000)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "data"), str(tiny_base_dir)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["tokens"] > 600_000
    # Two lists of ints per kept token (ids and labels) cost ~44 bytes a token; allow a bit over twice that.
    assert measured["grew_bytes"] < 100 * measured["tokens"], measured


# --- what is not an ordinary file ---------------------------------------------------------------------


@posix_only
def test_a_fifo_is_reported_and_does_not_block_the_scan(tmp_path: Path):
    folder = tmp_path / "data"
    _write(folder / "ok.jsonl", _chat(2, "ok"))
    os.mkfifo(folder / "stream.jsonl")
    report = _scan_in_thread(folder)
    assert "named pipe (FIFO)" in _entry(report, "stream.jsonl").error
    assert "ordinary files" in report.file("stream.jsonl").error
    assert report.file("ok.jsonl").samples == 2


@posix_only
def test_devices_are_refused_even_when_reached_after_the_walk(tmp_path: Path):
    folder = tmp_path / "data"
    _write(folder / "ok.jsonl", _chat(2, "ok"))
    (folder / "zeros.txt").symlink_to("/dev/zero")
    report = _scan_in_thread(folder)
    assert "outside the dataset folder (/dev/zero)" in _entry(report, "zeros.txt").error
    # The second line of defence: whatever the walk saw, only an ordinary file is ever read.
    assert "a device" in read_limited(Path("/dev/zero"), ReadLimits.from_mb(), 10**9).error


# --- links ------------------------------------------------------------------------------------------


@posix_only
def test_links_out_of_the_folder_are_reported_not_trained_on(tmp_path: Path):
    outside = tmp_path / "elsewhere"
    _write(outside / "secret.jsonl", _chat(1, "secret"))
    _write(outside / "more" / "extra.jsonl", _chat(120, "extra"))
    folder = tmp_path / "data"
    _write(folder / "ok.jsonl", _chat(2, "ok"))
    (folder / "secret.jsonl").symlink_to(outside / "secret.jsonl")
    (folder / "more").symlink_to(outside / "more")
    scan = _scan_in_thread(folder).to_dict()
    by_path = {f["path"]: f for f in scan["files"]}
    assert "outside the dataset folder" in by_path["secret.jsonl"]["error"]
    assert "Copy the file into the dataset folder" in by_path["secret.jsonl"]["error"]
    assert by_path["more/"]["kind"] == "folder" and "outside the dataset folder" in by_path["more/"]["error"]
    assert scan["totals"]["samples"] == 2 and scan["totals"]["folders_not_read"] == 1
    assert not any("secret" in s.messages[0].content for s in scan_folder(folder).samples)


@posix_only
def test_links_inside_the_folder_are_read_once(tmp_path: Path):
    folder = tmp_path / "data"
    _write(folder / "real" / "chats.jsonl", _chat(120, "real"))
    _write(folder / ".stash" / "kept.jsonl", _chat(120, "stash"))
    (folder / "alias").symlink_to("real")  # the same folder again: read at its own place only
    (folder / "copy.jsonl").symlink_to("real/chats.jsonl")
    (folder / "stash").symlink_to(".stash")  # a hidden folder made visible on purpose: followed once
    (folder / "stash-again").symlink_to(".stash")
    report = _scan_in_thread(folder)
    assert report.total_samples == 240
    assert report.file("real/chats.jsonl").samples == 120
    followed = report.file("stash/kept.jsonl")
    assert followed.samples == 120 and followed.notes == ["read through the link stash -> .stash"]
    assert "link to a folder already read as real/: not read twice" in _entry(report, "alias/").error
    assert "the same file as real/chats.jsonl, already read" in _entry(report, "copy.jsonl").error
    assert "link to a folder already read as stash/" in _entry(report, "stash-again/").error
    (tmp_path / "data-link").symlink_to(folder)  # the folder itself through a link: the same report
    assert [f.to_dict() for f in scan_folder(tmp_path / "data-link").report.files] == [f.to_dict() for f in report.files]


@posix_only
def test_link_loops_and_broken_links_are_reported(tmp_path: Path):
    folder = tmp_path / "data"
    _write(folder / "sub" / "ok.jsonl", _chat(2, "ok"))
    (folder / "sub" / "back").symlink_to("..")
    (folder / "self.jsonl").symlink_to("self.jsonl")
    (folder / "gone.jsonl").symlink_to("missing.jsonl")
    report = _scan_in_thread(folder)
    assert "link loop" in _entry(report, "sub/back/").error and "contains the link" in report.file("sub/back/").error
    assert "link loop" in _entry(report, "self.jsonl").error
    assert "broken link" in _entry(report, "gone.jsonl").error and "missing.jsonl" in report.file("gone.jsonl").error
    assert report.total_samples == 2
    assert "sub/back/" in report.to_text() and "1 folder(s) not read" in report.to_text()


# --- unreadable folders -----------------------------------------------------------------------------


_SCAN_AS_NOBODY = "import json, sys; from studio.core.dataset import scan_folder; " \
                  "print(json.dumps(scan_folder(sys.argv[1]).report.to_dict()))"


@posix_only
def test_an_unreadable_folder_is_reported(tmp_path: Path):
    """chmod 000 does not stop root; as root, the scan runs in a child process as user nobody."""
    base = Path(tempfile.mkdtemp(prefix="hostile-"))  # not under pytest's 0700 tmp folders, for nobody
    try:
        folder = base / "data"
        _write(folder / "ok.jsonl", _chat(2, "ok"))
        _write(folder / "locked" / "hidden.jsonl", _chat(5, "locked"))
        os.chmod(base, 0o755)
        for path in (folder, folder / "ok.jsonl"):
            os.chmod(path, 0o755)
        os.chmod(folder / "locked", 0)
        if os.geteuid() != 0:
            report = scan_folder(folder).report.to_dict()
        else:
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            done = subprocess.run([sys.executable, "-c", _SCAN_AS_NOBODY, str(folder)], user=65534, group=65534,
                                  capture_output=True, text=True, env=env, timeout=120)
            if done.returncode != 0:
                pytest.skip(f"running as root and user nobody cannot run the studio here: {done.stderr[-300:]}")
            report = json.loads(done.stdout)
        locked = {f["path"]: f for f in report["files"]}["locked/"]
        assert locked["kind"] == "folder" and "unreadable folder (permission denied)" in locked["error"]
        assert "chmod" in locked["error"]
        assert report["totals"]["samples"] == 2
    finally:
        os.chmod(base / "data" / "locked", 0o755)
        shutil.rmtree(base)


# --- malformed files --------------------------------------------------------------------------------


def test_json_that_breaks_pythons_parser_is_skipped_not_fatal(tmp_path: Path, tokenizer):
    folder = tmp_path / "data"
    _write(folder / "deep.json", "[" * 100_000 + "]" * 100_000)
    _write(folder / "lines.jsonl", _chat(2, "ok") + "[" * 100_000 + "\n" + '{"text": ' + "7" * 5000 + "}\n")
    _write(folder / "number.json", '{"text": ' + "1" * 5000 + "}")
    report = _scan_in_thread(folder)
    assert "nested too deeply" in report.file("deep.json").error
    assert "a number with more than 4,300 digits" in report.file("number.json").error
    lines = report.file("lines.jsonl")
    assert lines.samples == 2
    assert [(s.line, s.reason.split(": ", 1)[1]) for s in lines.skipped] == [
        (3, "nested too deeply (more than about 1,000 levels of [ ] or { }) (column 1)"),
        (4, "a number with more than 4,300 digits (column 10)")]
    prepared = prepare_dataset(folder, tokenizer, seq_len=64, val_fraction=0)  # no RecursionError
    assert len(prepared.train) == 2


def test_a_lone_surrogate_is_a_skipped_record_not_a_failed_run(tmp_path: Path, tokenizer):
    folder = tmp_path / "data"
    bad = '{"messages": [{"role": "user", "content": "hi \\ud800"}, {"role": "assistant", "content": "ok"}]}\n'
    _write(folder / "chats.jsonl", bad + _chat(1, "ok"))
    prepared = prepare_dataset(folder, tokenizer, seq_len=64, val_fraction=0)
    skipped = prepared.report.file("chats.jsonl").skipped
    assert [(s.line, "lone surrogate (\\ud800 in the JSON)" in s.reason) for s in skipped] == [(1, True)]
    assert len(prepared.train) == 1


# --- the front door ---------------------------------------------------------------------------------


@posix_only
def test_lora_studio_scan_json_shows_every_reason(tmp_path: Path):
    folder = tmp_path / "data"
    _write(folder / "ok.jsonl", _chat(2, "ok"))
    _write(folder / "deep.json", "[" * 100_000 + "]" * 100_000)
    _write(tmp_path / "elsewhere.jsonl", _chat(1, "secret"))
    (folder / "outside.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    os.mkfifo(folder / "pipe.txt")
    (folder / "loop").symlink_to(".")
    _write(folder / "book.txt", "words " * 200_000)  # 1.2 MB, over --max-file-mb 1
    env = {**os.environ, "PYTHONPATH": str(REPO), "LORA_STUDIO_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "studio", "scan", str(folder), "--json", "--no-tokenizer",
                           "--max-file-mb", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = {f["path"]: f["error"] for f in json.loads(done.stdout)["files"]}
    assert errors["ok.jsonl"] is None
    assert "nested too deeply" in errors["deep.json"]
    assert "outside the dataset folder" in errors["outside.jsonl"]
    assert "named pipe" in errors["pipe.txt"]
    assert "link loop" in errors["loop/"]
    assert "over the limit of 1.0 MB per file" in errors["book.txt"]


def test_a_training_run_takes_the_limit_from_its_config(tmp_path: Path):
    import argparse

    from studio.cli.train_run import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    config = config_from_args(parser.parse_args([str(tmp_path), "--max-file-mb", "300"]))
    assert config.max_file_mb == 300
    assert config_from_args(parser.parse_args([str(tmp_path)])).max_file_mb == DEFAULT_MAX_FILE_MB


def test_a_conversation_of_thousands_of_turns_costs_one_window(tmp_path: Path, tokenizer):
    """Rendering every prefix of 3,000 turns took 40 s for 256 tokens; now the turns past any window
    are cut first, and what is trained is the same as cutting the whole rendering."""
    import time

    from studio.core.dataset.samples import Message, Sample
    from studio.core.dataset.tokenize import ChatRenderer

    def turns(n: int) -> list[dict]:
        return [{"role": role, "content": f"{role} turn {i} about the quick brown fox"}
                for i in range(n) for role in ("user", "assistant")]

    folder = tmp_path / "data"
    _write(folder / "long.jsonl", json.dumps({"messages": turns(1500)}) + "\n"
           + json.dumps({"messages": [{"role": "user", "content": "Summarise."},
                                      {"role": "assistant", "content": "fox " * 2_000_000}]}) + "\n")
    _write(folder / "medium.jsonl", json.dumps({"messages": turns(150)}) + "\n")
    _write(folder / "short.jsonl", json.dumps(CHAT) + "\n")
    started = time.monotonic()
    prepared = prepare_dataset(folder, tokenizer, seq_len=64, val_fraction=0)
    assert time.monotonic() - started < 15
    assert sorted(len(s) for s in prepared.train)[1:] == [64, 64, 64]
    assert prepared.report.file("long.jsonl").truncated == 2

    messages = tuple(Message(t["role"], t["content"]) for t in turns(150))
    whole = ChatRenderer(tokenizer).render_chat(Sample(kind="chat", source="medium.jsonl:1", messages=messages))
    kept = next(s for s in prepared.train if s.source == "medium.jsonl:1")
    assert (kept.input_ids, kept.labels) == (whole.input_ids[:64], whole.labels[:64])
    dropped = prepare_dataset(folder, tokenizer, seq_len=64, val_fraction=0, long_samples="drop",
                              scan=scan_folder(folder))
    reasons = [s.reason for s in dropped.report.file("long.jsonl").skipped]
    assert len(reasons) == 2 and all(r.startswith("longer than the sequence length (") and "+ > 64 tokens), dropped"
                                     in r for r in reasons), reasons
    assert [s.source for s in dropped.train] == ["short.jsonl:1"]


def test_a_folder_nested_past_pythons_recursion_limit_is_walked(tmp_path: Path):
    folder = tmp_path / "data"
    folder.mkdir()
    deep = folder
    for _ in range(1100):  # one os.mkdir at a time: pathlib's and os.makedirs' own recursion would fail
        deep = deep / "d"
        os.mkdir(deep)
    _write(deep / "bottom.jsonl", _chat(1, "deep"))
    _write(folder / "top.jsonl", _chat(1, "top"))
    try:
        report = _scan_in_thread(folder)
        assert report.total_samples == 2 and report.file("d/" * 1100 + "bottom.jsonl").used
    finally:  # and shutil.rmtree (pytest's cleanup) recurses too: take it down level by level
        (deep / "bottom.jsonl").unlink()
        while deep != folder:
            deep.rmdir()
            deep = deep.parent


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_reading_a_big_file_holds_a_few_copies_of_it(tmp_path: Path, encoding: str):
    """A 16 MB cp1252 file held 330 MB at its peak (the encoding guessed from all of it, the duplicate
    check splitting it into a string per word); now a few copies: bytes, text, a guess from 256 kB."""
    import random

    rng = random.Random(1)
    words = ["café", "église", "forêt", "über", "straße", "naïve", "the", "fox", "déjà", "vu"]
    data = " ".join(rng.choice(words) for _ in range(800_000)).encode(encoding)  # ~4.5 MB
    _write(tmp_path / "data" / "legacy.txt", data)
    tracemalloc.start()
    report = scan_folder(tmp_path / "data").report
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.file("legacy.txt").used and report.total_samples == 1  # (word salad: the guess may be cp1257)
    assert peak < 8 * len(data), f"the scan of a {len(data):,}-byte file held {peak:,} bytes"


def test_a_giant_question_is_reported_like_any_sample_longer_than_a_window(tmp_path: Path, tokenizer):
    folder = tmp_path / "data"
    giant = {"messages": [{"role": "user", "content": "why " * 1_000_000}, {"role": "assistant", "content": "ok"}]}
    _write(folder / "chats.jsonl", json.dumps(giant) + "\n" + json.dumps(CHAT) + "\n")
    prepared = prepare_dataset(folder, tokenizer, seq_len=64, val_fraction=0)
    report = prepared.report.file("chats.jsonl")
    assert [(s.line, s.reason) for s in report.skipped] == [
        (1, "longer than the sequence length (more than 64 tokens) with no answer before the cut")]
    assert report.over_seq_len == 1 and report.truncated == 0
    assert len(prepared.train) == 1
