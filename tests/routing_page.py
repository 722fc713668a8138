"""What the tests read from the routing page's HTML."""

from __future__ import annotations

import re
from typing import Final

OVERRIDE_FORM: Final = re.compile(
    r'<form class="llm-override-form" method="post" action="([^"]+)">\s*'
    r'<input type="hidden" name="csrftoken" value="([^"]*)">\s*'
    r'<input type="hidden" name="version" value="(\d+)">'
)
"""A purpose's override form: its action (HTML-escaped), CSRF token and version, in order."""
