"""Named data sources (digits, arrays, synthetic, tfds, folder, idx, label files).

Each registers itself in `jaxcls.data.SOURCES` when imported; `SOURCES` imports a built-in one on first lookup.
"""
