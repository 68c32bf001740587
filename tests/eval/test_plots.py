import numpy as np

from dvae.eval.plots import plot_kstep_errors, plot_predictions, plot_reconstructions, plot_training_curves


def _ok(p):
    assert p.exists() and p.stat().st_size > 1000
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_curves(tmp_path):
    rows = [{"epoch": e, "train_loss": 10.0 / (e + 1), "valid_neg_elbo_per_step": 5.0 / (e + 1),
             "kl_per_step": 0.1 * e, "recon_per_step": 4.0 / (e + 1)} for e in range(5)]
    rows.append({"epoch": 5, "train_loss": 1.0, "valid_neg_elbo_per_step": 0.8})
    p = tmp_path / "curves.png"
    plot_training_curves(rows, p)
    _ok(p)


def test_reconstructions(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(40, 8))
    mean = truth + 0.1 * rng.normal(size=truth.shape)
    p = tmp_path / "recon.png"
    plot_reconstructions(truth, mean, mean - 0.3, mean + 0.3, p, dim_names=[f"d{i}" for i in range(8)])
    _ok(p)
    roll = (rng.random((50, 20)) < 0.2).astype(float)
    pb = tmp_path / "roll.png"
    plot_reconstructions(roll, rng.random((50, 20)), None, None, pb, binary=True)
    _ok(pb)


def test_predictions_and_kstep(tmp_path):
    rng = np.random.default_rng(1)
    truth = np.cumsum(rng.normal(size=(30, 2)), axis=0)
    C, H = 20, 10
    mean = np.repeat(truth[C - 1:C], H, axis=0)
    p = tmp_path / "pred.png"
    plot_predictions(truth, C, mean, mean - 1, mean + 1, p, baselines={"persistence": mean, "arx": mean + 0.5})
    _ok(p)
    pk = tmp_path / "kstep.png"
    plot_kstep_errors({"model": [0.1, 0.2, 0.3], "persistence": [0.2, 0.4, 0.5]}, pk)
    _ok(pk)


# --- what people read: the Figure objects' labels, legends and ticks ------------------------------------

def _legend(ax):
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg is not None else []


def _integer_ticks(ax, axis="x"):
    lo, hi = (ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = [v for v in (ax.get_xticks() if axis == "x" else ax.get_yticks()) if lo <= v <= hi]
    return len(ticks) >= 2 and all(float(v).is_integer() for v in ticks)


def _rows(n=7, best=4):
    """metrics.jsonl rows whose validation -ELBO is lowest at epoch ``best``."""
    return [{"epoch": e, "train_loss": 10.0 / e, "valid_neg_elbo_per_step": 2.0 + (e - best) ** 2 / 10,
             "valid_recon_per_step": 1.5 + (e - best) ** 2 / 10, "valid_kl_per_step": 0.5,
             "train_recon_per_step": 9.0 / e, "train_kl_per_step": 1.0 / e} for e in range(1, n + 1)]


def test_training_curves_mark_the_best_epoch_and_draw_the_terms(tmp_path):
    fig = plot_training_curves(_rows(n=7, best=4), tmp_path / "c.png")
    ax_loss, ax_valid, ax_terms = fig.axes
    assert "best epoch 4 (2)" in _legend(ax_valid)
    star = [ln for ln in ax_valid.get_lines() if ln.get_marker() == "*"]
    assert len(star) == 1 and list(star[0].get_xdata()) == [4] and list(star[0].get_ydata()) == [2.0]
    for ax in fig.axes:  # the best epoch's line on every panel, epochs on integer ticks
        assert any(list(ln.get_xdata()) == [4, 4] for ln in ax.get_lines()), ax.get_title()
        assert ax.get_xlabel() == "epoch" and _integer_ticks(ax)
    assert _legend(ax_terms) == ["valid reconstruction / step", "train reconstruction / step", "valid KL / step",
                                 "train KL / step"]
    assert ax_valid.get_ylabel() == "nats per step"


def test_training_curves_of_a_long_run_keep_integer_epoch_ticks(tmp_path):
    fig = plot_training_curves(_rows(n=3, best=2), tmp_path / "c.png")  # 3 epochs: no 1.5, 2.5 ticks
    assert all(_integer_ticks(ax) for ax in fig.axes)


def test_training_curves_without_the_terms_have_two_panels(tmp_path):
    rows = [{"epoch": e, "train_loss": 1.0 / e, "valid_neg_elbo_per_step": 1.0 / e} for e in (1, 2, 3)]
    fig = plot_training_curves(rows, tmp_path / "c.png")
    assert len(fig.axes) == 2 and "best epoch 3 (0.333)" in _legend(fig.axes[1])


def test_predictions_name_dimensions_draw_controls_and_state_the_band(tmp_path):
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(12, 3))
    mean = truth[8:] + 0.1
    u = rng.normal(size=(11, 1))
    names = ["cos theta", "sin theta", "theta dot (rad/s)"]
    fig = plot_predictions(truth, 8, mean, mean - 1, mean + 1, tmp_path / "p.png", dim_names=names, controls=u,
                           control_names=["torque (N m)"], level=0.8)
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == names + ["torque (N m)"]
    assert "80% band" in _legend(axes[0])
    steps = axes[-1].get_lines()[0]
    assert np.allclose(steps.get_ydata(), u[:, 0]) and steps.get_drawstyle() == "steps-post"
    assert axes[-1].get_xlabel() == "time step" and _integer_ticks(axes[-1])


def test_kstep_errors_on_integer_horizons(tmp_path):
    fig = plot_kstep_errors({"model": [0.1, 0.2, 0.3], "persistence": [0.2, 0.4, 0.5]}, tmp_path / "k.png")
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("horizon k") and ax.get_ylabel() == "RMSE (data units)"
    assert _integer_ticks(ax) and _legend(ax) == ["model", "persistence"]


def test_reconstruction_band_level_in_the_legend(tmp_path):
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(20, 2))
    fig = plot_reconstructions(truth, truth, truth - 1, truth + 1, tmp_path / "r.png", dim_names=["a (m)", "b (s)"])
    assert "90% band" in _legend(fig.axes[0]) and [ax.get_ylabel() for ax in fig.axes] == ["a (m)", "b (s)"]


def test_piano_roll_has_keys_on_the_axis(tmp_path):
    rng = np.random.default_rng(4)
    roll = (rng.random((30, 88)) < 0.1).astype(float)  # 88 keys, MIDI 21..108
    fig = plot_reconstructions(roll, rng.random((30, 88)), None, None, tmp_path / "roll.png", kind="binary")
    ax = fig.axes[0]
    assert ax.get_title() == "Piano roll (truth)" and ax.get_ylabel() == "key (MIDI note)"
    labels = {float(t): lab.get_text() for t, lab in zip(ax.get_yticks(), ax.get_yticklabels())}
    assert labels[39.0] == "C4 (60)" and labels[3.0] == "C1 (24)" and labels[87.0] == "C8 (108)"  # middle C


def test_text_is_not_titled_as_a_piano_roll(tmp_path):
    rng = np.random.default_rng(5)
    onehot = np.eye(6)[rng.integers(0, 6, size=15)]
    words = ["<unk>", "<eos>", "the", "cat", "sat", "down"]
    fig = plot_reconstructions(onehot, onehot, None, None, tmp_path / "t.png", kind="categorical", token_names=words)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles and not any("piano" in t.lower() for t in titles)
    assert [lab.get_text() for lab in fig.axes[0].get_yticklabels()] == words


def test_names_come_from_the_user_the_data_or_the_env():
    from dvae.eval.names import action_names, note_name, obs_names

    assert obs_names({}, 3, source="pendulum") == ["cos theta", "sin theta", "theta dot (rad/s)"]
    assert obs_names({"env_id": np.array("CartPole-v1")}, 4)[2] == "pole angle (rad)"
    assert obs_names({"obs_names": "a,b"}, 2) == ["a", "b"]
    assert obs_names({"obs_names": "a,b"}, 2, given=["p", "q"]) == ["p", "q"]
    assert obs_names({"obs_names": "a,b"}, 3) is None and obs_names({}, 2) is None
    assert action_names({}, 1, source="pendulum") == ["torque (N m)"]
    assert (note_name(60), note_name(21), note_name(108)) == ("C4", "A0", "C8")
