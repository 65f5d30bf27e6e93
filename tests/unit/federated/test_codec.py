"""fednas.federated.codec: the same bytes and tensors as Flower's / NumPy's own conversion."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fednas.federated.codec import npy_bytes, to_record, to_state_dict

SHAPES = [(), (1,), (7,), (3, 4), (2, 3, 5, 5), (0,), (16, 1, 3, 3), (123456,), (10,) * 5]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.uint8,
          torch.bool]


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, shape in enumerate(SHAPES):
        for dtype in DTYPES:
            x = torch.randn(shape, generator=g) * 100
            out[f"t{i}.{str(dtype)[6:]}"] = x > 0 if dtype == torch.bool else x.to(dtype)
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8, np.bool_,
                                   np.dtype(">f4"), np.float16])
def test_npy_bytes_are_what_np_save_writes(shape, dtype):
    nd = (np.arange(int(np.prod(shape))) % 7).astype(dtype).reshape(shape)
    buffer = io.BytesIO()
    np.save(buffer, nd, allow_pickle=False)
    assert npy_bytes(nd) == buffer.getvalue()


def test_round_trip_matches_flowers_conversion():
    s = state()
    ours, theirs = to_record(s), ArrayRecord(s)
    assert list(ours.keys()) == list(theirs.keys())
    for key in s:
        a, b = ours[key], theirs[key]
        assert (a.dtype, tuple(a.shape), a.stype, a.data) == (b.dtype, tuple(b.shape), b.stype,
                                                               b.data)
    fast, slow = to_state_dict(theirs), theirs.to_torch_state_dict()
    assert list(fast) == list(slow)
    for key in s:
        assert fast[key].dtype == slow[key].dtype == s[key].dtype
        assert torch.equal(fast[key], slow[key]) and torch.equal(fast[key], s[key])
    fast["t3.float32"].add_(1)  # writable, and not a view of the record's bytes
    assert torch.equal(to_state_dict(theirs)["t3.float32"], s["t3.float32"])


def test_other_layouts_fall_back_to_numpy():
    f_order = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    strided = torch.arange(20.0).reshape(4, 5)[:, ::2]
    record = ArrayRecord({"f": Array(f_order)})
    assert record["f"].data[:200].find(b"'fortran_order': True") > 0
    assert np.array_equal(to_state_dict(record)["f"].numpy(), f_order)
    back = to_state_dict(to_record({"s": strided}))
    assert torch.equal(back["s"], strided)
