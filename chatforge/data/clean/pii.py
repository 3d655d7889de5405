"""PII scrubbing: e-mail addresses, phone numbers (international, US-style and Chinese mobile / landline)
and Chinese resident ID numbers (18 characters with a valid check digit) become placeholders.

    scrub_pii("Mail me at li.wei@example.com or 13812345678") -> ("Mail me at <EMAIL> or <PHONE>", {"email": 1, "phone": 1})
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
ID_CN = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9A-Za-z])")
PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ -]?\(?\d{1,4}\)?(?:[ -]?\d{2,4}){2,4}"  # international: +86 138 1234 5678, +1 (555) 123-4567
    r"|1[3-9]\d[ -]?\d{4}[ -]?\d{4}"                      # Chinese mobile: 13812345678, 138-1234-5678
    r"|0\d{2,3}-\d{7,8}"                                   # Chinese landline: 010-12345678
    r"|\(\d{3}\) ?\d{3}-\d{4}|\d{3}-\d{3}-\d{4}"           # US: (555) 123-4567, 555-123-4567
    r")(?![\w])")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def valid_cn_id(s: str) -> bool:
    """GB 11643 check digit of an 18-character resident ID."""
    total = sum(int(c) * w for c, w in zip(s[:17], _ID_WEIGHTS))
    return "10X98765432"[total % 11] == s[17].upper()


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    counts = {"email": 0, "phone": 0, "id_card": 0}

    def sub(kind: str, placeholder: str, check=None):
        def repl(m: re.Match) -> str:
            if check is not None and not check(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return placeholder
        return repl

    text = EMAIL.sub(sub("email", "<EMAIL>"), text)
    text = ID_CN.sub(sub("id_card", "<ID>", valid_cn_id), text)  # before phones: an ID contains digit runs
    text = PHONE.sub(sub("phone", "<PHONE>"), text)
    return text, counts
