"""The job layer: CLI, search on Ray Tune, reports."""
