"""A plugin that fails at import."""

raise ImportError("this plugin is broken on purpose")
