"""The Gymnasium environment that walks a model's prunable units."""
