"""Named data sources (digits, arrays, synthetic, tfds, folder, idx, label files); each registers in `jaxcls.data.SOURCES`."""
