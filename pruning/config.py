"""Typed, validated run configuration: YAML file + `dotted.key=value` overrides.

Unknown keys and wrong types are errors that name the field (never silently dropped).
Sections used by later stages (env, agent, search) live here too so that one file
describes one whole run.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pruning.errors import UserError

Seed = Annotated[int, Field(ge=0, lt=2**31)]
"""What numpy, torch, Gymnasium and the searchers all accept (numpy refuses a negative seed mid-run)."""

AgentName = Literal["ddpg", "td3", "sac", "ppo"]
AGENT_NAMES: tuple[str, ...] = AgentName.__args__
"""The stable-baselines3 agents (agents/sb3_agents.py); each is also a search.searcher."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


IN_MEMORY_DATASETS = ("digits", "synthetic")
"""Built-in datasets that read no files: data.path has nothing to point them at."""


class DataConfig(Section):
    name: str = "fashion-mnist"
    """Dataset: fashion-mnist, mnist-idx, digits, synthetic, or 'module:function'."""
    path: str | None = None
    """Directory of IDX files (fashion-mnist default: /usr/share/datasets/fashion-mnist or $PRUNEPILOT_FASHION_MNIST)."""
    val_fraction: float = Field(0.1, gt=0, lt=1)
    """Fraction of training data held out (from its end) for validation, when val_size is not set (not for
    fashion-mnist, which holds out val_size images)."""
    val_size: int | None = Field(None, gt=0)
    """Validation images taken from the end of the training set (fashion-mnist default 5000)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Extra keywords for the dataset source (e.g. synthetic image size)."""

    @model_validator(mode="after")
    def _no_setting_the_dataset_ignores(self) -> "DataConfig":
        """Both were ignored without a word: digits and synthetic read no files, and fashion-mnist holds out
        val_size images (the protocol's 5000), never a fraction."""
        if self.path is not None and self.name in IN_MEMORY_DATASETS:
            raise ValueError(f"data.path: dataset {self.name!r} reads no files (it is built in memory); leave "
                             f"data.path out")
        if self.name == "fashion-mnist" and self.val_fraction != DataConfig.model_fields["val_fraction"].default:
            raise ValueError("data.val_fraction: fashion-mnist holds out data.val_size images (default 5000, the "
                             "protocol's split), not a fraction; set data.val_size instead")
        return self


class ModelConfig(Section):
    name: str = "resnet20"
    """Zoo name (lenet5, vgg_small, resnet20/32/56, mobilenetv2_small) or 'module:factory'."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keywords for the model factory."""
    checkpoint: str | None = None
    """A user checkpoint (state_dict) to load instead of training the baseline."""


class TrainConfig(Section):
    epochs: int = Field(30, ge=0)
    """Epochs of the dense baseline."""
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    """Peak learning rate."""
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool | Literal["crop"] = True
    """true: random crop (pad 2) and horizontal flip; "crop": the crop alone, for images whose mirror image is
    another class or none (digits, text); false: neither. The final pass fine-tunes with the same."""

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_kind(cls, value: Any) -> bool | str:
        if isinstance(value, bool) or value == "crop":
            return value
        raise ValueError("expected true (random crop and horizontal flip), \"crop\" (the crop alone) or false")


class PruneConfig(Section):
    mode: Literal["structured", "unstructured"] = "structured"
    """structured: channels physically removed; unstructured: per-layer weight sparsity by magnitude."""
    importance: Literal["l1", "l2", "taylor", "lamp"] = "taylor"
    """Criterion that ranks channels (or weights) inside a unit."""
    round_to: int = Field(1, ge=1)
    """Kept channel counts are multiples of this (CPU kernels like multiples of 4 or 8)."""
    max_ratio: float = Field(0.9, gt=0, lt=1)
    """Largest ratio any unit may be pruned to."""
    macs_target: float | None = Field(None, gt=0, le=1)
    """Fraction of dense MACs to keep when no policy is given (e.g. 0.5)."""
    uniform_ratio: float | None = Field(None, ge=0, lt=1)
    """Uniform per-unit ratio when neither a policy nor macs_target is given."""
    steps: int = Field(4, ge=1)
    """Steps of the cubic (Zhu & Gupta) schedule in the progressive pass."""
    finetune_epochs: float = Field(1.0, ge=0)
    """Fine-tuning epochs between two steps (fractions allowed)."""
    final_epochs: float = Field(5.0, ge=0)
    """Fine-tuning epochs after the last step."""
    finetune_lr: float = Field(0.01, gt=0)
    distill: float = Field(0.0, ge=0, le=1)
    """Weight of the distillation loss from the dense teacher (0 = off)."""
    distill_temperature: float = Field(4.0, gt=0)
    taylor_batches: int = Field(8, ge=1)
    """Batches whose gradients estimate Taylor importance."""


class EvalConfig(Section):
    bn_batches: int = Field(20, ge=0)
    """Training batches used to recalibrate BatchNorm statistics (adaptive BN) before scoring; 0 = no adaptive BN
    (a pruned model is scored with the dense model's statistics, EagleEye's ablation)."""
    bn_batch_size: int = Field(128, ge=1)
    val_batch_size: int = Field(1000, ge=1)
    val_limit: int | None = Field(None, ge=1)
    """Use only the first N validation images for rewards (None = all)."""
    latency_repeats: int = Field(30, ge=3)


class SweepConfig(Section):
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    accuracy_floor: float | None = Field(None, gt=0, le=1)
    """With a floor, the sweep reports the largest uniform ratio whose accuracy stays above it, and a new search
    takes that policy's MACs as its target (global first); a search then refuses a given env.macs_target."""
    sensitivity_ratios: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])

    @field_validator("ratios", "sensitivity_ratios")
    @classmethod
    def _ratios_in_range(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not 0 <= v < 1]
        if bad or not values:
            raise ValueError("every ratio must lie in [0, 1) and the list must not be empty")
        return sorted(values)


class EnvConfig(Section):
    """The RL environment (envs/): how actions become ratios and policies become rewards."""

    macs_target: float = Field(0.5, gt=0, le=1)
    """Fraction of dense MACs every episode's policy must meet (enforced by clamping actions, as AMC)."""
    r_min: float = Field(0.0, ge=0, lt=1)
    r_max: float = Field(0.8, gt=0, lt=1)
    """Action range: a in [-1, 1] maps linearly to a ratio in [r_min, r_max]."""
    reward: Literal["accuracy_minus_compute", "amc_error", "amc_error_log_macs"] = "accuracy_minus_compute"
    reward_lambda: float = Field(0.5, ge=0)
    """lambda in R = accuracy - lambda * MACs ratio."""
    budget: Literal["exact", "cap"] = "exact"
    """exact: actions are clamped from both sides, so every policy lands on the MACs target (no evaluation
    spent on a smaller model than asked for); cap: AMC's one-sided wall, MACs at most the target."""
    latency_weight: float = Field(0.0, ge=0)
    """Weight of predicted latency in the reward (0: off). Policies of equal MACs can differ in latency by tens of
    percent; this term, predicted from a table of measured layer latencies (`latency_table`), tells them apart."""
    latency_target: float | None = Field(None, gt=0, le=1)
    """Predicted latency as a fraction of dense. Set: the reward loses weight * max(0, ratio / target - 1), a soft
    limit that leaves policies under it to accuracy. Unset: it loses weight * ratio, a plain trade-off."""
    latency_table: str | None = None
    """A table written by `prunepilot latency-table` (or by an earlier search). A search with latency_weight > 0
    and no table measures one on this machine and saves it as latency_table.json in its run folder."""
    latency_batch: int = Field(64, ge=1)
    """Batch size a measured latency table times layers at."""
    remove_blocks: bool = False
    """Let a policy remove whole residual blocks: the inside of a block with an identity shortcut (ResNet's
    BasicBlock, MobileNetV2's residual bottleneck) may take ratio 1 as well as [r_min, r_max], and at 1 the block
    goes. Actions mapped above r_max go to the nearer of r_max and 1. Removing a block removes its per-op costs
    with its MACs, which narrow convs keep (a CPU's speed-up at equal MACs)."""
    latency_features: bool = False
    """Add the latency table's view to the agent's observation (envs.layer_pruning.LATENCY_FEATURES): whether the
    unit's block can be removed, the latency the unit can save, the latency saved so far, the latency target.
    Needs latency_weight > 0 (checked where the env is built, so that a bench variant may set it for the
    latency-aware runs alone). An agent saved with them is only reused with them."""

    @model_validator(mode="after")
    def _range(self) -> "EnvConfig":
        if self.r_min >= self.r_max:
            raise ValueError(f"`r_min < r_max` must hold, but got (r_min={self.r_min}, r_max={self.r_max})")
        if self.latency_target is not None and self.latency_weight == 0:
            raise ValueError("latency_target has no effect with latency_weight 0; set env.latency_weight > 0")
        return self


class AgentConfig(Section):
    """The deciding agent (agents/); DDPG defaults are AMC's."""

    name: AgentName = "ddpg"
    """ddpg, td3, sac, ppo; an agent searcher (search.searcher) runs the agent of its own name."""
    warmup_episodes: int = Field(100, ge=0)
    """Episodes of uniformly random actions before the agent learns (AMC: 100)."""
    noise_sigma: float = Field(0.5, ge=0)
    """Initial std of the truncated-normal exploration noise, in ratio units of [0, 1] (AMC: 0.5)."""
    noise_decay: float = Field(0.95, gt=0, le=1)
    """Noise std multiplier per episode after warm-up (AMC: 0.95)."""
    warm_start_noise: float = Field(0.5, gt=0, le=1)
    """A warm start's (`--agent`) initial noise std, as a fraction of the saved agent's noise_sigma; its decay then
    starts again from the first episode. 0.5 explores near the transferred policy; 1 about as widely as a fresh
    agent's first noisy episode."""
    repeat_noise_growth: float = Field(1.0, ge=1.0)
    """Noise std multiplier per repeat of an already-scored policy, up to noise_sigma, while the per-episode
    decay goes on. 1 = AMC's schedule. Above 1, an agent whose noise has decayed widens it again when it
    keeps repeating itself, instead of ending the search short of its budget."""
    net_arch: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [300, 300])
    """Hidden layer widths of the actor and the critic (AMC: 300, 300); [] maps the observation straight to the
    action."""
    actor_lr: float = Field(1e-4, gt=0)
    critic_lr: float = Field(1e-3, gt=0)
    tau: float = Field(0.01, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    buffer_size: int = Field(100_000, ge=1)
    gamma: float = Field(1.0, ge=0, le=1)
    baseline_alpha: float = Field(0.95, ge=0, lt=1)
    """Moving-average factor of the reward baseline subtracted from every step's reward (AMC)."""
    learn_executed_action: bool = False
    """Learn from the action the env executed after its budget clamp, not the one the actor asked for."""
    action_range: Literal["absolute", "feasible"] = "absolute"
    """absolute: an action is a ratio in [r_min, r_max], then clamped to the budget (AMC); feasible: an action
    spans the ratios the budget still allows at that unit, so no action is clamped."""
    gradient_steps: int = Field(-1, ge=-1)
    """Gradient steps after each episode; -1 = as many as the episode had steps."""
    candidates: int = Field(1, ge=1)
    """Episodes the agent plays, with its exploration noise, for each policy it sends to be evaluated. Above 1, a
    Gaussian process of the rewards scored so far picks the one with the largest expected improvement
    (agents/screening.py): episodes cost milliseconds, evaluations seconds. 1 = AMC: every episode is evaluated."""
    screen_after: int = Field(10, ge=2)
    """Policies scored before the reward model screens candidates; until then the first candidate is sent."""
    candidate_noise: Literal["schedule", "spread"] = "schedule"
    """How far a screening agent's candidates explore. schedule: each with the noise schedule's std (AMC's). spread:
    candidate k of K with a std spaced geometrically from the schedule's (k = 0) to noise_sigma (k = K - 1), so that
    the reward model chooses how far to explore: once AMC's std has decayed, K candidates at that std are nearly one
    policy, and screening has nothing left to choose from (ddpg, td3)."""
    screen_known_latency: bool = False
    """With screening (candidates > 1) in a latency-aware search (env.latency_weight > 0): the reward model learns
    each reward less its latency penalty, which the latency table gives exactly before any evaluation, and the screen
    adds each candidate's penalty back. False: the model learns the whole reward, hinge at the target included."""
    warm_start_random_candidates: int = Field(0, ge=0)
    """Of a warm start's screened candidates (`agent.candidates`), how many are uniformly random episodes, as in a
    fresh agent's warm-up, in place of the widest-noise ones: the screen can then leave the transferred policy's
    neighbourhood where the source's knowledge does not carry over. 0: every candidate explores around the actor."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keywords passed to the stable-baselines3 constructor."""

    @field_validator("warm_start_random_candidates")
    @classmethod
    def _random_candidates_leave_one_from_the_actor(cls, count: int, info: ValidationInfo) -> int:
        candidates = info.data.get("candidates", 1)
        if count and count >= candidates:
            raise ValueError(f"expected fewer than agent.candidates ({candidates}): at least one candidate explores "
                             f"around the transferred actor")
        return count

    @field_validator("repeat_noise_growth")
    @classmethod
    def _growth_needs_amc_noise(cls, growth: float, info: ValidationInfo) -> float:
        name = info.data.get("name")
        if growth > 1 and name in ("sac", "ppo"):
            raise ValueError(f"expected 1 with {name}: the option widens AMC's exploration noise (ddpg, td3), and "
                             f"{name} explores through its stochastic policy")
        return growth

    @field_validator("candidates")
    @classmethod
    def _screening_needs_off_policy(cls, candidates: int, info: ValidationInfo) -> int:
        if candidates > 1 and info.data.get("name") == "ppo":
            raise ValueError("expected 1 with ppo: ppo learns on-policy, and an episode picked from several is not "
                             "a sample of its policy; screening needs ddpg, td3 or sac")
        return candidates

    @field_validator("candidate_noise")
    @classmethod
    def _spread_needs_screened_amc_noise(cls, mode: str, info: ValidationInfo) -> str:
        if mode == "spread" and info.data.get("name") in ("sac", "ppo"):
            raise ValueError(f"expected 'schedule' with {info.data.get('name')}: 'spread' widens AMC's exploration "
                             f"noise (ddpg, td3), and {info.data.get('name')} explores through its stochastic policy")
        if mode == "spread" and info.data.get("candidates", 1) <= 1:
            raise ValueError("expected 'schedule' with candidates 1: 'spread' spaces the noise of screened "
                             "candidates; set agent.candidates > 1")
        return mode


class SearchConfig(Section):
    """The search job (search/)."""

    searcher: str = "ddpg"
    """An agent name (ddpg, td3, sac, ppo) or random, tpe, uniform, global_magnitude, lamp."""
    evaluations: int = Field(200, ge=1)
    """Policies evaluated (the search budget)."""
    backend: Literal["local", "ray"] = "ray"
    concurrency: int = Field(2, ge=1)
    """Policies in flight at once (ray backend)."""
    final_pass: bool = True
    """Run the progressive prune-finetune pass on the best policy."""
    imitate_seeds: int = Field(0, ge=0)
    """Behaviour-cloning steps that move a ddpg/td3 actor onto the seed policies (`--policy`) before it explores,
    so its noise explores around them instead of around its own policy (0 = off)."""
    cpus_per_trial: float = Field(1.0, gt=0)
    """Ray resources of one trial; torch uses max(1, int(cpus_per_trial)) threads inside it."""
    gpus_per_trial: float = Field(0.0, ge=0)
    max_failures: int = Field(2, ge=0)
    """Retries of a trial whose worker died (Ray Tune FailureConfig)."""
    seed: Seed | None = None
    """Seed of the searcher and of the final pass (None = the run's seed). Benchmarks vary it over
    repeats while the run's seed, and so the cached dense baseline, stays the same."""


class MethodVariant(Section):
    """A searcher with settings of its own, compared under its own name (e.g. DDPG with screening beside AMC's)."""

    searcher: str
    """The search.searcher it runs."""
    overrides: list[str] = Field(default_factory=list)
    """dotted.key=value settings that make it differ, applied after the bench's own overrides."""
    baseline: bool = False
    """Compared as a baseline, not as an RL method, although it runs an agent's searcher: an ablation whose agent
    never leaves its random warm-up (agent.warmup_episodes >= the budget) learns nothing."""


def names_one_folder(name: str) -> bool:
    """Whether `name` can be one path component: names become folders and files (results/<name>/, runs/<method>-...)."""
    return bool(name.strip()) and name not in (".", "..") and not any(c in "/\\" or ord(c) < 32 for c in name)


class BenchConfig(Section):
    """`prunepilot bench`: every method at the same budgets, side by side (DESIGN.md section 3)."""

    methods: list[str] = Field(default_factory=lambda: ["uniform", "global_magnitude", "lamp", "random", "tpe", "ddpg"])
    """Methods compared: search.searcher names or names of `variants`; rules evaluate one policy, searchers
    `evaluations`."""
    variants: dict[str, MethodVariant] = Field(default_factory=dict)
    """Named variants of a searcher that `methods` may list, each with its own settings."""
    macs_targets: list[float] = Field(default_factory=lambda: [0.5, 0.25])
    """Operating points: fractions of dense MACs."""
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2])
    """Values of search.seed; figures are mean and std over them."""
    evaluations: int = Field(200, ge=1)
    """Evaluation budget of every searcher."""
    parallel: int = Field(2, ge=1)
    """Runs at once, each a process with one torch thread."""
    final_pass: bool = True
    """Run the same progressive prune-finetune pass (the prune section) on every method's policy."""
    efficiency_evaluations: int = Field(24, ge=0)
    """Evaluations per Ray Tune run of the 1-vs-2-worker throughput measurement (0 = skip)."""
    transfer_model: str | None = "resnet56"
    """Policy reuse: the agent of the first seed at the first target is applied to this model (None = skip)."""
    transfer_method: str = "ddpg"
    """The agent method reused: its run (first seed, first target) is the source unless `transfer_source` is
    given, and the warm-started and from-scratch searches on the transfer model run with its settings, so that
    reuse is judged within one search method. An agent searcher or a `variants` name of one."""
    transfer_source: str | None = None
    """Run folder of a finished search of `transfer_method` whose agent.zip and best_policy.json are reused instead
    of this bench's own run (policy reuse from an earlier benchmark)."""
    transfer_prior: bool = False
    """Warm starts also screen with a prior of the source search's scored policies (`search --prior`, the source's
    evaluations.csv beside its best policy); needs a screening `transfer_method` (agent.candidates > 1)."""
    transfer_fraction: float = Field(0.25, gt=0, le=1)
    """Budget of the warm-started search, as a fraction of `evaluations`."""
    transfer_overrides: list[str] = Field(default_factory=list)
    """Extra dotted.key=value overrides for the transfer model's runs (e.g. its baseline's train.epochs)."""
    transfer_warm_seeds: list[Seed] = Field(default_factory=list)
    """More warm starts, one per search.seed listed, beside the first seed's (a quarter of the from-scratch cost
    each): the target is then also checked on their mean. The from-scratch search runs once, with the first seed,
    unless `transfer_scratch_seeds` lists more."""
    transfer_scratch_seeds: list[Seed] = Field(default_factory=list)
    """More from-scratch searches, one per search.seed listed, beside the first seed's (the whole budget each): the
    target is then also checked against the mean of the from-scratch bests, not one seed's, which may be a lucky draw."""
    zoo: list[str] = Field(default_factory=lambda: ["lenet5", "vgg_small", "resnet20", "resnet56", "mobilenetv2_small"])
    """Models of the MACs-vs-latency speed-up table."""

    @field_validator("macs_targets")
    @classmethod
    def _targets_in_range(cls, values: list[float]) -> list[float]:
        if not values or any(not 0 < v < 1 for v in values) or len(set(values)) != len(values):
            raise ValueError("expected a non-empty list of MACs targets in (0, 1) without repeats")
        return values

    @field_validator("methods", "seeds")
    @classmethod
    def _not_empty(cls, values: list) -> list:
        if not values or len(set(values)) != len(values):
            raise ValueError("expected a non-empty list without repeats")
        return values

    @field_validator("variants")
    @classmethod
    def _variant_names_are_file_names(cls, variants: dict) -> dict:
        """A variant names its runs' folders and files (runs/<name>-m50-s0): `../x` wrote them beside runs/."""
        for name in variants:
            if not names_one_folder(name):
                raise ValueError(f"variant name {name!r}: expected a name for files and folders: no / or \\, not "
                                 f". or .., not empty")
        return variants

    @model_validator(mode="after")
    def _transfer_seeds_apart(self) -> "BenchConfig":
        for name, seeds in (("transfer_warm_seeds", self.transfer_warm_seeds),
                            ("transfer_scratch_seeds", self.transfer_scratch_seeds)):
            if len(set(seeds)) != len(seeds) or self.seeds[0] in seeds:
                raise ValueError(f"bench.{name} must list seeds without repeats and without the first of "
                                 f"bench.seeds ({self.seeds[0]}, whose search always runs), got {seeds}")
        return self


class RunConfig(Section):
    """One run: data, model, baseline training, pruning, evaluation."""

    name: str = "run"
    """Run name; results go to results/<name>/ unless --out is given."""

    @field_validator("name")
    @classmethod
    def _name_is_one_folder(cls, name: str) -> str:
        """The name is a folder under results/ (and a study's name): `../x` wrote outside it, `..` into its parent."""
        if not names_one_folder(name):
            raise ValueError("expected a name for one folder under results/: no / or \\, not . or .., not empty; "
                             "to write elsewhere, give --out")
        return name

    seed: Seed = 0
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda, cuda:N."""
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads (None = torch's default)."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)

    @property
    def search_seed(self) -> int:
        return self.seed if self.search.seed is None else self.search.seed

    @model_validator(mode="before")
    @classmethod
    def _searcher_runs_its_own_agent(cls, data: Any) -> Any:
        """search.searcher names the agent an agent search runs, and agent.name is the agent built: one given alone
        sets the other (a `search.searcher: td3` once ran agent.name's default, DDPG), two that differ are refused."""
        if not isinstance(data, dict):
            return data
        searcher, name = explicit(data.get("search"), "searcher"), explicit(data.get("agent"), "name")
        if searcher in AGENT_NAMES and name is None:
            return {**data, "agent": with_value(data.get("agent"), "name", searcher)}
        if searcher is None and name in AGENT_NAMES:
            return {**data, "search": with_value(data.get("search"), "searcher", name)}
        if searcher in AGENT_NAMES and name in AGENT_NAMES and name != searcher:  # an unknown name: its own error
            raise ValueError(f"search.searcher is {searcher!r} but agent.name is {name!r}: an agent search runs the "
                             f"agent it names; set search.searcher alone (agent.name follows it)")
        return data

    @model_validator(mode="after")
    def _one_target(self) -> "RunConfig":
        if self.prune.macs_target is not None and self.prune.uniform_ratio is not None:
            raise ValueError("give prune.macs_target or prune.uniform_ratio, not both")
        return self


def explicit(section: Any, key: str) -> Any:
    """The value `key` was given in a raw section (a mapping, or a section built in code), else None."""
    if isinstance(section, dict):
        return section.get(key)
    if isinstance(section, BaseModel) and key in section.model_fields_set:
        return getattr(section, key)
    return None


def with_value(section: Any, key: str, value: Any) -> Any:
    """A raw section (absent, a mapping or a section built in code) with `key` set to `value`; anything else is
    returned as it is, for validation to refuse."""
    if isinstance(section, BaseModel):  # validated again: its other fields' checks may depend on `key`
        return type(section).model_validate({**section.model_dump(exclude_unset=True), key: value})
    if section is None or isinstance(section, dict):
        return {**(section or {}), key: value}
    return section


def format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a check across sections names its fields in its message
            lines.append(f"{source}: {message}")
            continue
        lines.append(f"{source}: field `{'.'.join(str(p) for p in err['loc'])}`: {message}{got_text}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'prune.steps=6' -> (['prune', 'steps'], 6); the value is read as YAML so types come out right."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r}: expected dotted.key=value, e.g. prune.steps=6")
    try:
        parsed = yaml.load(value, Loader=UniqueKeyLoader) if value != "" else None
    except yaml.constructor.ConstructorError as exc:  # e.g. {widths: [8], widths: [16]}
        raise UserError(f"override {text!r}: {exc.problem}") from None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {text!r}: `{part}` is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def validated(raw: dict[str, Any], overrides: list[str], source: str) -> RunConfig:
    """`raw` with `overrides` applied, as a RunConfig; every error is a UserError naming `source` and the field."""
    try:
        return RunConfig.model_validate(apply_overrides(raw, overrides))
    except ValidationError as exc:
        raise UserError(format_errors(exc, source)) from None
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps the last one
    without a word, so a second `macs_target:` further down a section silently replaced the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping (first at line {first_line[key]})",
                    key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read and validate a YAML config; every error names the file and the field."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        file = Path(path)
        if not file.is_file():
            raise UserError(f"{file}: config file not found")
        try:
            with file.open(encoding="utf-8") as stream:  # the stream's name goes into YAML's error marks
                loaded = yaml.load(stream, Loader=UniqueKeyLoader)
        except yaml.YAMLError as exc:
            raise UserError(f"{file}: not valid YAML ({exc})") from None
        except UnicodeDecodeError as exc:
            raise UserError(f"{file}: not a YAML config (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
        if loaded is None:  # an empty file is a slip far more often than a wish for every default (a 30-epoch ResNet-20)
            raise UserError(f"{file}: the config is empty; give its sections (see configs/), or `{{}}` for every default")
        if not isinstance(loaded, dict):
            raise UserError(f"{file}: expected a mapping of sections at the top level, got {type(loaded).__name__}")
        raw = loaded
        raw.setdefault("name", file.stem)
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(format_errors(exc, source)) from None
