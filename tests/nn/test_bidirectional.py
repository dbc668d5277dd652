"""Bidirectional layer / encoder: padding invariance, per-sample independence, both directions, reverse_valid."""

import pytest
import torch

from scmamba2.nn.bidirectional import BiMamba2Encoder, BiMamba2Layer, reverse_valid

D = 32


def make_encoder(n_layers=2, **kw):
    torch.manual_seed(0)
    kw = {"d_state": 8, "headdim": 16, "chunk_size": 8, "use_kernels": False, **kw}
    return BiMamba2Encoder(D, n_layers, **kw).eval()


def pad_to(seqs, length):
    """Right-pad a list of (l_i, D) tensors with garbage (to prove it never leaks) to (b, length, D) + mask."""
    x = torch.randn(len(seqs), length, D) * 100
    mask = torch.ones(len(seqs), length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
        mask[i, : len(s)] = False
    return x, mask


def test_reverse_valid_involution_and_padding_kept():
    x = torch.arange(2 * 6 * 3).reshape(2, 6, 3)
    lengths = torch.tensor([4, 6])
    r = reverse_valid(x, lengths)
    assert torch.equal(r[0, :4], x[0, :4].flip(0))
    assert torch.equal(r[0, 4:], x[0, 4:])  # padding stays where it was
    assert torch.equal(r[1], x[1].flip(0))
    assert torch.equal(reverse_valid(r, lengths), x)
    # rank 2 and zero-length rows
    y = torch.arange(10).reshape(2, 5)
    assert torch.equal(reverse_valid(y, torch.tensor([0, 3])), torch.tensor([[0, 1, 2, 3, 4], [7, 6, 5, 8, 9]]))


@pytest.mark.parametrize("lengths", [[7, 7, 7], [7, 0, 3]])
def test_reverse_valid_cpu_path_equals_the_gather_with_its_gradient(lengths):
    """The CPU reversal (row flips, its own backward) against the gather every device can run."""
    from scmamba2.nn.bidirectional import _reverse_gather

    n = torch.tensor(lengths)
    x = torch.randn(3, 7, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 7, 4, dtype=torch.float64)
    fast = reverse_valid(x, n)
    (g_fast,) = torch.autograd.grad((fast * w).sum(), x)
    slow = _reverse_gather(x, n)
    (g_slow,) = torch.autograd.grad((slow * w).sum(), x)
    assert torch.equal(fast, slow) and torch.equal(g_fast, g_slow)


def test_padding_invariance():
    enc = make_encoder()
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randn(n, D, generator=gen) for n in (13, 20, 7)]
    with torch.no_grad():
        x1, m1 = pad_to(seqs, 20)
        x2, m2 = pad_to(seqs, 45)
        y1, y2 = enc(x1, m1), enc(x2, m2)
    for i, s in enumerate(seqs):
        assert (y1[i, : len(s)] - y2[i, : len(s)]).abs().max() < 1e-5
    assert torch.all(y1[m1] == 0) and torch.all(y2[m2] == 0)


def test_each_sample_equals_running_it_alone():
    enc = make_encoder()
    seqs = [torch.randn(n, D) for n in (3, 17, 9, 17)]
    with torch.no_grad():
        x, m = pad_to(seqs, 17)
        y = enc(x, m)
        for i, s in enumerate(seqs):
            alone = enc(s[None], None)[0]
            assert (y[i, : len(s)] - alone).abs().max() < 1e-5


def test_backward_direction_reaches_position_zero():
    enc = make_encoder()
    seqs = [torch.randn(11, D), torch.randn(6, D)]
    x, m = pad_to(seqs, 11)
    x2 = x.clone()
    x2[0, 10] += 1.0  # the last valid token of sample 0
    x2[1, 5] += 1.0  # the last valid token of sample 1
    x2[1, 8] += 1.0  # padding of sample 1: must change nothing
    with torch.no_grad():
        y, y2 = enc(x, m), enc(x2, m)
    assert (y[:, 0] - y2[:, 0]).abs().min(dim=-1).values.gt(0).all()
    assert (y[0, 0] - y2[0, 0]).abs().max() > 1e-4 and (y[1, 0] - y2[1, 0]).abs().max() > 1e-4


def test_forward_direction_is_present():
    # Changing the first token changes the last output (the forward scan), complementing the test above.
    enc = make_encoder(n_layers=1)
    x = torch.randn(1, 12, D)
    x2 = x.clone()
    x2[0, 0] += 1.0
    with torch.no_grad():
        assert (enc(x, None)[0, -1] - enc(x2, None)[0, -1]).abs().max() > 1e-4


@pytest.mark.parametrize("bad", [[True, False, False, False], [False, True, False, False]])
def test_left_or_interior_padding_is_an_error(bad):
    enc = make_encoder()
    x = torch.randn(2, 4, D)
    mask = torch.tensor([[False] * 4, bad])
    with pytest.raises(ValueError, match="right padding only"):
        enc(x, mask)
    with pytest.raises(ValueError, match="right padding only"):
        enc.layers[0](x, mask)


def test_layer_shares_one_block_and_residual():
    torch.manual_seed(0)
    layer = BiMamba2Layer(D, d_state=8, headdim=16, chunk_size=8, use_kernels=False)
    names = {n for n, _ in layer.named_parameters()}
    assert sum(n.endswith("in_proj.weight") for n in names) == 1  # one set of weights for both directions
    assert "norm.weight" in names
    # With the block output scaled to zero, the layer is the identity on valid positions.
    torch.nn.init.zeros_(layer.block.out_proj.weight)
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        assert torch.equal(layer(x, None), x)


def test_layer_matches_explicit_formula():
    # x + fwd + flip(block(flip(norm x))), per sample on its valid part, zero on padding.
    torch.manual_seed(0)
    layer = BiMamba2Layer(D, d_state=8, headdim=16, chunk_size=8, use_kernels=False).eval()
    x = torch.randn(2, 10, D)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[1, 6:] = True
    with torch.no_grad():
        y = layer(x, mask)
        for i, n in enumerate((10, 6)):
            h = layer.norm(x[i : i + 1, :n])
            expected = x[i, :n] + layer.block(h)[0] + layer.block(h.flip(1))[0].flip(0)
            assert (y[i, :n] - expected).abs().max() < 1e-5
        assert torch.all(y[1, 6:] == 0)


def test_gradient_checkpointing_same_grads():
    x = torch.randn(2, 15, D)
    m = torch.zeros(2, 15, dtype=torch.bool)
    m[1, 10:] = True
    grads, calls = [], []
    for ckpt in (False, True):
        enc = make_encoder(gradient_checkpointing=ckpt, dropout=0.0).train()
        n_calls = [0]
        enc.layers[0].block.in_proj.register_forward_hook(lambda *_: n_calls.__setitem__(0, n_calls[0] + 1))
        enc(x, m).square().sum().backward()
        grads.append([p.grad.clone() for p in enc.parameters()])
        calls.append(n_calls[0])
    assert calls == [1, 2]  # recomputed in the backward pass when checkpointing
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_tiled_encoder_matches_untiled():
    # Long-sequence inference runs the directions one after the other, tile by tile: same result.
    enc = make_encoder(tile_len=None)
    seqs = [torch.randn(n, D) for n in (61, 40)]
    x, m = pad_to(seqs, 61)
    with torch.no_grad():
        ref = enc(x, m)
        for layer in enc.layers:
            layer.block.tile_len = 13
        tiled = enc(x, m)
    assert (tiled - ref).abs().max() < 1e-5
    assert torch.all(tiled[m] == 0)


@pytest.mark.parametrize(("tile", "recompute_tokens"), [(13, None), (8, None), (2, None), (13, 20)])
@pytest.mark.parametrize("lengths", [(61, 40), (61, 61)])  # padded: whole-sequence path; one length: long_training
def test_tiled_training_matches_untiled_with_gradients(tile, recompute_tokens, lengths):
    """Training tiles (state carried across; checkpointed beyond the recompute budget) give the untiled outputs and
    gradients, padding included; tiles shorter than the conv width, not multiples of the chunk size, and inside
    recomputed slices."""
    torch.manual_seed(3)
    seqs = [torch.randn(n, D, dtype=torch.float64) for n in lengths]
    x, m = pad_to(seqs, 61)
    x = x.double()
    results = []
    for tile_len in (None, tile):
        enc = make_encoder(tile_len=tile_len, recompute_tokens=recompute_tokens, dropout=0.0).double().train()
        calls = []
        scan = enc.layers[0].block.conv_scan
        enc.layers[0].block.conv_scan = lambda xbc, dt, state=None: calls.append(xbc.shape[1]) or scan(xbc, dt, state)
        xi = x.clone().requires_grad_(True)
        out = enc(xi, m)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        results.append((out.detach(), xi.grad, [q.grad.clone() for q in enc.parameters()]))
        if tile_len is None:
            assert set(calls) == {61}
        elif recompute_tokens is None:  # every tile once (per direction without padding): nothing recomputed
            assert max(calls) <= tile and sum(calls) == (61 if lengths[0] != lengths[1] else 2 * 61)
        else:  # every tile, then each recomputed in the backward pass (inside the recomputed slices)
            assert max(calls) <= tile and sum(calls) >= 2 * 61
    (o1, g1, p1), (o2, g2, p2) = results
    torch.testing.assert_close(o2, o1, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g2, g1, rtol=1e-8, atol=1e-10)
    for a, b in zip(p2, p1):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_compile_flag_keeps_names_and_falls_back(caplog, monkeypatch):
    from scmamba2.nn import bidirectional

    plain = make_encoder()
    compiled = make_encoder(compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())  # checkpoints interchange
    compiled.load_state_dict(plain.state_dict())

    def broken_compile(fn, **kw):
        def fail(*a, **k):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(bidirectional.torch, "compile", broken_compile)
    fallback = make_encoder(compile=True)
    fallback.load_state_dict(plain.state_dict())
    x = torch.randn(2, 12, D)
    with torch.no_grad(), caplog.at_level("WARNING"):
        assert (fallback(x) - plain(x)).abs().max() < 1e-6
    assert "falling back to eager" in caplog.text


@pytest.mark.parametrize("recompute_tokens", [None, 10, 4096])
def test_shared_projections_match_two_block_calls_with_grads(recompute_tokens):
    # The layer projects once and scans both directions (in recomputed slices of whole sequences when
    # recompute_tokens is set); outputs and every gradient equal those of the block run on each direction.
    torch.manual_seed(0)
    layer = BiMamba2Layer(D, d_state=8, headdim=16, chunk_size=8, use_kernels=False,
                          recompute_tokens=recompute_tokens).double().train()
    layer.block.out_proj.bias = torch.nn.Parameter(torch.randn(D, dtype=torch.float64))  # counted once per direction
    x = torch.randn(3, 11, D, dtype=torch.float64)
    mask = torch.zeros(3, 11, dtype=torch.bool)
    mask[1, 7:] = True
    mask[2, 3:] = True
    lengths = (~mask).sum(1)
    weight = torch.randn(3, 11, D, dtype=torch.float64)

    def reference(inp):
        h = layer.norm(inp).masked_fill(mask.unsqueeze(-1), 0.0)
        out = inp + layer.block(h) + reverse_valid(layer.block(reverse_valid(h, lengths)), lengths)
        return out.masked_fill(mask.unsqueeze(-1), 0.0)

    results = []
    for fn in (reference, lambda inp: layer(inp, mask)):
        inp = x.clone().requires_grad_(True)
        (fn(inp) * weight).sum().backward()
        results.append([fn(x).detach(), inp.grad] + [p.grad.clone() for p in layer.parameters()])
        layer.zero_grad()
    for got, want in zip(results[1], results[0]):
        assert torch.allclose(got, want, atol=1e-10, rtol=1e-9)


def test_recompute_slices_store_less():
    # With recomputation the layer keeps far fewer bytes for the backward pass than without.
    def saved_bytes(recompute_tokens):
        torch.manual_seed(0)
        layer = BiMamba2Layer(D, d_state=8, headdim=16, chunk_size=8, use_kernels=False,
                              recompute_tokens=recompute_tokens).train()
        x = torch.randn(4, 64, D, requires_grad=True)
        seen = {}
        params = {p.untyped_storage().data_ptr() for p in layer.parameters()}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:  # activations only
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
        return sum(seen.values())

    assert saved_bytes(64) < 0.5 * saved_bytes(None)
    # What it keeps: the layer's input (the norm and in_proj are recomputed from it), out_proj's input (expand x
    # the input's size) and one scale a row; nothing else of the input's size.
    x_bytes = 4 * 64 * D * 4
    assert saved_bytes(64) <= (1 + 2) * x_bytes + 4 * 64 * 4 + 1024
    # a batch within the budget (4 x 64 = 256 tokens) stores everything: the fastest step
    assert saved_bytes(256) == saved_bytes(None)


def test_recompute_and_slice_tokens_must_be_positive():
    with pytest.raises(ValueError, match="recompute_tokens"):
        BiMamba2Layer(D, recompute_tokens=0)
    with pytest.raises(ValueError, match="slice_tokens"):
        BiMamba2Layer(D, slice_tokens=0)


def test_slices_without_autograd_match_the_whole_batch():
    # Validation / inference also run the scan in slices of whole sequences: same output as one call.
    x = torch.randn(5, 12, D, dtype=torch.float64)
    mask = torch.zeros(5, 12, dtype=torch.bool)
    mask[2, 8:] = True
    outs = []
    for tokens in (None, 20):  # 20 tokens = one sequence per slice
        torch.manual_seed(0)
        layer = BiMamba2Layer(D, d_state=8, headdim=16, chunk_size=8, use_kernels=False,
                              slice_tokens=tokens).double().eval()
        seen = []  # the projections run per slice too: one slice's in_proj output at a time
        layer.block.in_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
        with torch.no_grad():
            outs.append(layer(x, mask))
        assert seen == ([5] if tokens is None else [1] * 5)
    assert torch.allclose(outs[0], outs[1], atol=1e-12)


def test_recomputed_slices_take_in_proj_along_and_keep_the_gradients():
    # Above recompute_tokens, in_proj runs inside the recomputed slices (of slice_tokens tokens): its output is
    # not stored for the whole batch; the loss and the gradients are those of the whole-batch layer.
    x = torch.randn(5, 12, D, dtype=torch.float64)
    mask = torch.zeros(5, 12, dtype=torch.bool)
    mask[3, 7:] = True
    results = []
    for recompute in (None, 30):
        torch.manual_seed(0)
        layer = BiMamba2Layer(D, d_state=8, headdim=16, chunk_size=8, use_kernels=False, recompute_tokens=recompute,
                              slice_tokens=24).double().train()
        seen = []
        layer.block.in_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
        xi = x.clone().requires_grad_(True)
        layer(xi, mask).square().sum().backward()
        results.append((xi.grad, [p.grad for p in layer.parameters()]))
        # slices of 24 tokens = 2 sequences, run forwards and again in the backward pass
        assert sorted(seen) == ([5] if recompute is None else [1, 1, 2, 2, 2, 2])
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


def test_bfloat16_autocast_training_close_to_float32():
    # Under bf16 autocast on the CPU the projections run in bfloat16 and everything between them (conv, scan, gated
    # norm) in float32: output and every gradient within bfloat16 rounding of the float32 layer's (relative L2
    # ~0.3-0.6 % measured; 2 % allowed).
    from torch.utils._python_dispatch import TorchDispatchMode

    class Dtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.bmm, torch.ops.aten.addmm):
                self.seen.setdefault(func.overloadpacket.__name__, set()).update(
                    a.dtype for a in args if isinstance(a, torch.Tensor))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    layer = BiMamba2Layer(D, d_state=8, headdim=16, chunk_size=8, dropout=0.0, use_kernels=False).train()
    x, mask = pad_to([torch.randn(20, D), torch.randn(13, D)], 20)
    weights = torch.randn(D)
    results = []
    for bf16 in (False, True):
        layer.zero_grad()
        leaf = x.clone().requires_grad_(True)
        with Dtypes() as rec:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = layer(leaf, mask)
            (y.float() * weights).sum().backward()
        results.append((y.detach().float(), leaf.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}))
    assert rec.seen["mm"] == {torch.bfloat16} and rec.seen["bmm"] == {torch.float32}  # projections; the scan
    (y0, dx0, g0), (y1, dx1, g1) = results
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert 0 < rel(y1, y0) < 2e-2  # > 0: bfloat16 really ran
    assert rel(dx1, dx0) < 2e-2
    for name in g0:
        assert rel(g1[name], g0[name]) < 2e-2, name
