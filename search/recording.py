"""The driver's sink for finished evaluations: Optuna study + live progress line (done/total, best, ETA)."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from search.review import OptunaRecorder

SCREEN_ATTRS = ("candidates", "predicted_reward", "predicted_std", "random_candidate", "prior_weight")
"""How a screening agent chose the policy (`PruningAgent.last_screen`): recorded beside its real reward."""
ATTRS = ("reward", "macs", "params", "latency_ratio", "node_id", "pid", "eval_seconds", "setup_seconds", "episode",
         "trial_id", *SCREEN_ATTRS)


class EvaluationSink:
    """Called once per finished evaluation with its id, result dict and failure flag.

    Picklable (Ray Tune saves its callbacks with the experiment): the study connection and the
    progress bar are opened lazily in whichever process uses it.
    """

    def __init__(self, storage: str, study_name: str, unit_names: list[str], searcher: str, total: int,
                 show_progress: bool = True, new: bool = False):
        self.storage, self.study_name, self.unit_names, self.new = storage, study_name, unit_names, new
        self.searcher, self.total, self.show_progress = searcher, total, show_progress
        self._recorder: OptunaRecorder | None = None
        self._bar: Any = None
        self.best: float | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_recorder": None, "_bar": None}

    @property
    def recorder(self) -> OptunaRecorder:
        if self._recorder is None:
            self._recorder = OptunaRecorder(self.storage, self.study_name, self.unit_names, new=self.new)
            # the study this search made: every later open (a resume, Tune's saved callback) loads it by name
            self.study_name, self.new = self._recorder.study.study_name, False
        return self._recorder

    def _progress(self) -> Any:
        if self._bar is None:
            done = sum(1 for t in self.recorder.study.get_trials(deepcopy=False))
            self._bar = tqdm(total=self.total, initial=min(done, self.total), desc=f"search ({self.searcher})",
                             unit="eval", disable=not self.show_progress)
        return self._bar

    def __call__(self, evaluation_id: str, result: dict, failed: bool = False) -> None:
        attrs = {"searcher": self.searcher, **{k: result[k] for k in ATTRS if k in result}}
        bar = self._progress()  # opened before this evaluation is recorded: it starts from those recorded before
        if not self.recorder.record(evaluation_id, result.get("ratios", {}), result.get("accuracy"),
                                    result.get("macs_ratio"), attrs, failed=failed):
            return
        if not failed and "reward" in result and (self.best is None or result["reward"] > self.best):
            self.best = result["reward"]
        bar.update(1)
        if self.best is not None:
            bar.set_postfix(best_reward=f"{self.best:.4f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
