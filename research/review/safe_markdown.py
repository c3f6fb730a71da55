"""A note's or an item body's Markdown as safe HTML, with markdown-it-py.

Raw HTML in the text is escaped, never passed through (``html: False``), so ``<script>``
and ``<img onerror=…>`` arrive as text. Links keep only safe schemes (http, https,
mailto, or none: relative and ``#`` links); a ``javascript:`` or ``data:`` link becomes
plain text. Images become links to them: the page loads nothing from elsewhere.
"""

from __future__ import annotations

import functools
import html
import re

_SAFE_LINK = re.compile(r"^(?:https?:|mailto:|#|/|\./|\.\./|(?![a-z][a-z0-9+.\-]*:))", re.IGNORECASE)


def _safe_link(url: str) -> bool:
    # Browsers ignore control characters and whitespace inside a scheme ("java\tscript:").
    cleaned = re.sub(r"[\x00-\x20\x7f]+", "", html.unescape(url))
    return bool(_SAFE_LINK.match(cleaned))


@functools.cache
def _parser():
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.validateLink = _safe_link

    def image(renderer, tokens, idx, options, env):
        token = tokens[idx]
        src = html.escape(token.attrGet("src") or "", quote=True)
        alt = html.escape(token.content or src)
        return f'<a href="{src}" rel="noopener noreferrer">{alt}</a>'

    def link_open(renderer, tokens, idx, options, env):
        tokens[idx].attrSet("rel", "noopener noreferrer")
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("image", image)
    md.add_render_rule("link_open", link_open)
    return md


def markdown_html(text: str | None) -> str:
    """``text`` (Markdown) as sanitised HTML."""
    if not text:
        return ""
    return _parser().render(text)
