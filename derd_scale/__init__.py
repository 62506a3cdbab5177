"""derd_scale: data-free robustness distillation (DERD) from a natural and a robust teacher.

See docs/method.md for the method and README.md for how to run it.
"""

__version__ = "0.1.0"
