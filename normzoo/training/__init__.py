"""The training side: Lightning modules, callbacks and the DDP sync plugin (imports Lightning)."""
