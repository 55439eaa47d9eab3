"""Exercise checks for the course notebooks.

The committed notebooks are the solution notebooks. An exercise is three cells:

1. a markdown cell stating the task;
2. a code cell whose answer sits between two marker comments, the nbgrader convention, so that
   instructors can use nbgrader itself::

       def tensor_fusion(a, b):
           ### BEGIN SOLUTION
           ...
           ### END SOLUTION

   `mmcourse assign` writes the student copy, where the solution becomes nbgrader's stub
   (`# YOUR CODE HERE`, `raise NotImplementedError()`);
3. a check cell calling `mmcourse.exercises.check_<name>(tensor_fusion)`.

Each `check_<name>` is built from the helpers here: `compare` runs the learner's function and the
reference on fresh random inputs and compares type, shape, dtype, values and (optionally)
gradients; `check_value` checks a single answer such as a parameter count. Both return a
`CheckResult` that shows a check mark or a cross and one plain sentence saying what differs, with a
hint; they never show the learner a traceback. Autograders pass `raise_on_fail=True` to get an
`ExerciseFailed` (an AssertionError) instead.
"""
from . import alignment, challenges, few_shot, reasoning, representation
from .alignment import (check_cross_attention, check_distillation_targets, check_hard_negative_sampling,
                        check_milnce_loss)
from .challenges import check_best_additive_accuracy, check_lmf_weight, check_tensor_fusion
from .check import CheckResult, ExerciseFailed, check_value, compare, report
from .few_shot import (check_confident_labels, check_episode_sampler, check_exam_clip_loss, check_exam_cross_attention,
                       check_exam_modality_gap, check_exam_protonet_prediction, check_exam_xor_fusion,
                       check_exam_zero_shot, check_prototypes, check_squared_distances)
from .reasoning import check_bilinear_attention, check_reinforce_loss, check_relate, check_san_hop
from .representation import check_clip_loss, check_hinge_rank_loss, check_recall_at_k, check_zero_shot_classifier

# One module of checks per notebook; every check_<name> is reachable as mmcourse.exercises.check_<name>.
__all__ = ["CheckResult", "ExerciseFailed", "check_value", "compare", "report",
           *challenges.__all__, *representation.__all__, *alignment.__all__,
           *reasoning.__all__, *few_shot.__all__]
