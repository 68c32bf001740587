"""Studies: programs that run ``dvae`` through its public API and write documents under docs/.

They are not part of the installed package (``pyproject.toml`` packages ``dvae`` and ``envs`` only); run
them from the root of a source checkout, e.g. ``python -m studies.compare --sections none``.
"""
