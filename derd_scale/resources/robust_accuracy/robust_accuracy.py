"""robust_accuracy: accuracy per attack with n and a 95 % Wilson interval, as an `evaluate` module.

    import evaluate
    from derd_scale.evaluation import ROBUST_ACCURACY
    metric = evaluate.load(str(ROBUST_ACCURACY))          # a local path: no Hub access
    metric.compute(predictions=[3, 1, 1], references=[3, 1, 0], attack=["clean", "clean", "pgd_s"])
    # {'clean': {'accuracy': 1.0, 'correct': 2, 'n': 2, 'ci95': [...]}, 'pgd_s': {...}}

The same numbers as derd_scale's report.json (derd_scale/evaluation/report.py, whose Wilson
interval this module uses). README.md beside this file is the module's card.
"""

import datasets
import evaluate

from derd_scale.evaluation.report import wilson_interval

_DESCRIPTION = "Accuracy of one model under each attack (clean, FGSM, PGD, CW, AutoAttack, ...), with n and a 95 % Wilson score interval."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): the model's class on the (attacked) input.
    references (list of int): the true class.
    attack (list of str): the attack each prediction was made under ("clean" for the clean input).
Returns:
    {attack: {"accuracy": float, "correct": int, "n": int, "ci95": [low, high]}} in the order the attacks first appear.
Example:
    >>> metric.compute(predictions=[1, 0], references=[1, 1], attack=["clean", "clean"])["clean"]["accuracy"]
    0.5
"""
_CITATION = "Wilson, E. B. (1927). Probable inference, the law of succession, and statistical inference. JASA 22(158)."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RobustAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "attack": datasets.Value("string"),
                }
            ),
            reference_urls=["https://github.com/fra31/auto-attack"],
        )

    def _compute(self, predictions, references, attack):
        counts = {}
        for p, r, a in zip(predictions, references, attack):
            k, n = counts.get(a, (0, 0))
            counts[a] = (k + int(p == r), n + 1)
        return {
            a: {"accuracy": k / n, "correct": k, "n": n, "ci95": list(wilson_interval(k, n)), "ci_method": "wilson"}
            for a, (k, n) in counts.items()
        }
