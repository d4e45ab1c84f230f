"""Test-time flip (``model.flip_tta``): every slice is segmented as shown and mirrored left-right in
the image, and the two logit maps are averaged.

The trained presets learn with random left-right image flips whose patient-coordinate map is
flipped with the pixels (:mod:`pgsam_node.training.augment`): after the flip the coordinates still
say where the patient's left is, so the report stays true and the flipped slice is an input the
model has learned to read. An error that is not mirror-symmetric (a texture read one way round
only, noise) is then made in at most one of the two passes, and averaging halves it. The cost is a
second forward pass of the same batch.

Not used where the image embeddings are cached (the CPU slice selection of the localisation-head
presets): those would have to be encoded again.
"""

from __future__ import annotations

from typing import Any


def flip_averaged(model: Any, out: Any, imgs: Any, valid: Any, coords: Any, text_emb: Any, text_valid: Any, fvec: Any) -> Any:
    """Mean of ``out`` (the model's (B, 1, H, W) logits for the batch as shown) and its logits for
    the batch mirrored along the image columns, mirrored back.

    ``imgs`` (B, S, C, H, W) and ``coords`` (B, 2, H, W) are flipped together; ``valid``, the text
    embedding and the findings vector describe the patient, not the image, and stay as they are.
    """
    flipped = model(imgs.flip(-1), valid, coords.flip(-1), text_emb, text_valid, fvec)
    return (out + flipped.flip(-1)) / 2
