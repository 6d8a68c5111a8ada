"""The Gymnasium environment that walks a model's prunable units; `import envs` registers its ids."""

from gymnasium.envs.registration import register, registry

from envs.layer_pruning import FEATURES, OBS_VERSION, LayerPruningEnv
from envs.rewards import REWARDS, get_reward

ENV_ID = "prunepilot/LayerPruning-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="envs.factory:make_env")

__all__ = ["ENV_ID", "FEATURES", "OBS_VERSION", "LayerPruningEnv", "REWARDS", "get_reward"]
