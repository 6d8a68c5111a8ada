"""Cost of one shared evaluation vs the forward passes it needs (target: at most 1.5x).

    python -m bench.evaluator_cost [CONFIG] [dotted.key=value ...]

Times `Evaluator.evaluate` on a 50%-MACs uniform policy against, on the same pruned model,
just its forward passes: the adaptive-BN batches (train mode) plus the validation split (eval
mode). The ratio is the overhead of copying, pruning and bookkeeping. Medians of repeats.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from bench.common import load_run, write_results
from pruning.bn import recalibrate_batchnorm
from pruning.evaluate import EvalSettings, Evaluator
from pruning.policy import uniform_for_macs
from pruning.training import evaluate_accuracy
from pruning.units import configured_units


def main(argv: list[str]) -> None:
    config = argv[0] if argv else "configs/resnet20_fmnist.yaml"
    cfg, data, base = load_run(config, argv[1:])
    graph = configured_units(base.model, data.input_shape, cfg.prune)
    evaluator = Evaluator(base.model, data, graph, EvalSettings.from_config(cfg))
    policy = uniform_for_macs(graph, 0.5, cfg.prune.round_to)
    evaluator.evaluate(policy)  # warm-up
    full, forward = [], []
    for _ in range(5):
        start = time.perf_counter()
        evaluator.evaluate(policy)
        full.append(time.perf_counter() - start)
        model, _ = evaluator.prune_copy(policy)
        start = time.perf_counter()
        recalibrate_batchnorm(model, evaluator.bn_batches)
        evaluate_accuracy(model, evaluator.x_val, evaluator.y_val, evaluator.settings.val_batch_size)
        forward.append(time.perf_counter() - start)
    ratio = statistics.median(full) / statistics.median(forward)
    payload = {"config": config, "model": cfg.model.name, "evaluate_s": full, "forward_passes_s": forward,
               "ratio": ratio, "bn_images": sum(len(b) for b in evaluator.bn_batches), "val_images": len(evaluator.y_val),
               "target": 1.5, "met": ratio <= 1.5}
    md = (f"# Evaluator cost ({cfg.model.name}, `{config}`)\n\n"
          f"One evaluation (copy, prune to 50% MACs, adaptive BN on {payload['bn_images']} images, accuracy on "
          f"{payload['val_images']} validation images): median **{statistics.median(full):.3f} s**; its forward "
          f"passes alone: median **{statistics.median(forward):.3f} s**; ratio **{ratio:.3f}** (target <= 1.5, "
          f"{'met' if ratio <= 1.5 else 'NOT met'}). {torch.get_num_threads()} threads.\n\n"
          f"Regenerate: `python -m bench.evaluator_cost {config}`\n")
    print(md)
    write_results(f"evaluator_cost_{cfg.model.name}", payload, md)


if __name__ == "__main__":
    main(sys.argv[1:])
