"""Error-tolerance mode of the search stage (Play-and-Prune): the smallest net whose
validation metric stays within ``search.max_drop`` of the dense net's."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any

from repas.config import PipelineConfig
from repas.search import Budget, extract_subnet, gate_masks, gate_scores, method_class, round_masks
from repas.search.cost import format_cost
from repas.search.tolerance import shrinking_targets, tolerance_search
from repas.stages.common import cost_model, environment, model_facts, stage_dir, width_step
from repas.stages.methods import method_search
from repas.stages.training import dense_teacher
from repas.supernet import RepNet, apply_masks, fuse_repnet
from repas.task_data import TaskData
from repas.train import Trainer

log = logging.getLogger("repas.stages")


def tolerance_search_stage(cfg: PipelineConfig, model: RepNet, data: TaskData
                           ) -> tuple[RepNet, dict[str, Any], Budget]:
    """Targets shrink by ``search.shrink`` a round; PaS searches ``round_epochs`` a round,
    continuing from the last round; another method runs at each target from the trained
    net. Every round's net is then trained ``round_epochs`` at its masks to recover before
    it is validated. Returns the net of the last round within the drop (the trained net if
    none was), its report, and its budget, whose target the extract stage then meets with
    the very masks evaluated here."""
    s = cfg.search
    fn = cost_model(cfg, model.spec, s.metric)
    dense = float(fn(model.spec.widths))
    step = width_step(cfg, fn)
    val, task = data.val_batches(s), data.task(s, model.spec)
    round_cfg = dataclasses.replace(s, epochs=s.round_epochs)
    root = stage_dir(cfg, "search")
    trained = copy.deepcopy(model)
    started = time.perf_counter()
    rounds_run: list[float] = []
    teacher = dense_teacher(cfg, "search") if s.distill > 0 else None

    def validate(net: RepNet) -> float:
        return task.evaluate(fuse_repnet(net.eval()), val)[data.primary]

    def run_round(target: float) -> tuple[list[int], float, float, RepNet] | None:
        out = root / f"round-{len(rounds_run) + 1}"
        rounds_run.append(target)
        budget = Budget(model.spec, target, s.metric, s.alpha, fn)
        if s.method == "pas":  # PaS continues: each round tightens the same search
            pas = method_class("pas")(model, budget, step=step, tolerance=cfg.extract.tolerance)
            Trainer(model, task, round_cfg, out, terms=[pas], gate_lr=s.gate_lr, teacher=teacher).fit(
                data.train_loader(s))
            net = copy.deepcopy(model.cpu())
        else:
            sub_cfg = dataclasses.replace(cfg, run_dir=str(out), search=round_cfg)
            net, _ = method_search(sub_cfg, copy.deepcopy(trained), budget, False, data)
        # Prune, then recover (Play-and-Prune): the round's net is cut where its gates are
        # (widths rounded to the step; no fit to the target: a fit would cut channels the
        # search kept or switch back on ones it switched off), then trained at those masks for
        # round_epochs, the same for every method, before it is judged on validation.
        net.eval()
        scores = gate_scores(net)
        apply_masks(net, round_masks(gate_masks(net), scores, step), scores)
        Trainer(net, task, round_cfg, out / "recover", teacher=teacher).fit(data.train_loader(s))
        sub = extract_subnet(net.cpu().eval(), gate_masks(net))
        return sub.spec.widths, float(fn(sub.spec.widths)), validate(sub), net

    reference = validate(trained)
    log.info(f"search ({s.method}, error tolerance): dense validation {data.primary} {reference:.4g}, allowed drop "
             f"{s.max_drop:g}; targets shrink by {s.shrink:g} a round from {format_cost(dense, s.metric)}")
    state, best, rounds = tolerance_search(reference, shrinking_targets(dense, s.shrink, s.min_target), run_round,
                                           s.max_drop)
    net = state if state is not None else trained
    # the extract stage meets this target with the round's own masks (their cost is in the band)
    target = best.cost if best is not None else dense
    broke = rounds[-1] if rounds and not rounds[-1].within else None
    report = {"stage": "search", **model_facts(net), "seconds": time.perf_counter() - started,
              "environment": environment(), "config": dataclasses.asdict(s),
              "tolerance": {"metric": data.primary, "reference": reference, "max_drop": s.max_drop,
                            "accepted": best.as_dict() if best else None,
                            "broke": broke.as_dict() if broke else None,
                            "rounds": [r.as_dict() for r in rounds]}}
    if best is None:
        log.warning("search: no round stayed within the drop; the result is the dense net")
    return net, report, Budget(model.spec, target, s.metric, s.alpha, fn)
