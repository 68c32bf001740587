"""The verbs of the ``dvae`` command, one module per job: each adds its flags to the parser
(``add_VERB(sub)``) and runs (``cmd_VERB(a)``), a thin layer over the Python API (:mod:`dvae.api`)
where the verb reads a run. :mod:`dvae.cli` builds the parser from these and prints the results."""

from dvae.commands.collect import add_collect, cmd_collect
from dvae.commands.draw import add_generate, add_impute, cmd_generate, cmd_impute
from dvae.commands.measure import add_eval, add_latent, add_score, cmd_eval, cmd_latent, cmd_score
from dvae.commands.plan import add_plan, cmd_plan
from dvae.commands.train import add_train, cmd_train

VERBS = ("collect", "train", "eval", "score", "plan", "generate", "impute", "latent")
"""The verbs in the order of ``dvae --help``."""
ADD = {"collect": add_collect, "train": add_train, "eval": add_eval, "score": add_score, "latent": add_latent,
       "plan": add_plan, "generate": add_generate, "impute": add_impute}
"""verb -> the function adding its parser (the parsers are added in this order)."""

__all__ = ["ADD", "VERBS", "cmd_collect", "cmd_eval", "cmd_generate", "cmd_impute", "cmd_latent", "cmd_plan",
           "cmd_score", "cmd_train"]
