"""mmcourse.distributed: two CPU processes (gloo) each holding half a batch compute the loss of the
whole batch, and each gets exactly the single-process gradient of its own half."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mmcourse.distributed import distributed_clip_loss, gather_features, is_distributed
from mmcourse.models.clip import clip_loss

WORLD_SIZE = 2
LOCAL_BATCH, DIM = 3, 8
LOGIT_SCALE = 1 / 0.07


def _full_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image (W * B, D), text (W * B, D), log logit scale), the same in every process."""
    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(WORLD_SIZE * LOCAL_BATCH, DIM, generator=generator, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(WORLD_SIZE * LOCAL_BATCH, DIM, generator=generator, dtype=torch.float64), dim=-1)
    return image, text, torch.tensor(LOGIT_SCALE, dtype=torch.float64).log()


def _worker(rank: int, store: str, results: str) -> None:
    """One rank: its shard's loss and gradients, then a call with a wrong shape that must raise."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)
    try:
        image, text, log_scale = _full_batch()
        shard = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        local_image = image[shard].clone().requires_grad_()  # (B, D)
        local_text = text[shard].clone().requires_grad_()
        log_scale.requires_grad_()
        all_image, _ = gather_features(local_image, local_text)
        loss = distributed_clip_loss(local_image, local_text, log_scale.exp())
        loss.backward()
        # a rank with a different batch size: every rank must raise, none may hang
        rows = LOCAL_BATCH + rank
        try:
            gather_features(image[:rows], text[:rows])
            mismatch_error = ""
        except ValueError as error:
            mismatch_error = str(error)
        torch.save({"loss": loss.detach(), "gathered": all_image.detach(), "is_distributed": is_distributed(),
                    "image_grad": local_image.grad, "text_grad": local_text.grad, "scale_grad": log_scale.grad,
                    "mismatch_error": mismatch_error}, os.path.join(results, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def _single_process_reference():
    image, text, log_scale = _full_batch()
    image.requires_grad_(), text.requires_grad_(), log_scale.requires_grad_()
    loss = clip_loss(image, text, log_scale.exp())
    loss.backward()
    return loss.detach(), image.grad, text.grad, log_scale.grad


def test_every_rank_sees_the_whole_batch(rank_results):
    image, _, _ = _full_batch()
    for result in rank_results:
        assert result["is_distributed"]
        assert torch.equal(result["gathered"], image)  # rank order: rank 0's rows first


def test_gathered_loss_equals_the_single_process_loss(rank_results):
    loss, _, _, _ = _single_process_reference()
    for result in rank_results:
        torch.testing.assert_close(result["loss"], loss, atol=1e-12, rtol=0)


def test_each_rank_gets_the_single_process_gradient_of_its_shard(rank_results):
    _, image_grad, text_grad, scale_grad = _single_process_reference()
    for rank, result in enumerate(rank_results):
        shard = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        torch.testing.assert_close(result["image_grad"], image_grad[shard], atol=1e-12, rtol=0)
        torch.testing.assert_close(result["text_grad"], text_grad[shard], atol=1e-12, rtol=0)
        # the scale is shared: every rank has the full gradient, DDP's mean over ranks keeps it
        torch.testing.assert_close(result["scale_grad"], scale_grad, atol=1e-12, rtol=0)
    # the other ranks' rows are constants: the shard gradients are not the whole story on one rank
    assert not torch.allclose(rank_results[0]["image_grad"], rank_results[1]["image_grad"])


def test_different_shapes_across_ranks_raise_on_every_rank(rank_results):
    for result in rank_results:
        assert "same shapes on every rank" in result["mismatch_error"]
        assert f"rank 1: image ({LOCAL_BATCH + 1}, {DIM})" in result["mismatch_error"]


def test_single_process_is_the_identity():
    assert not is_distributed()
    image, text, log_scale = _full_batch()
    gathered_image, gathered_text = gather_features(image, text)
    assert gathered_image is image and gathered_text is text
    assert torch.equal(distributed_clip_loss(image, text, log_scale.exp()), clip_loss(image, text, log_scale.exp()))


def test_bad_features_raise_before_any_communication():
    image, text, _ = _full_batch()
    with pytest.raises(ValueError, match="image_features must have 2 dimensions"):
        gather_features(image[0], text)
    with pytest.raises(TypeError, match="text_features must be a floating-point"):
        gather_features(image, text.long())
