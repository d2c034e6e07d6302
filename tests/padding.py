"""Padded batches for the prefix and soft-prompt tests: a padded row must equal the row run alone."""

import torch


def padded_mask(lengths, seq: int, left: bool) -> torch.Tensor:
    """(B, seq) attention mask with each row's real tokens at the left or the right end."""
    rows = [torch.arange(seq) >= seq - n if left else torch.arange(seq) < n for n in lengths]
    return torch.stack(rows).long()


def assert_padded_row_equals_row_alone(zm, model, ids: torch.Tensor, mask: torch.Tensor, left: bool) -> None:
    """Row 1 of the padded batch, on its real tokens, equals row 1 alone without padding."""
    keep = mask[1].bool()
    extra, extra_alone = {}, {}
    encoder_decoder = model.config.is_encoder_decoder
    if encoder_decoder:
        extra, extra_alone = {"decoder_input_ids": ids[:, :3]}, {"decoder_input_ids": ids[1:, :3]}
    elif left:  # decoders number left-padded tokens from their first real one, as generate() does
        extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        extra_alone = {"position_ids": torch.arange(int(keep.sum())).unsqueeze(0)}
    with torch.no_grad():
        both = zm.run(model, {"input_ids": ids, "attention_mask": mask, **extra})
        alone = zm.run(model, {"input_ids": ids[1:, keep], **extra_alone})
    row = both[1] if encoder_decoder else both[1, keep]
    torch.testing.assert_close(row, alone[0], atol=1e-5, rtol=1e-5)
