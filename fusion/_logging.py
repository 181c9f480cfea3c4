"""The ``fusion`` logger; the library logs here and never prints."""

from __future__ import annotations

import logging

logger = logging.getLogger("fusion")
