"""The time-vectorized programs against the per-step ones: same ELBO, same gradients, analytic KL.

Every comparison seeds both forms the same way: the vectorized guides draw the same (B, z_dim) normals
in the same order as the per-step guides, so both see the same latent path. Float64 keeps the
tolerances tight enough that a missing or extra term, a leaked padded step or a doubled gradient
could not hide in rounding.
"""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, TorchDistributionMixin
from pyro.infer import SVI, TraceMeanField_ELBO

from dvae.data import collate
from dvae.infer import DynamicalELBO, elbo_terms, iw_bound
from dvae.infer.direct import direct_loss
from dvae.infer.elbo import site_kl_steps
from dvae.models import ModelConfig, build_model
from dvae.models.paths import GuidePath, PriorPath
from dvae.nn import Recurrence
from tests.conftest import make_batch

# (family, guide) pairs: the DMM has four guides (iaf: the flow guide, whose KL is sampled); "+bidirectional" and "+condition" switch on the
# bidirectional encoder and a condition c (c_dim = C_DIM) for the families that have them; "+balance" the
# RSSM's KL balancing (alpha 0.8)
VARIANTS = [("dmm", "dks"), ("dmm", "mean_field"), ("vrnn", "dks"), ("vrae", "dks"),
            ("dmm", "dks+bidirectional"), ("dmm", "mean_field+bidirectional"), ("vrae", "dks+bidirectional"),
            ("dmm", "dks+condition"), ("dmm", "mean_field+bidirectional+condition"), ("vrae", "dks+condition"),
            ("vrae", "dks+bidirectional+condition"), ("vae", "dks"),
            ("dmm", "ltr"), ("dmm", "ltr+condition"), ("dmm", "iaf"), ("dmm", "iaf+bidirectional+condition"),
            ("storn", "dks"), ("srnn", "dks"), ("srnn", "resq"), ("rssm", "dks"), ("rssm", "dks+balance"),
            ("dsae", "dks"), ("dsae", "dks+condition"),
            ("kvae", "dks")]
TIGHT = dict(rtol=1e-9, atol=1e-9)
C_DIM = 2


def tiny(family, u_dim=2, guide="dks", likelihood="gaussian", dtype=torch.float64, x_dim=3, **kw):
    guide, *options = guide.split("+")
    m = build_model(ModelConfig(family, x_dim=x_dim, u_dim=u_dim, z_dim=4, rnn_dim=8, transition_dim=8,
                                emission_dim=8, guide=guide, likelihood=likelihood,
                                bidirectional="bidirectional" in options, c_dim=C_DIM if "condition" in options else 0,
                                kl_balance=0.8 if "balance" in options else 0.0, **kw))
    return m.to(dtype)


def ragged(u_dim=2, lengths=(7, 5, 3), dtype=torch.float64, binary=False, garbage=True, categorical=False):
    """A padded batch with garbage in the padding: it must not reach any term. It carries a condition c
    (B, C_DIM), which only the conditional models read. ``categorical``: x one-hot rows (of the argmax
    of random normals)."""
    b = make_batch(lengths=lengths, u_dim=u_dim)
    x = (b.x > 0).to(dtype) if binary else b.x.to(dtype)
    if categorical:
        x = torch.nn.functional.one_hot(b.x.argmax(-1), b.x.shape[-1]).to(dtype)  # (B, T, x_dim)
        binary = True
    u = None if b.u is None else b.u.to(dtype)
    if garbage:
        x = torch.where(b.mask[..., None], x, torch.full_like(x, 1.0 if binary else 100.0))
        u = None if u is None else torch.where(b.mask[..., None], u, torch.full_like(u, -50.0))
    c = torch.randn(len(lengths), C_DIM, generator=torch.Generator().manual_seed(9)).to(dtype)  # (B, C_DIM)
    return b._replace(x=x, u=u, c=c)


def loss_and_grads(m, model, guide, batch, elbo, seed=3, annealing=1.0):
    """(differentiable loss value, {parameter name: .grad}) on a seeded draw."""
    m.zero_grad()
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, batch, annealing)
    loss.backward()
    return loss.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in m.named_parameters()}


def assert_same_grads(a, b, **tol):
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] is None) == (b[name] is None), name
        if a[name] is not None:
            torch.testing.assert_close(a[name], b[name], msg=lambda s: f"{name}: {s}", **tol)
    assert sum(g.abs().sum() for g in a.values() if g is not None) > 0


@pytest.mark.parametrize("family, guide", VARIANTS)
@pytest.mark.parametrize("u_dim", [0, 2])
@pytest.mark.parametrize("annealing, free_bits", [(1.0, 0.0), (0.3, 0.0), (0.5, 0.4)])
def test_both_forms_give_the_same_elbo_and_gradients(family, guide, u_dim, annealing, free_bits):
    m = tiny(family, u_dim, guide)
    batch = ragged(u_dim)
    elbo = DynamicalELBO(free_bits=free_bits)
    per_step = loss_and_grads(m, m.model, m.guide, batch, elbo, annealing=annealing)
    vectorized = loss_and_grads(m, *m.programs(vectorized=True), batch, elbo, annealing=annealing)
    torch.testing.assert_close(vectorized[0], per_step[0], **TIGHT)
    assert_same_grads(vectorized[1], per_step[1], **TIGHT)
    pyro.set_rng_seed(3)  # .loss gives the same number
    assert elbo.loss(*m.programs(), batch, annealing) == pytest.approx(per_step[0].item(), rel=1e-12)


@pytest.mark.parametrize("family, guide", VARIANTS)
@pytest.mark.parametrize("rnn_type", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical"])
def test_both_forms_agree_in_float32_with_a_discrete_likelihood(family, guide, rnn_type, likelihood):
    m = tiny(family, 0, guide, likelihood=likelihood, dtype=torch.float32, rnn_type=rnn_type)
    batch = ragged(0, lengths=(9, 2, 6, 1), dtype=torch.float32, binary=True, categorical=likelihood == "categorical")
    per_step = loss_and_grads(m, m.model, m.guide, batch, DynamicalELBO())
    vectorized = loss_and_grads(m, m.model_vectorized, m.guide_vectorized, batch, DynamicalELBO())
    torch.testing.assert_close(vectorized[0], per_step[0], rtol=1e-5, atol=1e-4)
    assert_same_grads(vectorized[1], per_step[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family, guide", VARIANTS)
@pytest.mark.parametrize("annealing", [1.0, 0.3])
def test_gradients_are_not_doubled(family, guide, annealing):
    """Pyro's own per-step TraceMeanField_ELBO is the reference; Trace_ELBO.differentiable_loss returns
    loss + (surrogate - surrogate.item()), so a per-particle loss returned as a tensor would double it."""
    m = tiny(family, 2, guide)
    batch = ragged(2)
    ref = loss_and_grads(m, m.model, m.guide, batch, TraceMeanField_ELBO(), annealing=annealing)
    # with and without the free-bits branch; not for the flow guide or the KVAE, whose sampled KL column
    # can be negative, so that even a tiny floor moves it
    elbos = (DynamicalELBO(),) if "iaf" in guide or family == "kvae" else (DynamicalELBO(), DynamicalELBO(free_bits=1e-12))
    for elbo in elbos:
        got = loss_and_grads(m, m.model_vectorized, m.guide_vectorized, batch, elbo, annealing=annealing)
        torch.testing.assert_close(got[0], ref[0], **TIGHT)
        assert_same_grads(got[1], ref[1], **TIGHT)
    # the SVI path (loss_and_grads) too
    m.zero_grad()
    pyro.set_rng_seed(3)
    value = DynamicalELBO().loss_and_grads(m.model_vectorized, m.guide_vectorized, batch, annealing)
    assert value == pytest.approx(ref[0].item(), rel=1e-12)
    assert_same_grads({n: p.grad for n, p in m.named_parameters()}, ref[1], **TIGHT)


@pytest.mark.parametrize("family, guide", VARIANTS)
def test_pyro_scores_the_same_elbo_as_the_loss_written_in_torch(family, guide):
    m = tiny(family, 2, guide)
    batch = ragged(2)
    pyro_form = loss_and_grads(m, m.model_vectorized, m.guide_vectorized, batch, DynamicalELBO(), annealing=0.7)
    m.zero_grad()
    pyro.set_rng_seed(3)
    loss = direct_loss(m, batch, 0.7)
    loss.backward()
    torch.testing.assert_close(loss.detach(), pyro_form[0], **TIGHT)
    assert_same_grads({n: p.grad for n, p in m.named_parameters()}, pyro_form[1], **TIGHT)


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vae", "storn", "srnn", "rssm", "dsae"])
def test_path_sites_keep_their_type_under_the_plate(family):
    m = tiny(family)
    batch = ragged()
    guide_trace = poutine.trace(m.guide_vectorized).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(m.model_vectorized, trace=guide_trace)).get_trace(batch)
    q, p = guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"]
    assert type(q) is GuidePath and type(p) is PriorPath  # not ExpandedDistribution
    assert q.batch_shape == (3,) and q.event_shape == (7, 4)
    assert model_trace.nodes["x"]["fn"].event_shape == (7, 3)
    columns = site_kl_steps(guide_trace.nodes["z"], model_trace.nodes["z"])
    assert columns.analytic and columns.steps and columns.kl.shape == (3, 7)
    assert (columns.kl[~batch.mask] == 0).all() and (columns.kl[batch.mask] > 0).all()


def _loss_spread(m, elbo, seeds=range(5)):
    """Spread of the loss across seeds on one-step sequences whose emitter ignores z: the only
    randomness left would be a sampled KL."""
    batch = ragged(lengths=(1, 1, 1), garbage=False)
    with torch.no_grad():
        m.emitter.net[-1].weight.zero_()
    losses = []
    for s in seeds:
        pyro.set_rng_seed(s)
        losses.append(elbo.loss(m.model_vectorized, m.guide_vectorized, batch))
    return max(losses) - min(losses)


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vae", "storn", "srnn", "rssm"])  # not the DSAE: its z_0's
# closed-form KL depends on the drawn code v, so its loss varies across seeds without any sampled KL
@pytest.mark.parametrize("elbo", [DynamicalELBO(), DynamicalELBO(free_bits=1e-9), TraceMeanField_ELBO()],
                         ids=["dynamical", "free_bits", "trace_mean_field"])
def test_the_kl_of_a_path_is_analytic(family, elbo):
    assert _loss_spread(tiny(family), elbo) == 0.0


@pytest.mark.parametrize("family", ["dmm", "vrnn", "vae"])
def test_the_analytic_kl_check_catches_an_expanded_distribution(family, monkeypatch):
    """Without its own ``expand``, the plate wraps GuidePath in an ExpandedDistribution and the KL falls
    back to a sampled one: the checks above must see it."""
    monkeypatch.setattr(GuidePath, "expand", TorchDistributionMixin.expand)
    m = tiny(family)
    batch = ragged()
    guide_trace = poutine.trace(m.guide_vectorized).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(m.model_vectorized, trace=guide_trace)).get_trace(batch)
    assert isinstance(guide_trace.nodes["z"]["fn"], ExpandedDistribution)
    assert not site_kl_steps(guide_trace.nodes["z"], model_trace.nodes["z"]).analytic
    assert _loss_spread(m, DynamicalELBO()) > 0


@pytest.mark.parametrize("family, guide", VARIANTS)
def test_elbo_terms_and_iw_bound_agree_between_the_forms(family, guide):
    m = tiny(family, 2, guide)
    batch = ragged(2)
    out = []
    for model, guide_fn in (m.programs(vectorized=False), m.programs(vectorized=True)):
        pyro.set_rng_seed(4)
        terms = elbo_terms(model, guide_fn, batch, num_particles=3)
        pyro.set_rng_seed(4)
        out.append((terms, iw_bound(model, guide_fn, batch, num_samples=5)))
    (a, iw_a), (b, iw_b) = out
    for key in ("log_lik", "kl", "elbo"):
        torch.testing.assert_close(b[key], a[key], **TIGHT)
    torch.testing.assert_close(iw_b, iw_a, **TIGHT)
    assert (b["log_lik"][~batch.mask] == 0).all() and (b["kl"][~batch.mask] == 0).all()


def test_padding_leaves_the_vectorized_terms_of_the_real_steps_unchanged():
    m = tiny("dmm")
    g = torch.Generator().manual_seed(3)
    x, u = torch.randn(5, 3, generator=g).double(), torch.randn(5, 2, generator=g).double()
    plain = collate([x], [u])
    padded = collate([x, torch.zeros(9, 3).double()], [u, torch.zeros(9, 2).double()])
    padded = padded._replace(x=padded.x[:1].clone(), u=padded.u[:1], mask=padded.mask[:1], lengths=padded.lengths[:1])
    padded.x[0, 5:] = 100.0
    terms = []
    for b in (plain, padded):
        pyro.set_rng_seed(7)
        terms.append(elbo_terms(m.model_vectorized, m.guide_vectorized, b))
    torch.testing.assert_close(terms[1]["log_lik"][:, :5], terms[0]["log_lik"], **TIGHT)
    torch.testing.assert_close(terms[1]["kl"][:, :5], terms[0]["kl"], **TIGHT)
    assert (terms[1]["log_lik"][:, 5:] == 0).all() and (terms[1]["kl"][:, 5:] == 0).all()


def test_the_dmm_prior_path_scores_every_step_as_its_sampler_draws_it():
    m = tiny("dmm")
    batch = ragged()
    trace = poutine.trace(poutine.uncondition(m.model_vectorized)).get_trace(batch)  # generation: sequential
    prior, path = trace.nodes["z"]["fn"], trace.nodes["z"]["value"]
    assert path.shape == (3, 7, 4) and trace.nodes["x"]["value"].shape == (3, 7, 3)
    loc, scale = prior.params(path)  # every step at once
    for t in range(7):  # the contract's step t, one at a time
        _, p = m.initial_state(3) if t == 0 else m.transition_step({"z": path[:, t - 1], "c": None}, None,
                                                                   batch.step_u(t - 1))
        torch.testing.assert_close(loc[:, t], p.base_dist.loc, **TIGHT)
        torch.testing.assert_close(scale[:, t], p.base_dist.scale, **TIGHT)


def test_the_vrnn_vectorized_model_cannot_run_unconditioned():
    m = tiny("vrnn")
    with pytest.raises(NotImplementedError, match="per-step"):
        poutine.trace(poutine.uncondition(m.model_vectorized)).get_trace(ragged())


def test_the_vrnn_model_reuses_the_guides_recurrence_with_the_same_result(monkeypatch):
    import dvae.models.vrnn as vrnn

    m = tiny("vrnn")
    batch = ragged()
    with_memo = loss_and_grads(m, m.model_vectorized, m.guide_vectorized, batch, DynamicalELBO(), annealing=0.6)
    hits = []
    real_get = vrnn.WeakTensorKeyDictionary.get

    class Spy(vrnn.WeakTensorKeyDictionary):
        def get(self, key, default=None):
            hits.append(real_get(self, key) is not None)
            return real_get(self, key, default)

    class Forgetful(vrnn.WeakTensorKeyDictionary):
        def __setitem__(self, key, value):
            pass

    monkeypatch.setattr(vrnn, "_GUIDE_FEATURES", Spy())
    loss_and_grads(m, m.model_vectorized, m.guide_vectorized, batch, DynamicalELBO())
    assert hits and all(hits)  # the model found the guide's recurrence for the guide's path
    monkeypatch.setattr(vrnn, "_GUIDE_FEATURES", Forgetful())  # the model runs its own (Recurrence.scan)
    without = loss_and_grads(m, m.model_vectorized, m.guide_vectorized, batch, DynamicalELBO(), annealing=0.6)
    torch.testing.assert_close(without[0], with_memo[0], **TIGHT)
    assert_same_grads(without[1], with_memo[1], **TIGHT)


@pytest.mark.parametrize("family, memo", [("srnn", "_GUIDE_D"), ("rssm", "_GUIDE_H")])
def test_the_model_reuses_the_guides_recurrence_of_srnn_and_rssm_with_the_same_result(family, memo, monkeypatch):
    """SRNN keeps the guide's d, RSSM the guide's h, beside the drawn path; without it the model runs its
    own multi-step RNN call: the same loss and gradients."""
    import importlib

    module = importlib.import_module(f"dvae.models.{family}")
    m = tiny(family)
    batch = ragged()
    hits = []
    real_get = module.WeakTensorKeyDictionary.get

    class Spy(module.WeakTensorKeyDictionary):
        def get(self, key, default=None):
            hits.append(real_get(self, key) is not None)
            return real_get(self, key, default)

    class Forgetful(module.WeakTensorKeyDictionary):
        def __setitem__(self, key, value):
            pass

    monkeypatch.setattr(module, memo, Spy())
    with_memo = loss_and_grads(m, m.model_vectorized, m.guide_vectorized, batch, DynamicalELBO(), annealing=0.6)
    assert hits and all(hits)
    monkeypatch.setattr(module, memo, Forgetful())
    without = loss_and_grads(m, m.model_vectorized, m.guide_vectorized, batch, DynamicalELBO(), annealing=0.6)
    torch.testing.assert_close(without[0], with_memo[0], **TIGHT)
    assert_same_grads(without[1], with_memo[1], **TIGHT)


@pytest.mark.parametrize("h0", [False, True])
def test_the_fused_relu_rnn_equals_torchs(h0):
    from dvae.nn import make_rnn, run_rnn

    rnn = make_rnn("rnn", 5, 7).double()
    y = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    state = torch.randn(1, 3, 7, dtype=torch.float64, requires_grad=True) if h0 else None
    w = torch.randn(3, 6, 7, dtype=torch.float64)
    grads = []
    for f in (lambda: rnn(y, state)[0], lambda: run_rnn(rnn, y, state)):
        leaves = list(rnn.parameters()) + [y] + ([state] if h0 else [])
        for p in leaves:
            p.grad = None
        out = f()
        ((out * w).sum() + (out ** 2).sum()).backward()
        grads.append([out.detach()] + [p.grad.clone() for p in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, **TIGHT)


def test_the_fused_combiner_scan_equals_the_step_loop():
    from dvae.nn import Combiner

    c = Combiner(4, 8).double()
    B, T = 3, 6
    h = torch.randn(B, T, 8, dtype=torch.float64, requires_grad=True)
    z0 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(T, B, 4, dtype=torch.float64)
    w = torch.randn(B, T, 4, dtype=torch.float64)

    def loop():
        z, out = z0.expand(B, -1), []
        for t in range(T):
            loc, scale = c(z, h[:, t])
            z = loc + eps[t] * scale
            out.append((loc, scale, z))
        return [torch.stack(v, 1) for v in zip(*out)]

    grads = []
    for f in (loop, lambda: c.scan(z0.expand(B, -1), h, eps)):
        leaves = list(c.parameters()) + [h, z0]
        for p in leaves:
            p.grad = None
        loc, scale, z = f()
        ((loc * w).sum() + (scale * w ** 2).sum() + (z.sin() * w).sum()).backward()
        grads.append([loc.detach(), scale.detach(), z.detach()] + [p.grad.clone() for p in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, **TIGHT)


@pytest.mark.parametrize("rnn_type", ["gru", "lstm", "rnn"])
def test_recurrence_scan_equals_the_cell_loop(rnn_type):
    r = Recurrence(rnn_type, 5, 7).double()
    with torch.no_grad():
        r.h_0.normal_()
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    state, outs = r.initial(3), []
    for t in range(6):
        state = r(x[:, t], state)
        outs.append(Recurrence.output(state))
    torch.testing.assert_close(r.scan(x, r.initial(3)), torch.stack(outs, 1), **TIGHT)


@pytest.mark.parametrize("family, guide", VARIANTS)
def test_svi_follows_the_same_trajectory_with_either_form(family, guide):
    batch = ragged(2)
    params = []
    for vectorized in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(0)
        m = tiny(family, 2, guide)
        svi = SVI(*m.programs(vectorized), pyro.optim.Adam({"lr": 1e-2}), DynamicalELBO(free_bits=0.1))
        pyro.set_rng_seed(1)
        losses = [svi.step(batch, 0.5) for _ in range(4)]
        params.append((losses, [p.detach().clone() for p in m.parameters()]))
    assert params[0][0] == pytest.approx(params[1][0], rel=1e-9)
    for a, b in zip(params[0][1], params[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("free_bits", [0.0, 0.3])
def test_a_sequence_mask_from_poutine_masks_both_forms_alike(free_bits):
    m = tiny("dmm")
    batch = ragged()
    keep = torch.tensor([True, False, True])
    out = []
    for model, guide in (m.programs(False), m.programs(True)):
        out.append(loss_and_grads(m, poutine.mask(model, mask=keep), poutine.mask(guide, mask=keep), batch,
                                  DynamicalELBO(free_bits=free_bits)))
    torch.testing.assert_close(out[1][0], out[0][0], **TIGHT)
    assert_same_grads(out[1][1], out[0][1], **TIGHT)


def with_missing(batch, seed=5):
    """The batch with about a third of its entries missing (held at 0), and every entry of step 1 of
    sequence 0 missing; the step-level padding mask unchanged."""
    g = torch.Generator().manual_seed(seed)
    obs = (torch.rand(batch.x.shape, generator=g) > 0.35) & batch.mask[..., None]  # (B, T, x_dim)
    obs[0, 1] = False
    return batch._replace(x=torch.where(obs, batch.x, torch.zeros_like(batch.x)), obs_mask=obs)


@pytest.mark.parametrize("family, guide", VARIANTS)
@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli", "categorical"])
@pytest.mark.parametrize("missing_inputs", [False, True])
def test_both_forms_and_the_torch_loss_agree_with_missing_entries(family, guide, likelihood, missing_inputs):
    m = tiny(family, 2, guide, likelihood=likelihood, missing=missing_inputs)
    batch = with_missing(ragged(2, binary=likelihood != "gaussian", categorical=likelihood == "categorical"))
    per_step = loss_and_grads(m, m.model, m.guide, batch, DynamicalELBO(), annealing=0.7)
    vectorized = loss_and_grads(m, m.model_vectorized, m.guide_vectorized, batch, DynamicalELBO(), annealing=0.7)
    torch.testing.assert_close(vectorized[0], per_step[0], **TIGHT)
    assert_same_grads(vectorized[1], per_step[1], **TIGHT)
    m.zero_grad()
    pyro.set_rng_seed(3)
    loss = direct_loss(m, batch, 0.7)
    loss.backward()
    torch.testing.assert_close(loss.detach(), per_step[0], **TIGHT)
    assert_same_grads({n: p.grad for n, p in m.named_parameters()}, per_step[1], **TIGHT)
    for model, guide_fn in (m.programs(vectorized=False), m.programs(vectorized=True)):
        pyro.set_rng_seed(4)
        assert (elbo_terms(model, guide_fn, batch)["log_lik"][0, 1] == 0).all()  # nothing observed at that step


@pytest.mark.parametrize("u_dim", [0, 2])
@pytest.mark.parametrize("missing", [False, True])
def test_the_fused_vrnn_filter_equals_the_step_loop(u_dim, missing, monkeypatch):
    """The VRNN guide's fused node (a ReLU RNN cell) against the step loop it replaces, in value and in
    the gradients of every parameter, through all five outputs (loc, scale, z, phi_z, h_{t-1})."""
    from dvae.models.vrnn import VRNN

    m = tiny("vrnn", u_dim, rnn_type="rnn", missing=missing)
    with torch.no_grad():
        m.recurrence.h_0.normal_()
    assert m._fused_filter()
    batch = ragged(u_dim)
    if missing:
        obs = torch.rand(batch.x.shape, generator=torch.Generator().manual_seed(4)) > 0.3
        batch = batch._replace(obs_mask=obs)
    B, T = batch.batch_size, batch.num_steps
    w = [torch.randn(B, T, d, dtype=torch.float64) for d in (4, 4, 4, 8, 8)]
    results = []
    for fused in (False, True):
        monkeypatch.setattr(VRNN, "_fused_filter", lambda self: fused)
        m.zero_grad()
        torch.manual_seed(5)
        loc, scale, z, (phi_z, h_prev) = m.guide_path(batch, features=True)
        outs = [loc, scale, z, phi_z, h_prev]
        sum(((o * wi).sum() + (o ** 2 * wi).sum()) for o, wi in zip(outs, w)).backward()
        results.append([o.detach() for o in outs] + [p.grad.clone() for p in m.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1]) > 5
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **TIGHT)
