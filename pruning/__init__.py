"""The pruning engine shared by envs, agents and search: models, data, policies, pruning, cost, export.

It depends on torch and torch-pruning only (plus pydantic/yaml for configs), never on the packages above it.
"""
