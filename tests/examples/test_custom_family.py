"""examples/custom_family.py: a family outside the package, through the state-space contract alone."""

import importlib.util
import os
import subprocess
import sys

import pyro
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SCRIPT = os.path.join(ROOT, "examples", "custom_family.py")


def _module():
    spec = importlib.util.spec_from_file_location("custom_family", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generate_runs_the_families_own_contract_step_by_step():
    from dvae.models import ModelConfig

    mod = _module()
    model = mod.LinearDMM(ModelConfig("linear_dmm", x_dim=3, u_dim=1, z_dim=2, emission_dim=8, transition_dim=8))
    u = torch.randn(6, 1)
    pyro.set_rng_seed(3)
    g = model.generate(6, u=u, num_samples=2)
    pyro.set_rng_seed(3)  # by hand: z_0 ~ p, x_0 ~ p(x | z_0), z_t ~ N(A z + B u, q), ...
    state, p = model.initial_state(2)
    xs = []
    for t in range(6):
        if t:
            state, p = model.transition_step(state, xs[-1], u[t - 1].expand(2, 1))
        state = model.with_latent(state, p.sample())
        xs.append(model.emission(state).sample())
    torch.testing.assert_close(g["x"], torch.stack(xs, 1))
    # a family without path densities trains its per-step programs
    assert model.programs(vectorized=True) == (model.model, model.guide)


def test_quick_run_does_everything_end_to_end():
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, SCRIPT, "--quick"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in ("test -ELBO", "open-loop RMSE", "particle filter", "imagined next observations",
                 "one step of the imagined env", "planning on Pendulum-v1"):
        assert line in out.stdout, out.stdout
