"""Text normalisation and the language facts the filters need.

    normalise("Ｈｅｌｌｏ\u3000 world\r\n") -> "Hello world\n"   (NFKC, unified newlines, collapsed spaces)
    han_ratio("卡奎佐吃树叶。") -> 1.0 (Han characters / non-space characters)

Chinese is judged by characters, not words: a Chinese line has no spaces to count words by.
"""

from __future__ import annotations

import re
import unicodedata

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u200b-\u200f\ufeff]")
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
# UTF-8 bytes read as Latin-1 / cp1252 ("mojibake"): Ã©, â€™, æ–‡ ... never occur in clean en/zh text
_MOJIBAKE = re.compile(r"[ÃÂâæçåäèéï][\u0080-\u00bf€™œ\u2018-\u201e]|â€")


# Chinese full-width punctuation that NFKC would turn into ASCII, and private-use stand-ins that NFKC leaves
# alone: swapped out before NFKC and back after it when the punctuation is to be kept.
_FULLWIDTH = "，：；？！（）"
_KEEP = str.maketrans({c: chr(0xE000 + i) for i, c in enumerate(_FULLWIDTH)})
_RESTORE = str.maketrans({chr(0xE000 + i): c for i, c in enumerate(_FULLWIDTH)})


def normalise(text: str, t2s=None, keep_fullwidth_punct: bool = False) -> str:
    """NFKC (full-width forms, compatibility characters), no control / zero-width characters, one kind of
    newline, runs of spaces collapsed, lines stripped, at most one blank line in a row; `t2s` (a callable,
    e.g. OpenCC's t2s converter) maps Traditional to Simplified Chinese; `keep_fullwidth_punct` keeps
    Chinese ，：；？！（） as they are (NFKC would make them ASCII)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if keep_fullwidth_punct:
        text = unicodedata.normalize("NFKC", text.translate(_KEEP)).translate(_RESTORE)
    else:
        text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text)
    if t2s is not None:
        text = t2s(text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def han_count(text: str) -> int:
    return len(_HAN.findall(text))


def han_ratio(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return han_count(text) / len(chars) if chars else 0.0


def is_chinese(text: str, threshold: float = 0.3) -> bool:
    return han_ratio(text) >= threshold


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def mojibake_count(text: str) -> int:
    return len(_MOJIBAKE.findall(text))


def opencc_t2s():
    """OpenCC's Traditional -> Simplified converter (the `opencc` package), or a clear error."""
    try:
        import opencc
    except ImportError:
        from chatforge import ChatforgeError

        raise ChatforgeError("--t2s needs the opencc package: pip install opencc") from None
    return opencc.OpenCC("t2s").convert
