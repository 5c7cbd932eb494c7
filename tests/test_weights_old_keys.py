"""Checkpoints written before the stage attention was renamed still load.

Until version 0.1.0 a stage attention (BAM after stages 1-3) was the module
``layer<i>.bam``; it is ``layer<i>.attn`` now. The old names are written out here, as an
old file holds them, and such a file must give the model of today the same outputs.
"""

from __future__ import annotations

import torch

import reference as ref
from convattn import create_model, load_checkpoint

# The stage-attention keys of cifar_resnet20_bam in files of version 0.1.0.
OLD_STAGE_KEYS = [
    f"layer{i}.bam.{name}"
    for i in (1, 2)
    for name in (
        "fc1.weight", "fc1.bias", "fc2.weight",
        "channel_bn.weight", "channel_bn.bias", "channel_bn.running_mean",
        "channel_bn.running_var", "channel_bn.num_batches_tracked",
        *(f"spatial.{j}.{p}" for j in (0, 3, 6, 9) for p in ("weight",)),
        *(f"spatial.{j}.{p}" for j in (1, 4, 7, 10)
          for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
    )
]  # fmt: skip


def test_a_file_with_the_old_stage_attention_names_loads_and_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = ref.randomize_(create_model("cifar_resnet20_bam")).eval()
    state = model.state_dict()
    old = {}
    for k, v in state.items():
        old[k.replace(".attn.", ".bam.", 1) if k.split(".")[1] == "attn" else k] = v
    assert sorted(k for k in old if ".bam." in k) == sorted(OLD_STAGE_KEYS)
    torch.save(old, tmp_path / "old.pt")

    fresh = create_model("cifar_resnet20_bam").eval()
    report = load_checkpoint(fresh, tmp_path / "old.pt")
    assert report.format == "convattn" and not report.missing and not report.unexpected
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
