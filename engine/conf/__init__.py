"""The packaged Hydra configs (found as pkg://engine.conf); a package so importlib finds it in a wheel."""
