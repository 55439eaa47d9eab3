"""The reference answers of notebook 01's exercises as a learner would write them, with nbgrader's
solution markers: shared by the check tests (which run them) and the grading tests (which hand them in)."""

LMF_WEIGHT = """def lmf_weight(factors):
    ### BEGIN SOLUTION
    weight = factors[0]
    for factor in factors[1:]:
        weight = torch.einsum("rpk,rik->rpik", weight, factor).flatten(1, 2)
    return weight.sum(0)
    ### END SOLUTION
"""
BEST_ADDITIVE = """def best_additive_accuracy(probabilities, labels):
    ### BEGIN SOLUTION
    best = 0.0
    for code in range(16):
        predictions = torch.tensor([(code >> k) & 1 for k in range(4)]).view(2, 2)
        xor = (predictions[0, 0] == predictions[1, 1] and predictions[0, 1] == predictions[1, 0]
               and predictions[0, 0] != predictions[0, 1])
        if not xor:
            best = max(best, float(probabilities[predictions == labels].sum()))
    return best
    ### END SOLUTION
"""


def answer(source: str):
    """The function an answer's source defines (torch in scope, as in the notebook)."""
    import torch

    namespace = {"torch": torch}
    exec(source, namespace)  # noqa: S102 - the course's own reference answers
    return next(value for name, value in namespace.items() if callable(value) and name != "torch")
