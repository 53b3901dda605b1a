"""MkDocs hook: render the Sphinx roles of torchqv's docstrings (``:class:`X```) as plain code."""

import re

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(?=<code>)")


def on_page_content(html, **kwargs):
    return _ROLE.sub("", html)
