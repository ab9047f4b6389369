"""Tensors on a CUDA device: saved from the device, loaded and moved back to it.

``save`` copies GPU tensors to the CPU (the file holds plain little-endian
bytes), so what is checked here is that every path that takes tensors
(``save``, ``save_sharded``, ``append``, sparse tensors, tied weights)
stores the device tensor's values bit for bit, and that what is read back
moves to the device unchanged. Every expected value is built on the CPU
first, without deathtensors, and compared as raw bytes (NaN-safe).

Skipped without a CUDA device; run on a GPU machine with
``pytest tests/python/test_gpu.py``.
"""

from __future__ import annotations

import pytest

import deathtensors as dt

torch = pytest.importorskip("torch")
from _dtutil import COMPRESS_OPTIONS, DTYPES, sample_raw, torch_bytes, torch_from_bytes  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _on_device(cpu: torch.Tensor) -> torch.Tensor:
    gpu = cpu.to("cuda")
    assert gpu.device.type == "cuda"
    return gpu


@pytest.mark.parametrize("compress", [c for c, _ in COMPRESS_OPTIONS], ids=lambda c: f"compress={c}")
@pytest.mark.parametrize("dtype_id,torch_name", [(d[0], d[1]) for d in DTYPES], ids=[d[0] for d in DTYPES])
def test_every_dtype_is_saved_from_the_device_bit_exactly(tmp_path, dtype_id, torch_name, compress):
    cpu = torch_from_bytes(sample_raw(dtype_id, (33, 17), seed=7), torch_name, (33, 17))
    gpu = _on_device(cpu)
    tensors = {"plain": gpu, "transposed": gpu.t(), "rows": gpu[5:9], "scalar": gpu[3, 4]}
    path = tmp_path / "gpu.deathtensors"
    dt.save(path, tensors, compress=compress, checksum=True)
    expected = {"plain": cpu, "transposed": cpu.t(), "rows": cpu[5:9], "scalar": cpu[3, 4]}
    with dt.open(path, verify=True) as f:
        for name, want in expected.items():
            assert f.info(name)["dtype"] == dtype_id
            got = f.get_tensor(name)
            assert got.device.type == "cpu"
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert torch_bytes(got) == torch_bytes(want), name
            back = got.to("cuda")
            assert torch_bytes(back) == torch_bytes(gpu if name == "plain" else tensors[name]), name


def test_lazy_conjugate_and_negative_views_are_resolved(tmp_path):
    cpu = torch.randn(16, 8, dtype=torch.complex64)
    gpu = _on_device(cpu)
    conj = gpu.conj()
    neg_imag = gpu.conj().imag  # a negative-bit view of the imaginary parts
    assert conj.is_conj() and neg_imag.is_neg()
    dt.save(tmp_path / "v.deathtensors", {"conj": conj, "neg": neg_imag}, compress=True)
    with dt.open(tmp_path / "v.deathtensors") as f:
        assert torch.equal(f.get_tensor("conj"), cpu.conj().resolve_conj())
        assert torch.equal(f.get_tensor("neg"), -cpu.imag)


def test_parameters_that_require_grad_are_saved(tmp_path):
    layer = torch.nn.Linear(12, 5).to("cuda")
    state = layer.state_dict(keep_vars=True)
    assert all(p.requires_grad and p.is_cuda for p in state.values())
    dt.save(tmp_path / "p.deathtensors", state)
    with dt.open(tmp_path / "p.deathtensors") as f:
        for name, p in state.items():
            assert torch.equal(f.get_tensor(name).cuda(), p.detach())


def test_tied_device_tensors_are_stored_once_and_partial_views_are_not(tmp_path):
    cpu = torch.randn(64, 32)
    emb = _on_device(cpu)
    tensors = {"embed": emb, "lm_head": emb, "first_rows": emb[:10], "other": emb.clone()}
    path = tmp_path / "tied.deathtensors"
    dt.save(path, tensors, checksum=True)
    with dt.open(path, verify=True) as f:
        assert f.info("lm_head")["alias_of"] == "embed"
        assert f.info("first_rows").get("alias_of") is None
        assert f.info("other").get("alias_of") is None
        loaded = f.get_tensors()
    assert torch.equal(loaded["embed"], cpu) and torch.equal(loaded["lm_head"], cpu)
    assert torch.equal(loaded["first_rows"], cpu[:10]) and torch.equal(loaded["other"], cpu)
    assert loaded["lm_head"].data_ptr() == loaded["embed"].data_ptr()


def test_host_and_device_tensors_in_one_save(tmp_path):
    cpu = torch.arange(8, dtype=torch.float32)
    gpu = _on_device(cpu * 2)
    path = tmp_path / "mixed.deathtensors"
    dt.save(path, {"host": cpu, "device": gpu})
    with dt.open(path) as f:
        assert f.info("device").get("alias_of") is None
        assert torch.equal(f.get_tensor("host"), cpu)
        assert torch.equal(f.get_tensor("device"), cpu * 2)


def test_sharded_save_from_the_device(tmp_path):
    cpu = {f"layer.{i}.weight": torch.randn(40, 30) for i in range(6)}
    gpu = {name: _on_device(t) for name, t in cpu.items()}
    shards = dt.save_sharded(
        tmp_path / "big.deathtensors", gpu, max_shard_bytes=2 * 40 * 30 * 4, compress=True, checksum=True
    )
    assert len(shards) == 3
    with dt.open_sharded(tmp_path / "big.deathtensors", verify=True) as sr:
        for name, t in cpu.items():
            assert torch.equal(sr.get_tensor(name), t)


def test_append_from_the_device(tmp_path):
    path = tmp_path / "a.deathtensors"
    first = torch.randn(10, 3)
    dt.save(path, {"first": first}, compress=True, checksum=True)
    second = torch.randint(-5, 5, (7,), dtype=torch.int64)
    dt.append(path, {"second": _on_device(second)})
    with dt.open(path, verify=True) as f:
        assert f.keys() == ["first", "second"]
        assert torch.equal(f.get_tensor("first"), first)
        assert torch.equal(f.get_tensor("second"), second)


def test_sparse_device_tensors_round_trip(tmp_path):
    indices = torch.tensor([[0, 2, 4, 4], [1, 0, 3, 2]])
    values = torch.tensor([1.5, -2.0, 3.25, 0.5])
    cpu = torch.sparse_coo_tensor(indices, values, (5, 4), check_invariants=True)
    gpu = cpu.to("cuda")
    assert gpu.is_sparse and gpu.is_cuda
    dt.save_sparse(tmp_path / "s.deathtensors", {"sp": gpu, "dense": _on_device(torch.ones(3))})
    with dt.open(tmp_path / "s.deathtensors") as f:
        got = dt.get_sparse(f, "sp")
        assert got.is_sparse
        assert torch.equal(got.to_dense(), cpu.to_dense())
        assert torch.equal(got.cuda().to_dense(), gpu.to_dense())
        assert torch.equal(f.get_tensor("dense"), torch.ones(3))


@pytest.mark.parametrize("compress", [False, True])
def test_loaded_tensors_move_to_the_device(tmp_path, compress):
    cpu = {"w": torch.randn(128, 64).to(torch.bfloat16), "b": torch.randn(64), "i": torch.arange(100)}
    path = tmp_path / "m.deathtensors"
    dt.save(path, cpu, compress=compress)
    with dt.open(path) as f:
        on_device = {n: t.pin_memory().to("cuda", non_blocking=True) for n, t in f.get_tensors().items()}
        if not compress:
            mapped = f.get_tensor_mmap("w")
            assert torch.equal(mapped.to("cuda"), cpu["w"].cuda())
        rows = f.get_tensor_slice("w", 10, 20).cuda()
    torch.cuda.synchronize()
    for name, t in cpu.items():
        assert on_device[name].is_cuda
        assert torch.equal(on_device[name], t.cuda())
    assert torch.equal(rows, cpu["w"][10:30].cuda())


def test_empty_and_zero_dimensional_device_tensors(tmp_path):
    tensors = {"empty": torch.empty(0, 5, device="cuda"), "scalar": torch.tensor(2.5, device="cuda")}
    dt.save(tmp_path / "e.deathtensors", tensors, compress=True)
    with dt.open(tmp_path / "e.deathtensors") as f:
        assert f.get_tensor("empty").shape == (0, 5)
        scalar = f.get_tensor("scalar")
        assert scalar.shape == () and scalar.item() == 2.5


@pytest.mark.parametrize("compress", [False, True, "lz4"])
def test_device_argument_loads_onto_the_gpu(tmp_path, compress):
    emb = torch.randn(64, 16)
    cpu = {"emb": emb, "head": emb, "b": torch.randn(16).to(torch.bfloat16), "n": torch.arange(7)}
    path = tmp_path / "d.deathtensors"
    dt.save(path, cpu, compress=compress, checksum=True)
    with dt.open(path, verify=True) as f:
        one = f.get_tensor("b", device="cuda")
        assert one.is_cuda and torch.equal(one, cpu["b"].cuda())
        rows = f.get_tensor_slice("emb", 8, 4, device="cuda:0")
        assert rows.is_cuda and torch.equal(rows, emb[8:12].cuda())
        lazy = f.get_slice("emb", device="cuda")
        assert lazy[3:5].is_cuda and torch.equal(lazy[3:5], emb[3:5].cuda())
        assert torch.equal(lazy[7, 2:4], emb[7, 2:4].cuda())
        every = f.get_tensors(device=torch.device("cuda"))
    assert list(every) == list(cpu)
    for name, t in cpu.items():
        assert every[name].is_cuda and torch.equal(every[name], t.cuda()), name
    assert every["head"].data_ptr() == every["emb"].data_ptr()  # tied on the device too


def test_device_argument_on_sharded_and_sparse_tensors(tmp_path):
    cpu = {f"w{i}": torch.randn(10, 10) for i in range(4)}
    dt.save_sharded(tmp_path / "m.deathtensors", cpu, max_shard_bytes=2 * 400)
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        every = sr.get_tensors(device="cuda")
        assert all(every[n].is_cuda and torch.equal(every[n], t.cuda()) for n, t in cpu.items())
        assert torch.equal(sr.get_tensor("w3", device="cuda"), cpu["w3"].cuda())
    sp = torch.sparse_coo_tensor([[0, 3], [1, 2]], [1.0, -1.0], (4, 4), check_invariants=True)
    dt.save_sparse(tmp_path / "s.deathtensors", {"sp": sp})
    with dt.open(tmp_path / "s.deathtensors") as f:
        got = f.get_tensor("sp", device="cuda")
        assert got.is_sparse and got.is_cuda and torch.equal(got.to_dense(), sp.to_dense().cuda())
