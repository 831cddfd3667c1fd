"""Muon (nanoocr/muon.py): the orthogonalised update, AdamW's half, which parameters it takes, checkpoints."""

import pytest
import torch
import torch.nn as nn
from conftest import tiny_model

from nanoocr import checkpoint as ck
from nanoocr.muon import MuonAdamW, orthogonalize
from nanoocr.train import TrainConfig, build_optimizer, set_lr


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_orthogonalize_keeps_the_directions_and_flattens_the_spectrum(shape):
    torch.manual_seed(0)
    # a badly conditioned matrix: singular values from 1e-3 to 10
    u, _, vh = torch.linalg.svd(torch.randn(shape), full_matrices=False)
    s = torch.logspace(1, -3, min(shape))
    g = u @ torch.diag(s) @ vh
    o = orthogonalize(g).float()
    d = u.T @ o @ vh.T  # o in g's singular bases: about diagonal (the same directions; bf16 blurs it a little)
    diag = torch.diagonal(d)
    assert (d - torch.diag(diag)).norm() < 0.2 * diag.norm()
    big = s > 0.1  # directions the 5 iterations have time to raise (x ~480); the smallest stay small
    assert diag[big].min() > 0.5 and diag.max() < 1.3, diag


def test_the_adamw_half_matches_torch_adamw():
    torch.manual_seed(0)
    a = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(7))]
    b = [nn.Parameter(p.detach().clone()) for p in a]
    ours = MuonAdamW([{"params": a, "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.95))
    ref = torch.optim.AdamW([{"params": b, "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(6):
        grads = [torch.randn_like(p) for p in a]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for p, q in zip(a, b):
        assert torch.allclose(p, q, atol=1e-6), (p - q).abs().max()


def test_the_muon_step_is_an_orthogonal_matrix_at_the_lr():
    torch.manual_seed(0)
    w = nn.Parameter(torch.zeros(16, 4, 3, 3))  # a conv filter bank: a 16 x 36 matrix
    opt = MuonAdamW([{"params": [w], "muon": True}], lr=0.1, momentum=0.0)
    w.grad = torch.randn_like(w)
    opt.step()
    sv = torch.linalg.svdvals(-w.detach().reshape(16, 36) / 0.1)
    assert sv.min() > 0.5 and sv.max() < 1.3, sv  # every direction moved about lr, whatever the gradient's scale


def test_build_optimizer_gives_muon_the_matrices_and_one_schedule_drives_both():
    model = tiny_model(vocab_size=300)
    tc = TrainConfig(lr=1e-3, matrix_lr=0.02, vision_lr_mult=0.5)
    opt = build_optimizer(model, tc, "cpu")
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]}
    mats = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    mats -= {"gpt.lm_head.weight", "vision_model.embeddings.patch_embedding.weight"}  # the head; CLIP's unused conv
    mats = {n for n in mats if model.get_parameter(n).requires_grad}
    assert muon == mats and "gpt.transformer.wte.weight" not in muon and "sam_model.pos_embed" not in muon
    set_lr(opt, 5e-4)  # half way down the schedule
    for g in opt.param_groups:
        vision = names[id(g["params"][0])].startswith(("sam_model", "vision_model"))
        want = (0.01 if g["muon"] else 5e-4) * (0.5 if vision else 1.0)
        assert g["lr"] == pytest.approx(want)
    assert type(build_optimizer(model, TrainConfig(lr=1e-3), "cpu")) is torch.optim.AdamW


def test_resuming_with_another_optimizer_says_so(tmp_path):
    model = tiny_model(vocab_size=300)
    adamw = build_optimizer(model, TrainConfig(), "cpu")
    ck.save_training_state(tmp_path, 3, model, adamw)
    muon = build_optimizer(model, TrainConfig(matrix_lr=0.02), "cpu")
    with pytest.raises(ck.CheckpointError, match="AdamW's, this run's optimizer is MuonAdamW"):
        ck.load_training_state(tmp_path, model, muon)
