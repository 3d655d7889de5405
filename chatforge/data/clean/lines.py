"""Line-level cleaning: ads, boilerplate and navigation spliced into otherwise good documents.

    keep, removed = clean_lines(text)     # removed: [(line, reason), ...]

A line goes when it looks like an advertisement (calls to buy / click / win, discounts, "sponsored",
【广告】…), like page furniture (copyright and legal links, share bars, log-in links) or like a navigation
bar (three or more short items separated by | · / >), plus C4's "this site needs JavaScript / lorem ipsum"
lines. English and Chinese cues are both checked, whatever the document's language: ads are often in the
other language.
"""

from __future__ import annotations

import re

from chatforge.data.clean.text import han_count, words

AD_EN = re.compile(
    r"\bbuy now\b|\bclick here\b|\b\d{1,3}\s?% off\b|\border (?:today|now)\b|^sponsored\b|\bwin an? (?:free|new)\b"
    r"|\bfree shipping\b|\blimited[- ]time offer\b|\bact now\b|\bsubscribe now\b|!!!|\bdealz?\b.*\.(?:com|example)\b",
    re.IGNORECASE)
AD_ZH = re.compile(r"【广告】|广告[:：]|点击(?:进入|这里|领取|购买|查看)|立即点击|抢购|恭喜您?中奖|免费领取|赞助内容|今天下单|"
                   r"限时(?:特价|优惠|抢)|扫码|加微信|优惠券")
BOILER_EN = re.compile(
    r"©|\ball rights reserved\b|\bprivacy(?: policy)?\s*[|·]|\bterms (?:of (?:use|service)|and conditions)\b"
    r"|\bcookie(?:s| policy)\b|^share (?:on|this)\b|\blog ?in\s*\||\bsign up\s*\|",
    re.IGNORECASE)
BOILER_ZH = re.compile(r"版权所有|首页\s*[|｜]|[|｜]\s*登录|分享到[:：]|联系我们\s*[|｜]|[|｜]\s*关于我们")
C4_LINES = re.compile(r"javascript (?:is|must be) (?:disabled|enabled)|enable javascript|lorem ipsum", re.IGNORECASE)
NAV_SEP = re.compile(r"\s*[|｜·>/»]\s*")


def is_nav_bar(line: str) -> bool:
    """Three or more short items separated by | · / > (a menu or breadcrumb), with no sentence in it."""
    parts = [p for p in NAV_SEP.split(line) if p]
    if len(parts) < 3 or re.search(r"[.!?。！？]\s*$", line):
        return False
    return all(len(words(p)) <= 3 and han_count(p) <= 6 and len(p) <= 24 for p in parts)


def line_reason(line: str) -> str | None:
    """Why `line` should go ("ad", "boilerplate", "navigation", "c4"), or None to keep it."""
    if not line.strip():
        return None
    if AD_EN.search(line) or AD_ZH.search(line):
        return "ad"
    if BOILER_EN.search(line) or BOILER_ZH.search(line):
        return "boilerplate"
    if is_nav_bar(line):
        return "navigation"
    if C4_LINES.search(line):
        return "c4"
    return None


def clean_lines(text: str) -> tuple[str, list[tuple[str, str]]]:
    kept, removed = [], []
    for line in text.split("\n"):
        reason = line_reason(line)
        if reason is None:
            kept.append(line)
        else:
            removed.append((line, reason))
    return "\n".join(kept).strip(), removed
