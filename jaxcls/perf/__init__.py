"""Performance tools: the bare-step benchmark and the profiler trace summary."""

import json
import os
from typing import Any


def write_json(record: Any, path: str) -> str:
  """Writes a benchmark record or trace summary as indented JSON at `path` (folders made as needed)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  return path
