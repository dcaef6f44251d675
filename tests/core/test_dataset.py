"""The train-from-folder data pipeline: every file and line accounted for, samples, labels, split, packing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from studio.core.dataset import (
    IGNORE_INDEX,
    NoSamplesError,
    PackedCollator,
    Sample,
    TokenizedSample,
    pack_samples,
    packed_rows,
    prepare_dataset,
    scan_folder,
)
from studio.core.dataset.prepare import validation_count

MESSAGES = [
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
    {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there."},
                  {"role": "user", "content": "How are you?"},
                  {"role": "assistant", "content": "I am fine, thank you."}]},
]
LEGACY_CSV = 'prompt,completion\nOù est le café ?,"Le café est à côté de l\'église, près de la forêt."\n'
PROSE = ("First paragraph, line one.\nLine two of the first paragraph.\n\nSecond paragraph is here.\n\n\n"
         "Third paragraph after two blank lines, a little longer than the others so it needs more tokens.\n")


def _jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def _random_high_bytes(n: int) -> bytes:
    rng = random.Random(7)
    return bytes(rng.randrange(128, 256) for _ in range(n))


def build_folder(root: Path) -> Path:
    files: dict[str, str | bytes] = {
        "chats/messages.jsonl": _jsonl(
            MESSAGES[0], MESSAGES[1],
            '{"messages": [ broken',
            {"foo": 1},
            {"instruction": "x", "output": "y"},
            "",
            {"messages": [{"role": "user", "content": "Say nothing"}, {"role": "assistant", "content": "   "}]},
            {"messages": [{"role": "user", "content": "Quick brown fox?"},
                          {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}]},
        ),
        "sharegpt.json": (
            "[\n"
            '  {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Who are you?"},'
            ' {"from": "gpt", "value": "A helpful assistant."}]},\n'
            '  {"conversations": [{"from": "human", "value": "Count to three."},'
            ' {"from": "gpt", "value": "One, two, three."}]}\n'
            "]\n"
        ),
        "alpaca.jsonl": _jsonl({"instruction": "Translate to French", "input": "Hello", "output": "Bonjour"},
                               {"instruction": "Name a colour", "input": "", "output": "Blue"}),
        "prompt_completion.jsonl": _jsonl({"prompt": "2 + 2 =", "completion": " 4"},
                                          {"prompt": "The sky is", "completion": ""}),
        "text.jsonl": _jsonl({"text": "A short note about foxes."}, {"text": "Another note, about dogs."}),
        "notes.txt": PROSE,
        "readme.md": "# Title\n\nSome *markdown* text.\n",
        "qa.csv": ('Question,Answer\nWhat is 1+1?,2\n"Multi\nline question?","Yes, it spans lines."\n'
                   "only one field\nEmpty answer?,\n"
                   'Quick brown fox?,"The quick brown fox   jumps over the lazy dog."\n'),
        "instr.tsv": "Instruction\tResponse\nGreet the user\tHello, how are you today?\n",
        "unknown.jsonl": _jsonl({"foo": 1}, {"bar": 2}),
        "legacy.csv": LEGACY_CSV.encode("cp1252"),
        "garbage.txt": _random_high_bytes(200),
        "blob.jsonl": b'{"text": "a"}\n\x00\x01\x02',
        "empty.jsonl": b"",
        "image.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "LICENSE": "All rights reserved.\n",
        "nested/deeper/more.jsonl": _jsonl(
            {"messages": [{"role": "user", "content": "Count to three."},
                          {"role": "assistant", "content": "One,  two,\tthree."}]},
            {"messages": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."}]},
        ),
        ".hidden/secret.jsonl": _jsonl(MESSAGES[0]),
        ".DS_Store": b"\x00\x01",
    }
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


# path: (format, shape, samples, [(line, reason fragment)], whole-file error fragment or None)
EXPECTED = {
    "LICENSE": ("-", None, 0, [], "unsupported file type (no extension)"),
    "alpaca.jsonl": ("jsonl", "alpaca", 2, [], None),
    "blob.jsonl": ("jsonl", None, 0, [], "binary file"),
    "chats/messages.jsonl": ("jsonl", "messages", 3, [
        (3, "invalid JSON at line 3"), (4, "unknown shape (keys: foo)"),
        (5, "record of shape 'alpaca' in a file of shape 'messages'"), (7, "empty assistant answer")], None),
    "empty.jsonl": ("jsonl", None, 0, [], "empty file"),
    "garbage.txt": ("txt", None, 0, [], "undecodable text"),
    "image.png": ("png", None, 0, [], "unsupported file type .png"),
    "instr.tsv": ("tsv", "instruction/response", 1, [], None),
    "legacy.csv": ("csv", "prompt/completion", 1, [], None),
    "nested/deeper/more.jsonl": ("jsonl", "messages", 2, [], None),
    "notes.txt": ("txt", "prose", 1, [], None),
    "prompt_completion.jsonl": ("jsonl", "prompt_completion", 1, [(2, "empty assistant answer")], None),
    "qa.csv": ("csv", "question/answer", 2, [
        (5, "row has 1 fields, expected 2"), (6, "empty assistant answer"),
        (7, "duplicate of chats/messages.jsonl:8")], None),
    "readme.md": ("md", "prose", 1, [], None),
    "sharegpt.json": ("json", "sharegpt", 1, [(3, "duplicate of nested/deeper/more.jsonl:1")], None),
    "text.jsonl": ("jsonl", "text", 2, [], None),
    "unknown.jsonl": ("jsonl", None, 0, [(1, "unknown shape (keys: foo)"), (2, "unknown shape (keys: bar)")],
                      "no record of a known shape"),
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return build_folder(tmp_path / "data")


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base_dir)


def test_report_accounts_for_every_file_and_skipped_line(folder: Path):
    scan = scan_folder(folder)
    report = scan.report
    assert [f.path for f in report.files] == sorted(EXPECTED)  # hidden entries are not files of the dataset
    assert report.hidden_ignored == 2
    for path, (fmt, shape, samples, skipped, error) in EXPECTED.items():
        f = report.file(path)
        assert (f.format, f.shape, f.samples) == (fmt, shape, samples), path
        assert [item.line for item in f.skipped] == [line for line, _ in skipped], (path, f.skipped)
        for item, (_, fragment) in zip(f.skipped, skipped, strict=True):
            assert fragment in item.reason, (path, item)
        if error is None:
            assert f.error is None and f.used, (path, f.error)
        else:
            assert f.error is not None and error in f.error and not f.used, (path, f.error)
    assert len(scan.samples) == report.total_samples == sum(e[2] for e in EXPECTED.values())
    totals = report.totals()
    assert totals["files"] == len(EXPECTED) and totals["skipped_lines"] == 11
    assert "tokens" not in totals  # no tokenizer yet


def test_samples_have_the_right_roles_and_contents(folder: Path):
    samples = {s.source: s for s in scan_folder(folder).samples}

    def turns(source: str) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in samples[source].messages]

    assert turns("chats/messages.jsonl:1") == [
        ("system", "You are terse."), ("user", "What is the capital of France?"), ("assistant", "Paris.")]
    assert [r for r, _ in turns("chats/messages.jsonl:2")] == ["user", "assistant", "user", "assistant"]
    assert turns("sharegpt.json:2") == [("system", "Be kind."), ("user", "Who are you?"),
                                        ("assistant", "A helpful assistant.")]
    assert turns("alpaca.jsonl:1") == [("user", "Translate to French\n\nHello"), ("assistant", "Bonjour")]
    assert turns("alpaca.jsonl:2") == [("user", "Name a colour"), ("assistant", "Blue")]
    assert turns("prompt_completion.jsonl:1") == [("user", "2 + 2 ="), ("assistant", "4")]
    assert turns("qa.csv:3") == [("user", "Multi\nline question?"), ("assistant", "Yes, it spans lines.")]
    assert turns("instr.tsv:2") == [("user", "Greet the user"), ("assistant", "Hello, how are you today?")]
    assert turns("legacy.csv:2") == [("user", "Où est le café ?"),
                                     ("assistant", "Le café est à côté de l'église, près de la forêt.")]
    assert samples["text.jsonl:2"] == Sample(kind="text", source="text.jsonl:2", text="Another note, about dogs.")
    assert samples["notes.txt:1"].text == PROSE
    assert "sharegpt.json:3" not in samples  # a duplicate of nested/deeper/more.jsonl:1 (read first)
    assert turns("nested/deeper/more.jsonl:1") == [("user", "Count to three."), ("assistant", "One,  two,\tthree.")]


def test_legacy_encoding_is_decoded_and_named(folder: Path):
    report = scan_folder(folder).report
    assert report.file("legacy.csv").encoding == "cp1252"
    assert report.file("qa.csv").encoding == "utf-8"


def test_report_serialises_for_json_and_text(folder: Path):
    report = scan_folder(folder).report
    data = json.loads(json.dumps(report.to_dict()))
    assert {f["path"] for f in data["files"]} == set(EXPECTED)
    messages = next(f for f in data["files"] if f["path"] == "chats/messages.jsonl")
    assert messages["skipped"][0] == {"line": 3, "reason": messages["skipped"][0]["reason"]}
    text = report.to_text()
    for path in EXPECTED:
        assert path in text
    assert "skipped: unsupported file type .png" in text
    assert "line 7: duplicate of chats/messages.jsonl:8" in text
    assert "encoding: cp1252 (not UTF-8)" in text


def test_json_file_with_one_record_and_json_lines_under_json_name(tmp_path: Path):
    (tmp_path / "one.json").write_text(json.dumps(MESSAGES[0], indent=2))
    (tmp_path / "lines.json").write_text(_jsonl(MESSAGES[1], {"text": "prose"}, {"text": "more prose"}))
    (tmp_path / "broken.json").write_text('[{"text": "a"},\n {"text": ]\n')
    report = scan_folder(tmp_path).report
    assert (report.file("one.json").shape, report.file("one.json").samples) == ("messages", 1)
    lines = report.file("lines.json")
    assert (lines.shape, lines.samples, [i.line for i in lines.skipped]) == ("text", 2, [1])
    assert "JSON Lines" in lines.notes[0]
    assert report.file("broken.json").error.startswith("invalid JSON at line 2")


def test_missing_folder_is_a_studio_error(tmp_path: Path):
    from studio.core.errors import StudioError

    with pytest.raises(StudioError, match="does not exist"):
        scan_folder(tmp_path / "nope")


def _labelled_runs(sample: TokenizedSample) -> list[list[int]]:
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in sample.labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def _check_chat_labels(prepared, samples: dict[str, Sample], tokenizer) -> int:
    checked = 0
    for tokenized in prepared.train + prepared.validation:
        sample = samples[tokenized.source]
        if sample.kind != "chat":
            continue
        runs = [tokenizer.decode(run) for run in _labelled_runs(tokenized)]
        answers = [m.content + "<|im_end|>" for m in sample.messages if m.role == "assistant"]
        assert runs == answers, tokenized.source
        for label, token in zip(tokenized.labels, tokenized.input_ids, strict=True):
            assert label in (IGNORE_INDEX, token)
        checked += 1
    return checked


def test_chat_labels_are_the_assistant_answers_and_their_end_of_turn(folder: Path, tokenizer):
    prepared = prepare_dataset(folder, tokenizer, seq_len=256, val_fraction=0.2, seed=1)
    samples = {s.source: s for s in scan_folder(folder).samples}
    assert _check_chat_labels(prepared, samples, tokenizer) == 13
    report = prepared.report
    totals = report.totals()
    assert totals["samples"] == 17 and totals["sequences"] == 17 and totals["over_seq_len"] == 0
    assert totals["tokens"] == sum(len(s) for s in prepared.train + prepared.validation)
    assert totals["longest_sample_tokens"] == max(len(s) for s in prepared.train + prepared.validation)
    assert (totals["train_samples"], totals["validation_samples"]) == (14, 3)
    assert report.warnings == []
    assert "Tokens:" in report.to_text() and "LONGEST" in report.to_text()


def test_templates_that_render_the_last_turn_differently_still_label_answers(tmp_path: Path, tokenizer):
    import copy

    odd = copy.deepcopy(tokenizer)  # earlier assistant turns get a marker, the last one does not
    odd.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
        "{% if m['role'] == 'assistant' and not loop.last %}{{ '(earlier) ' }}{% endif %}"
        "{{ m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    (tmp_path / "chat.jsonl").write_text(_jsonl(*MESSAGES))
    prepared = prepare_dataset(tmp_path, odd, seq_len=256, val_fraction=0)
    samples = {s.source: s for s in scan_folder(tmp_path).samples}
    assert _check_chat_labels(prepared, samples, odd) == 2


class _SlowView:
    """The same tokenizer, seen as one without offset mappings (the path slow tokenizers take)."""

    is_fast = False

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, text, **kwargs):
        kwargs.pop("return_offsets_mapping", None)
        return self._tokenizer(text, **kwargs)


def test_tokenizers_without_offsets_or_chat_template(tmp_path: Path, tokenizer):
    import copy

    (tmp_path / "chat.jsonl").write_text(_jsonl(*MESSAGES))
    samples = {s.source: s for s in scan_folder(tmp_path).samples}
    slow = prepare_dataset(tmp_path, _SlowView(tokenizer), seq_len=256, val_fraction=0)
    assert _check_chat_labels(slow, samples, tokenizer) == 2
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    prepared = prepare_dataset(tmp_path, bare, seq_len=256, val_fraction=0)
    assert _check_chat_labels(prepared, samples, bare) == 2  # eos <|im_end|> closes each turn
    assert any("no chat template" in w for w in prepared.report.warnings)
    assert "Warning: " in prepared.report.to_text()


def test_prose_is_cut_into_windows_on_paragraphs_with_eos(tmp_path: Path, tokenizer):
    (tmp_path / "notes.txt").write_text(PROSE)
    prepared = prepare_dataset(tmp_path, tokenizer, seq_len=48, val_fraction=0)
    windows = prepared.train  # paragraphs of 45, 22 and 73 (+ EOS) tokens: the third one must be cut
    assert [len(w) for w in windows] == [45, 22, 48, 26]
    assert all(w.labels[0] == IGNORE_INDEX and w.labels[1:] == w.input_ids[1:] for w in windows)
    assert windows[-1].input_ids[-1] == tokenizer.eos_token_id
    assert sum(w.input_ids.count(tokenizer.eos_token_id) for w in windows) == 1
    assert tokenizer.decode([t for w in windows for t in w.input_ids]) == PROSE + "<|im_end|>"
    texts = [tokenizer.decode(w.input_ids) for w in windows]
    assert texts[:2] == ["First paragraph, line one.\nLine two of the first paragraph.\n\n",
                         "Second paragraph is here.\n\n\n"]  # whole paragraphs
    assert [w.source for w in windows] == ["notes.txt:1", "notes.txt:4", "notes.txt:7", "notes.txt:7"]
    report = prepared.report.file("notes.txt")
    assert (report.samples, report.sequences, report.over_seq_len) == (1, len(windows), 0)


def test_text_records_keep_their_own_line_and_a_scan_can_be_prepared_twice(tmp_path: Path, tokenizer):
    (tmp_path / "text.jsonl").write_text(_jsonl({"text": "short"}, {"text": PROSE}))
    scan = scan_folder(tmp_path)
    shown = scan.report.to_dict()
    first = prepare_dataset(tmp_path, tokenizer, seq_len=48, val_fraction=0, scan=scan)
    assert [w.source for w in first.train] == ["text.jsonl:1"] + ["text.jsonl:2"] * 4
    second = prepare_dataset(tmp_path, tokenizer, seq_len=48, val_fraction=0, scan=scan)
    assert scan.report.to_dict() == shown  # preparing does not change the scan's report
    assert first.report.to_dict() == second.report.to_dict()
    assert first.report.totals()["samples"] == 2 and first.report.totals()["sequences"] == 5


def test_long_samples_are_counted_and_truncated_or_dropped(folder: Path, tokenizer):
    full = prepare_dataset(folder, tokenizer, seq_len=1024, val_fraction=0)
    lengths = {s.source: len(s) for s in full.train}
    seq_len = 40
    prose = ("notes.txt", "readme.md", "text.jsonl")  # prose is windowed, never "too long"
    over = sorted(src for src, n in lengths.items() if n > seq_len and not src.startswith(prose))
    assert over  # the test needs some long chat samples
    truncated = prepare_dataset(folder, tokenizer, seq_len=seq_len, val_fraction=0, long_samples="truncate")
    assert all(len(s) <= seq_len for s in truncated.train)
    assert truncated.report.totals()["over_seq_len"] == truncated.report.totals()["truncated"] == len(over)
    longest_chat = max(n for src, n in lengths.items() if not src.startswith(prose))
    assert truncated.report.totals()["longest_sample_tokens"] == longest_chat > seq_len
    dropped = prepare_dataset(folder, tokenizer, seq_len=seq_len, val_fraction=0, long_samples="drop")
    assert sorted({s.source for s in full.train} - {s.source for s in dropped.train}) == over
    reasons = [(f.path, i.line, i.reason) for f in dropped.report.files for i in f.skipped
               if "longer than the sequence length" in i.reason]
    assert sorted(f"{p}:{line}" for p, line, _ in reasons) == over
    assert dropped.report.totals()["samples"] == full.report.totals()["samples"] - len(over)
    with pytest.raises(ValueError, match="long_samples"):
        prepare_dataset(folder, tokenizer, long_samples="wrap")


def test_split_is_seeded_and_sized(folder: Path, tokenizer):
    def sources(seed: int):
        p = prepare_dataset(folder, tokenizer, seq_len=256, seed=seed, val_fraction=0.25)
        return [s.source for s in p.train], [s.source for s in p.validation]

    first, again, other = sources(3), sources(3), sources(4)
    assert first == again and first != other
    assert len(first[1]) == 4 and not set(first[0]) & set(first[1])
    assert [validation_count(n, 0.1) for n in (0, 4, 5, 30, 100)] == [0, 0, 1, 3, 10]
    assert validation_count(100, 0.0) == 0


def test_nothing_to_train_on_is_a_studio_error_with_the_report(tmp_path: Path, tokenizer):
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(NoSamplesError) as caught:
        prepare_dataset(tmp_path, tokenizer)
    assert caught.value.report.file("image.png").error == "unsupported file type .png"


def _sample(n: int, name: str) -> TokenizedSample:
    ids = [10 + (i % 50) for i in range(n)]
    return TokenizedSample(input_ids=ids, labels=list(ids), source=name)


def test_pack_samples_first_fit_decreasing():
    lengths = [5, 7, 3, 2, 6, 4, 1, 8]
    samples = [_sample(n, f"s{i}") for i, n in enumerate(lengths)]
    rows = pack_samples(samples, 10)
    assert [[len(s) for s in row] for row in rows] == [[8, 2], [7, 3], [6, 4], [5, 1]]
    assert sorted(s.source for row in rows for s in row) == sorted(s.source for s in samples)
    assert pack_samples(samples, 10) == rows
    with pytest.raises(ValueError, match="longer than seq_len"):
        pack_samples(samples, 7)
    many = [_sample(1 + (i * 37) % 50, str(i)) for i in range(500)]
    packed = pack_samples(many, 64)
    assert all(sum(len(s) for s in row) <= 64 for row in packed)
    assert sum(len(row) for row in packed) == 500


def test_packed_rows_and_collator():
    pytest.importorskip("torch")
    samples = [_sample(4, "a"), _sample(3, "b"), _sample(6, "c")]
    rows = packed_rows(samples, 8)
    assert [len(r["input_ids"]) for r in rows] == [6, 7]
    assert rows[1]["position_ids"] == [0, 1, 2, 3, 0, 1, 2]
    assert rows[1]["labels"][0] == IGNORE_INDEX and rows[1]["labels"][4] == IGNORE_INDEX  # each sample's first
    assert rows[1]["labels"][1:4] == samples[0].labels[1:]
    batch = PackedCollator(pad_token_id=0, seq_len=8)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask, on purpose
    assert batch["input_ids"].shape == (2, 7)
    assert batch["input_ids"][0, 6].item() == 0 and batch["labels"][0, 6].item() == IGNORE_INDEX
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0]
    assert batch["labels"][1].tolist() == rows[1]["labels"]
    with pytest.raises(ValueError, match="more than seq_len"):
        PackedCollator(pad_token_id=0, seq_len=6)(rows)


def test_a_paragraph_longer_than_a_tokenizer_chunk_gives_the_same_tokens(tmp_path: Path, tokenizer):
    """Long text reaches the tokenizer in chunks cut before a space: the tokens are those of the whole."""
    from studio.core.dataset.tokenize import CHUNK_CHARS

    rng = random.Random(3)
    words = ["fox", "dog", "the", "quick", "lazy", "  ", "Paris", "capital", "hello,", "today?"]
    paragraph = " ".join(rng.choice(words) for _ in range(CHUNK_CHARS))  # ~5 chunks, one paragraph
    text = f"Short opening paragraph.\n\n{paragraph}\n\nA closing line.\n"
    (tmp_path / "long.txt").write_text(text, encoding="utf-8")
    windows = prepare_dataset(tmp_path, tokenizer, seq_len=512, val_fraction=0).train
    windows.sort(key=lambda w: int(w.source.rsplit(":", 1)[1]))
    ids = [t for w in windows for t in w.input_ids]
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert all(len(w) <= 512 for w in windows) and len(windows) > 10
    assert [int(w.source.rsplit(":", 1)[1]) for w in windows][:2] == [1, 3]
