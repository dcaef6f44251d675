"""Bytes of a user's text file to a Python string, or a clear reason why not.

UTF-8 (with or without a byte-order mark) and BOM-marked UTF-16/32 are read directly. Anything else
is handed to charset-normalizer, and its answer is accepted only when it is confident (little
"chaos", some language coherence, and the bytes decode). Files with NUL bytes are binary.
"""

from __future__ import annotations

import codecs
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

DETECT_BYTES = 1 << 18  # how much of a non-UTF-8 file the encoding is guessed from (256 kB)
MAX_CHAOS = 0.2  # charset-normalizer's mess ratio (0 = clean text); above this the guess is refused
_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]
_PREFERRED = ("cp1252",)
_MARGIN = 0.1
_MULTIBYTE = {"cp932", "shift_jis", "euc_jp", "gb18030", "gb2312", "gbk", "big5", "big5hkscs", "cp949",
              "euc_kr", "cp950"}


@dataclass(frozen=True)
class Decoded:
    text: str | None  # None when the file cannot be used as text
    encoding: str | None
    error: str | None = None  # "binary file", "undecodable text ..."


def decode_bytes(data: bytes) -> Decoded:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return Decoded(data.decode(encoding), encoding.replace("-sig", ""))
            except UnicodeDecodeError as err:
                return Decoded(None, None, f"undecodable text ({encoding} byte-order mark, {err.reason})")
    if b"\x00" in data:
        return Decoded(None, None, "binary file")
    try:
        return Decoded(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError as err:
        utf8_error = err
    guess = _detect(data)
    if guess is None:
        return Decoded(None, None, f"undecodable text (not UTF-8: invalid byte at offset {utf8_error.start}, "
                                   "and no other encoding could be detected reliably)")
    text, encoding = guess
    log.info("decoded a non-UTF-8 file as %s", encoding)
    return Decoded(text, encoding)


def _detect(data: bytes) -> tuple[str, str] | None:
    """charset-normalizer's best reading, or None when it is not confident.

    It judges the first DETECT_BYTES (cut after a newline, which no multi-byte encoding uses inside
    a character): on a whole large file it holds a decoded copy per candidate encoding, 20 times the
    file. The whole file must then decode in the chosen encoding.
    """
    from charset_normalizer import from_bytes

    sample = data
    if len(data) > DETECT_BYTES:
        cut = data.rfind(b"\n", 0, DETECT_BYTES)
        sample = data[:cut + 1] if cut > 0 else data[:DETECT_BYTES]
    matches = [m for m in from_bytes(sample) if m.chaos <= MAX_CHAOS]
    if not matches:
        return None
    best = matches[0]
    encoding: str | None = None
    # Short Western text reads "equally well" in many single-byte code pages; charset-normalizer then
    # picks one arbitrarily (cp775, cp850...). Prefer Windows-1252, by far the most common legacy
    # encoding, when it reads the bytes about as well as the best guess. Cyrillic, Greek or CJK bytes
    # never list cp1252 among their candidates, so this does not capture them.
    for match in matches:
        if (_PREFERRED[0] in match.could_be_from_charset and match.chaos <= best.chaos + _MARGIN
                and match.coherence >= best.coherence - _MARGIN):
            encoding = _PREFERRED[0]
            break
    if encoding is None:
        multibyte_clean = best.encoding in _MULTIBYTE and best.chaos == 0.0  # CJK has no coherence score
        if best.coherence <= 0.0 and not multibyte_clean:
            return None
        encoding = best.encoding
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None
    return text, encoding
