"""Named data sources (digits, arrays, synthetic, tfds, folder, idx, label files).

Each registers itself in `jaxcls.data.SOURCES` when `jaxcls.data` imports it.
"""
