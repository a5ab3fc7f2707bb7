"""What one running ``emarray gui`` holds: its folders, jobs, token and viewers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .jobs import Jobs
from .places import Folders


@dataclass
class Gui:
    folders: Folders
    jobs: Jobs
    token: str
    thumbnails: dict[Any, bytes] = field(default_factory=dict)
    viewers: Any = None  # emarray.gui.viewer.Viewers, made when first asked for
