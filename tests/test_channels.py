"""Channel reductions of the map heads: same values as torch's, exported without ReduceSum."""

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch.nn import functional as F

from export.bridge import RestorationHead
from export.channels import channel_cosine, channel_distance
from export.onnx_export import _export_graph


def test_channel_reductions_match_torch():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 152, 8, 8, generator=generator), torch.randn(2, 152, 8, 8, generator=generator)
    b[0, :, 0, 0] = 0  # a zero vector: cosine 0, as torch defines it, not NaN
    torch.testing.assert_close(channel_cosine(a, b), F.cosine_similarity(a, b, dim=1, eps=1e-6).unsqueeze(1))
    torch.testing.assert_close(channel_distance(a, b), (a - b).norm(dim=1, keepdim=True))


def test_restoration_head_exports_its_sums_as_matrix_products(tmp_path):
    features, restored = torch.randn(2, 152, 8, 8), torch.randn(2, 152, 8, 8)
    path = tmp_path / "head.onnx"
    _export_graph(RestorationHead(), (features, restored), path, {"features": True, "restored": True}, ["map"])
    assert "ReduceSum" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = [features[:1].numpy(), restored[:1].numpy()]  # another batch size than at export
    (out,) = session.run(None, {"features": batch[0], "restored": batch[1]})
    np.testing.assert_allclose(out, RestorationHead()(*map(torch.from_numpy, batch)).numpy(), rtol=1e-4, atol=1e-5)
