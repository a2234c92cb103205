"""jaxorder: generation order as an experimental variable (see README.md and docs/).

Importing the package registers every order family, so config validation knows them all.
"""
from jaxorder import objectives  # noqa: F401  (fills the objective registry)
