"""The config schema: every key with its default (base) and the checks of a user's config (check)."""
