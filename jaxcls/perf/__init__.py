"""Performance tools: the bare-step benchmark and the profiler trace summary."""
