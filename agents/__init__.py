"""Deciders: stable-baselines3 agents and rule baselines that propose sparsity policies."""
