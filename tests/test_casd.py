"""``casd``: PaS with the dense net distilled into the searching supernet (issue 33)."""

import torch
from test_baselines import attach, inputs, supernet

from repas.search import Budget, spec_cost


def test_the_teacher_is_the_supernet_as_the_search_began_and_its_term_reaches_the_gates():
    model = supernet()
    method = attach("casd", model, Budget(model.spec, 0.5 * spec_cost(model.spec), "macs"))
    assert method.trains and method.learns_gates
    x = inputs(16)
    model.eval()
    with torch.no_grad():
        assert float(method.batch_loss(x, model(x))) < 1e-10  # identical nets: nothing to distil
    with torch.no_grad():  # half the channels of every gated layer switched off
        for g in model.gate_modules():
            if g is not None:
                g.weight[: len(g.weight) // 2] = -1.0
    model.train()
    loss = method.batch_loss(x, model(x))
    assert float(loss.detach()) > 0 and method.metrics()["distill_loss"] > 0
    loss.backward()
    grads = [g.weight.grad for g in model.gate_modules() if g is not None]
    assert any(gr is not None and float(gr.abs().sum()) > 0 for gr in grads)
    assert all(p.grad is None for p in method.teacher.parameters())  # the teacher stays as it was
