"""The command line's help (every flag's line states its default), its wording of the Python API's
errors (arguments become flags), and the line `dvae eval --plots` prints without --horizon."""

import argparse
import os

import numpy as np
import pytest

import dvae
from dvae.cli import build_parser, flag_words, main


def _verbs():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _shown(default) -> str:
    """A default as the help line shows it (argparse's %(default)s)."""
    return str(default)


def test_every_flag_of_every_verb_has_a_help_line_that_states_its_default():
    verbs = _verbs()
    assert set(verbs) == {"collect", "train", "eval", "score", "plan", "generate", "impute", "latent"}
    checked = 0
    for verb, p in verbs.items():
        rendered = "".join(p.format_help().split())  # wrapped lines (also at hyphens) joined
        for action in p._actions:
            if not action.option_strings or action.dest == "help":
                continue
            flag = action.option_strings[0]
            assert action.help and action.help != argparse.SUPPRESS, f"dvae {verb} {flag}: no help line"
            text = action.help % {"default": action.default}  # as argparse expands it
            assert "".join(text.split()) in rendered, f"dvae {verb} {flag}: help not shown as written"
            if action.default is None or action.default is False:  # no default, or a switch
                continue
            assert "default" in text and _shown(action.default) in text, \
                f"dvae {verb} {flag}: the help line does not state the default {action.default!r}: {text!r}"
            checked += 1
    assert checked >= 60  # train alone has some forty flags with defaults


@pytest.mark.parametrize("verb, flag, shown", [("train", "--batch-size", "(default: 16)"),
                                               ("eval", "--iw-samples", "(default: 0)"),
                                               ("eval", "--seed", "(default: 0)"),
                                               ("plan", "--planner", "(default: cem)"),
                                               ("score", "--quantile", "(default: 0.99)"),
                                               ("generate", "--steps", "(default: 50)")])
def test_help_shows_defaults_as_written(verb, flag, shown):
    p = _verbs()[verb]
    action = next(a for a in p._actions if flag in a.option_strings)
    assert (action.help % {"default": action.default}).endswith(shown)


def test_flag_defaults_are_the_python_methods_defaults():
    """The verbs over Run take their defaults from its methods' signatures: one place states them."""
    import inspect

    verbs = _verbs()
    for verb, method, pairs in [("plan", "plan", {"episodes": "episodes", "planner": "planner", "horizon": "horizon",
                                                  "num_samples": "num_samples", "max_steps": "max_steps"}),
                                ("generate", "generate", {"steps": "num_steps", "num_samples": "num_samples"}),
                                ("impute", "impute", {"num_samples": "num_samples"}),
                                ("score", "score", {"quantile": "quantile", "iw_samples": "iw_samples"})]:
        params = inspect.signature(getattr(dvae.Run, method)).parameters
        for dest, arg in pairs.items():
            assert verbs[verb].get_default(dest) == params[arg].default, (verb, dest)


@pytest.mark.parametrize("msg, words", [
    ("iw_samples: expected >= 0, got -1", "--iw-samples: expected >= 0, got -1"),
    ("context, horizon: expected both or neither, got 5, None", "--context, --horizon: expected both or neither, got 5, None"),
    ("num_steps: expected >= 1, got 0", "--steps: expected >= 1, got 0"),
    ("obs: expected finite values", "obs: expected finite values"),  # not a flag of the verb: as it is
    ("runs/x: no such run directory", "runs/x: no such run directory"),
    ("no colon here", "no colon here"),
])
def test_the_python_apis_argument_names_become_the_verbs_flags(msg, words):
    a = argparse.Namespace(verb="eval", run_dir="r", iw_samples=-1, context=5, horizon=None, steps=1, data=None)
    assert flag_words(msg, a) == words


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    x = np.random.default_rng(0).normal(size=(6, 8, 2))
    out = tmp_path_factory.mktemp("runs") / "run"
    dvae.fit(x, epochs=1, seed=0, out=out, no_progress=True, no_plots=True, z_dim=2, rnn_dim=8, transition_dim=8,
             emission_dim=8, device="cpu")
    return str(out)


def test_eval_plots_without_horizon_says_in_one_line_what_it_will_not_draw(run_dir, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert main(["eval", run_dir, "--plots", str(plots), "--device", "cpu", "--split", "all"]) == 0
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"dvae eval: --plots {plots}: nothing drawn: kstep_errors.png and the prediction plots")
    assert "need --context and --horizon" in err
    assert not os.path.exists(plots) and '"neg_elbo_per_step"' in out
    assert main(["eval", run_dir, "--device", "cpu", "--split", "all"]) == 0  # without --plots: nothing said
    assert capsys.readouterr().err == ""


def test_a_python_argument_error_reads_as_its_flag(run_dir, capsys):
    assert main(["eval", run_dir, "--context", "3", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "dvae eval: error: --context, --horizon: expected both or neither, got 3, None"
    assert main(["generate", run_dir, "--steps", "0", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == "dvae generate: error: --steps: expected >= 1, got 0"


@pytest.mark.parametrize("argv, words", [
    (["train", "--lr", "nan"], "--lr"), (["train", "--model", "nope"], "invalid choice"),
    (["train", "--epochs", "x"], "invalid int"), (["eval"], "run_dir"), (["bogus"], "invalid choice"),
    (["plan", "RUN", "--episodes"], "expected one argument"),
])
def test_a_bad_flag_is_one_line_with_exit_status_2(capsys, argv, words):
    """argparse's errors (type, choice, missing argument) are one line naming the problem, not a usage block."""
    from dvae.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert "--help" in err
