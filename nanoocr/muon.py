"""
Muon for weight matrices, AdamW for the rest, in one optimiser (one state dict, one lr schedule).

Muon is SGD with Nesterov momentum whose update of each weight matrix (a conv filter bank read as an
out_channels x in_channels*kh*kw matrix) is replaced by the nearest semi-orthogonal matrix, found by a few
Newton-Schulz iterations: every direction of the matrix moves at the same rate. Keller Jordan's nanoGPT and
CIFAR-10 speedruns and nanochat train with it. Here it is what makes a from-scratch encoder learn glyphs fast
enough for a CPU: the glyph probe's accuracy after 150 steps went from 9.9 % (AdamW) to 54 % (dev/LOG.md
section 6). Embeddings, the decoder's head, gains and biases stay with AdamW, as in nanochat.

Not distributed: under DDP every rank holds the same averaged gradient and computes the same update.
"""

import torch


@torch.no_grad()
def orthogonalize(g, steps=5):
    """(..., rows, cols) -> about U V^T of each matrix's SVD (singular values pushed into ~[0.7, 1.2]): a quintic
    Newton-Schulz iteration tuned for speed over exactness, in bf16."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1: the basin
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return (x.mT if tall else x).to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Param groups with muon=True take Muon steps (lr, momentum, weight_decay, ns_steps), the others AdamW's
    (lr, betas, eps, weight_decay)."""

    def __init__(self, groups, lr, betas=(0.9, 0.95), eps=1e-8, momentum=0.95, ns_steps=5):
        super().__init__(groups, dict(lr=lr, betas=betas, eps=eps, momentum=momentum, ns_steps=ns_steps,
                                      weight_decay=0.0, muon=False))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                p.mul_(1 - group["lr"] * group["weight_decay"])  # decoupled, before the step (as torch's AdamW)
            if group["muon"]:
                self._muon(params, group)
            else:
                for p in params:
                    self._adamw(p, group)

    def _muon(self, params, group):
        by_shape = {}
        for p in params:
            by_shape.setdefault(p.shape, []).append(p)
        for shape, ps in by_shape.items():  # one batched Newton-Schulz per shape (17 of the cpu model's are 256^2)
            grads = []
            for p in ps:
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                grads.append(p.grad.lerp(buf, group["momentum"]))  # Nesterov
            rows, cols = shape[0], grads[0][0].numel()
            update = orthogonalize(torch.stack(grads).view(len(ps), rows, cols), group["ns_steps"])
            # a tall matrix's update is scaled up so that its columns move as far as a square matrix's
            scale = group["lr"] * max(1.0, rows / cols) ** 0.5
            for p, u in zip(ps, update):
                p.add_(u.view(shape), alpha=-scale)

    def _adamw(self, p, group):
        st = self.state[p]
        if not st:
            st.update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(p),
                      exp_avg_sq=torch.zeros_like(p))
        b1, b2 = group["betas"]
        st["step"] += 1
        t = float(st["step"])
        st["exp_avg"].lerp_(p.grad, 1 - b1)
        st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        denom = (st["exp_avg_sq"] / (1 - b2 ** t)).sqrt_().add_(group["eps"])
        p.addcdiv_(st["exp_avg"], denom, value=-group["lr"] / (1 - b1 ** t))
