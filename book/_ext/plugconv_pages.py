"""Sphinx extension of the book: every script is loaded once per page.

sphinx-thebe adds its inline configuration (``const THEBE_JS_URL = ...``) in ``env-before-read-docs``, which
Jupyter Book fires twice in one build (once with filename None, once with ""), so every page declared the constant twice and the browser reported a
SyntaxError on every page. Dropping exact duplicates (same file or same inline body, same attributes) from each
page's script list removes the error and changes nothing else.
"""
from __future__ import annotations


def _key(asset) -> tuple:
    # an inline script is registered once with filename None and once with "": the same script
    attributes = getattr(asset, "attributes", {}) or {}
    return (getattr(asset, "filename", asset) or "", getattr(asset, "priority", 0), tuple(sorted(attributes.items())))


def dedupe_assets(app, pagename, templatename, context, doctree) -> None:
    for key in ("script_files", "css_files"):
        assets = context.get(key)
        if not assets:
            continue
        seen, kept = set(), []
        for asset in assets:
            if _key(asset) not in seen:
                seen.add(_key(asset))
                kept.append(asset)
        assets[:] = kept  # in place: the builder keeps this list object for the page


def setup(app):
    app.connect("html-page-context", dedupe_assets, priority=900)  # after every extension has added its assets
    return {"parallel_read_safe": True, "parallel_write_safe": True}
