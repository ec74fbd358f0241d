"""Fused packs on a CUDA GPU: the pack's Adam kernel, the graphed fused step against solo steps, a pack end to end.

    python -m pytest tests/test_fused_cuda.py -q -rA    # what benchmarks/gpu_check.sh runs; skipped without CUDA

On a GPU no two runs are bit-equal (bf16 autocast; cuDNN picks its algorithms per shape, and a
grouped convolution is another shape than a plain one), so a fused cell is held to its solo run
where rounding has not yet grown: the first steps' losses and the first epoch's validation loss
(STEP_TOL, EPOCH_TOL), and to its solo run's structure after that. Each test prints the
differences it saw (``-rA`` shows them).
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (benchmarks/gpu_check.sh runs these on one)", allow_module_level=True)

from autolabel.adam import StackedAdam, kernel_update, stacked_update  # noqa: E402
from autolabel.cell import run_cell  # noqa: E402
from autolabel.checkpoint import load_trained  # noqa: E402
from autolabel.control import RunControl  # noqa: E402
from autolabel.fused import FusedModel, cell_losses  # noqa: E402
from autolabel.fusing import form_packs, train_packs  # noqa: E402
from autolabel.loop import new_model, new_optimizer  # noqa: E402
from autolabel.options import CellOptions, Round  # noqa: E402
from autolabel.state import configure_device, load_data  # noqa: E402
from autolabel.step import TrainStep  # noqa: E402
from autolabel.train import train_cells  # noqa: E402
from tests.conftest import epoch_keys, history_rows, metrics_of  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`",
                                        "ignore:This instance was constructed with capturable=True")  # fmt: skip

STEP_TOL = 3e-2  # relative, a step's loss (bf16)
EPOCH_TOL = 5e-2  # relative, the first epoch's validation loss
DATA = {"kind": "synthetic", "subjects": 16, "rows": 64, "cols": 128}
CUDA = torch.device("cuda")
CELLS = {"a": (1, 0.0015, 0.9, 0.75), "b": (2, 0.001, 0.8, 0.5), "c": (3, 0.002, 1.0, 0.25)}


def test_the_pack_adam_kernel_steps_each_cell_as_fused_torch_adam():
    g = torch.Generator().manual_seed(0)
    shapes, lrs = [(64, 32, 3, 3), (64,), (3, 64, 1, 1)], [0.003, 0.001, 0.0005]
    cells = [[torch.randn(s, generator=g).to(CUDA) for s in shapes] for _ in lrs]
    for update in (kernel_update, stacked_update):
        torch_cells = [[p.clone().requires_grad_() for p in c] for c in cells]
        adams = [torch.optim.Adam(ps, lr=torch.tensor(lr, device=CUDA), fused=True, capturable=True)
                 for ps, lr in zip(torch_cells, lrs)]  # fmt: skip  (as autolabel.loop.new_optimizer on CUDA)
        stacked = [torch.stack([c[i] for c in cells]).requires_grad_() for i in range(len(shapes))]
        adam = StackedAdam(stacked, len(lrs))
        adam.lr.copy_(torch.tensor(lrs))
        for step in range(4):
            if step == 2:
                adam.skip[2] = 1.0  # diverged: left out from now on
                frozen = [p[2].clone() for p in stacked]
            grads = [[torch.randn(s, generator=g).to(CUDA) for s in shapes] for _ in lrs]
            for k, opt in enumerate(adams[:2] if step >= 2 else adams):
                for p, grad in zip(torch_cells[k], grads[k]):
                    p.grad = grad.clone()
                opt.step()
            for i, p in enumerate(stacked):
                p.grad = torch.stack([grad[i] for grad in grads])
            adam.steps.add_(1.0 - adam.skip)
            update(stacked, [p.grad for p in stacked], adam.exp_avg, adam.exp_avg_sq, adam.steps, adam.lr, adam.skip)
        worst = max((p[k] - q).abs().max().item() for k in range(2) for p, q in zip(stacked, torch_cells[k]))
        print(f"{update.__name__}: largest difference from torch.optim.Adam(fused=True) {worst:.1e}")
        assert worst < 1e-6
        assert all(torch.equal(p[2], q) for p, q in zip(stacked, frozen))


def solo_and_fused_steps(base_model: str, batch: int):
    """Three cells' solo TrainSteps and their fused pack's, from the same initialisations, graphed."""
    configure_device(CUDA)
    options = [CellOptions(device="cuda", seed=seed, base_model=base_model, batch_size=batch, dataset=DATA)
               for seed, *_ in CELLS.values()]  # fmt: skip
    control = RunControl(shared_data={})
    data = load_data(options[0], CUDA, "test", control)
    solo = []
    for o, (_, lr, _, bce) in zip(options, CELLS.values()):
        model = new_model(o, data, CUDA, 0, control.init_lock)
        optimizer, _ = new_optimizer(model, Round(lr=lr, bce_weight=bce))
        solo.append(TrainStep(model, optimizer, data.x_train, data.y_train, bce))
    fused_model = FusedModel([new_model(o, data, CUDA, 0, control.init_lock) for o in options])
    adam = StackedAdam(list(fused_model.stacked.values()), len(options))
    adam.lr.copy_(torch.tensor([lr for _, lr, _, _ in CELLS.values()]))
    bces = [bce for *_, bce in CELLS.values()]
    return solo, TrainStep(fused_model, adam, data.x_train, data.y_train, bces, loss_fn=cell_losses), len(data.x_train)


@pytest.mark.parametrize("base_model, batch", [("resnet18", 4), ("resnet34", 2)])
def test_a_graphed_fused_step_trains_each_cell_as_its_solo_step(base_model, batch):
    solo, fused, n = solo_and_fused_steps(base_model, batch)
    g = torch.Generator().manual_seed(0)
    worst = []
    for _ in range(6):  # eager, then the capture, then replays
        idx = torch.stack([torch.randperm(n, generator=g)[:batch] for _ in solo]).to(CUDA)
        fused.sums.zero_()
        fused(idx)
        for k, step in enumerate(solo):
            step.sums.zero_()
            step(idx[k])
        want = torch.stack([s.sums[2] for s in solo])
        worst.append(((fused.sums[:, 2] - want).abs() / want.abs()).max().item())
    print(f"{base_model} batch {batch}: per-step relative loss difference, fused vs solo: "
          + " ".join(f"{w:.1e}" for w in worst))  # fmt: skip
    assert fused.captured and all(s.captured for s in solo)  # both replayed CUDA graphs
    assert max(worst) < STEP_TOL


def write_cells(root, names, until: int = 1):
    paths = []
    for name in names:
        seed, lr, gamma, bce = (CELLS | {"d": (4, 10.0, 1.0, 0.5)})[name]
        path = root / name
        path.mkdir(parents=True)
        options = {"device": "cuda", "dataset": DATA, "seed": seed, "batch_size": 4, "until": until}
        plan = [{"lr": lr, "gamma": gamma, "bce_weight": bce, "num_epochs": 2},
                {"lr": lr / 2, "gamma": gamma, "bce_weight": bce / 2, "num_epochs": 1}]  # fmt: skip
        (path / "options.json").write_text(json.dumps(options))
        (path / "plan.json").write_text(json.dumps(plan))
        paths.append(path)
    return paths


def test_a_fused_pack_trains_its_cells_end_to_end_and_a_diverging_one_alone(tmp_path):
    fused = write_cells(tmp_path / "fused", ["a", "b", "c", "d"])
    solo = write_cells(tmp_path / "solo", ["a", "b", "c"])
    with contextlib.redirect_stdout(io.StringIO()):
        code = train_cells([str(c) for c in fused], RunControl(checkpoint_every_s=3600), fused=True)
        for c in solo:
            assert run_cell(str(c), RunControl(checkpoint_every_s=3600), say=lambda line: None) == 0
    assert code == 3 and metrics_of(fused[3]).status == "diverged"
    seen = []
    for f, s in zip(fused, solo):
        got, want = history_rows(f), history_rows(s)
        assert epoch_keys(got) == epoch_keys(want) and [r["lr"] for r in got] == [r["lr"] for r in want]
        first = abs(float(got[0]["val_loss"]) / float(want[0]["val_loss"]) - 1)
        dice = max(abs(a - b) for a, b in zip(metrics_of(f).dice.values(), metrics_of(s).dice.values()))
        seen.append(f"{f.name}: first epoch's validation loss {first:.1e} apart, final Dice {dice:.3f}")
        assert first < EPOCH_TOL and metrics_of(f).status == "complete"
        load_trained(f / "model.pt", "cuda")
    print("fused vs solo on CUDA: " + "; ".join(seen))


def test_a_fused_checkpoint_on_cuda_resumes_solo(tmp_path):
    cells = write_cells(tmp_path, ["a", "b"])
    control = RunControl(checkpoint_every_s=3600)

    def say_for(uri: str):
        def say(line: str) -> None:  # a stop as the first epoch ends: both checkpoint it, mid-round
            if line.split()[:3] == ["0", "0", "1"]:
                control.request_stop("SIGTERM")
        return say

    packs, rest = form_packs([str(c) for c in cells], False, None)
    assert not rest and train_packs(packs, control, False, None, say_for) == [143, 143]
    ckpt = torch.load(cells[0] / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["fused"] and len(ckpt["optimizer"]["state"]) > 0
    lines: list[str] = []
    assert run_cell(str(cells[0]), RunControl(checkpoint_every_s=3600), say=lines.append) == 0
    assert "resumed from checkpoint.pt at repeat 0 round 0 epoch 2" in lines and metrics_of(cells[0]).epochs == 3
