"""The testbed (book/testbed.ipynb): the harness measurement, the plain backbone on the profile's recipe."""
from ..experiments import BASELINE, register_experiment

register_experiment("baseline", [BASELINE])
