"""The native simulator's fast paths against tests/reference.py, its generic complex path and PennyLane.

The fast paths (closed form for the IQP candidates, the real layer-by-layer batches) are
checked at sizes PennyLane's default.qubit cannot afford in a test: values against
tests/reference.py (a dense textbook simulator that shares no code with the package), gradients
against autograd through `native._simulate_any` (a plain complex simulation that shares only
`layer_op` with the fast paths; its values are checked against the reference too).
"""

import pytest
import reference
import torch
from helpers import load_kernel_or_skip

from diffqas_runner.quantum import CANDIDATES, candidate, closed_form, kernel, native, probabilities
from diffqas_runner.quantum.candidates import CHAIN, RING, RX, RY, Candidate, Entangler, Rotation


def _theta(n, layers, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(layers, n, generator=gen, dtype=torch.float64) * 4 * torch.pi - 2 * torch.pi).to(dtype)


def _reference(theta, cands):
    return torch.stack([native._simulate_any(theta, c) for c in cands])


def _value_and_grad(fn, theta, cands, coeffs):
    theta = theta.clone().requires_grad_()
    probs = fn(theta, cands)
    (coeffs * probs).sum().backward()
    return probs.detach(), theta.grad


LEARNABLE = [c for c in CANDIDATES if not c.theta_independent(4)]
IQP = [candidate(7), candidate(10)]


def test_closed_form_is_chosen_by_structure_not_by_number():
    assert [c.number for c in CANDIDATES if closed_form.applies(c, 6)] == [7, 10]
    # any no-H Rx candidate with a CNOT entangler qualifies, whatever it is called
    assert closed_form.applies(Candidate(99, "none", RING, RX), 5)
    assert closed_form.applies(Candidate(99, "none", Entangler("cnot", "all_to_all"), RX), 5)
    assert not closed_form.applies(Candidate(99, "H", RING, RX), 5)
    assert not closed_form.applies(Candidate(99, "none", CHAIN, RY), 5)
    assert not closed_form.applies(Candidate(99, "none", Entangler("cz", "ring"), RX), 5)  # signs: no closed form


@pytest.mark.parametrize("entangler", [CHAIN, RING, Entangler("cnot", "all_to_all"), Entangler("cnot", "stride2")])
@pytest.mark.parametrize("n", [2, 3, 6, 9])
def test_cnot_layer_is_linear_over_gf2_and_parity_rows_follow_it(entangler, n):
    images = closed_form.linear_images(entangler, n)
    assert images is not None and len(set(images.tolist())) == n
    rows = closed_form.parity_rows(entangler, n, 4)
    assert rows.shape == (4, n)
    assert rows[-1].tolist() == [1 << (n - 1 - q) for q in range(n)]  # the last layer: the wire itself
    perm = native.entangler_permutation(entangler, n)
    forward = torch.argsort(perm)  # the classical CNOT layer x -> A x
    torch.testing.assert_close(rows[:-1], forward[rows[1:]])  # one more application per layer back


def _hadamard_columns(n: int, columns: torch.Tensor) -> torch.Tensor:
    """Columns of the dense +-1 Walsh-Hadamard matrix, (-1)^popcount(i & j), shape (2**n, len(columns))."""
    both = torch.arange(2**n)[:, None] & columns[None, :]
    parity = torch.zeros_like(both)
    for b in range(n):
        parity ^= (both >> b) & 1
    return (1 - 2 * parity).to(torch.float64)


def test_walsh_hadamard_transform_matches_the_dense_matrix(kernel_mode):
    """Both paths (the kernel's butterflies, the GEMM stages) against the dense +-1 matrix (every
    column up to n = 11, 64 random ones at n = 13 and 14, where the kernel's high-bit tiles run),
    float32 too, and the backward: H is symmetric, so the gradient of <c, H x> is H c."""
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 5, 7, 11, 13, 14):
        cols = torch.arange(2**n) if n <= 11 else torch.randint(0, 2**n, (64,), generator=gen)
        dense = _hadamard_columns(n, cols)
        x = torch.randn(3, 2**n, generator=gen, dtype=torch.float64, requires_grad=True)
        c = torch.randn(3, 2**n, generator=gen, dtype=torch.float64)
        y = closed_form.wht(x)
        torch.testing.assert_close(y[:, cols], x.detach() @ dense, rtol=0, atol=1e-10 * 2 ** (n / 2))
        (grad,) = torch.autograd.grad((c * y).sum(), x)
        torch.testing.assert_close(grad[:, cols], c @ dense, rtol=0, atol=1e-10 * 2 ** (n / 2))
        y32 = closed_form.wht(x.detach().float())
        assert y32.dtype == torch.float32
        torch.testing.assert_close(y32.double()[:, cols], x.detach() @ dense, rtol=0, atol=1e-4 * 2 ** (n / 2))
    assert (type(y.grad_fn).__name__ == "WHTBackward") == (kernel_mode == "cpp")  # the path under test ran
    if kernel_mode == "cpp":  # what the kernel cannot take is refused, not transformed wrongly
        with pytest.raises(ValueError, match="2\\*\\*n"):
            kernel.WHT.apply(torch.ones(2, 6, dtype=torch.float64))
        with pytest.raises(ValueError, match="2\\*\\*n"):
            kernel.WHT.apply(torch.ones(2, 0, dtype=torch.float64))
        half = torch.ones(2, 8, dtype=torch.float16)
        torch.testing.assert_close(closed_form.wht(half).double(), closed_form.wht_gemm(half.double()))  # torch's path


@pytest.mark.parametrize("n,layers", [(2, 1), (3, 5), (6, 2), (8, 7), (11, 3), (13, 2)])
def test_closed_form_matches_layers_and_reference_with_gradients(n, layers, kernel_mode):
    theta = _theta(n, layers, seed=n + layers)
    coeffs = torch.randn(len(IQP), 2**n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fast_p, fast_g = _value_and_grad(closed_form.probabilities, theta, IQP, coeffs)
    layer_p, layer_g = _value_and_grad(native._simulate_group, theta, tuple(IQP), coeffs)
    ref_p, ref_g = _value_and_grad(_reference, theta, IQP, coeffs)
    assert fast_g.abs().max() > 1e-3
    for p, g in ((layer_p, layer_g), (ref_p, ref_g)):
        torch.testing.assert_close(fast_p, p, rtol=0, atol=1e-12)
        torch.testing.assert_close(fast_g, g, rtol=0, atol=1e-10)


_REFERENCE_CACHE: dict = {}
REFERENCE_SIZES = [(13, 2), (13, 9), (15, 4), (17, 2), (17, 15)]


@pytest.mark.slow
@pytest.mark.parametrize("n,layers", REFERENCE_SIZES)
def test_fast_paths_match_the_generic_complex_path_at_13_to_17_qubits(n, layers, kernel_mode):
    theta = _theta(n, layers, seed=n * 7 + layers)
    coeffs = torch.randn(len(LEARNABLE), 2**n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    fast_p, fast_g = _value_and_grad(native.probabilities, theta, LEARNABLE, coeffs)
    if (n, layers) not in _REFERENCE_CACHE:  # shared by the two kernel modes
        _REFERENCE_CACHE[n, layers] = _value_and_grad(_reference, theta, LEARNABLE, coeffs)
    ref_p, ref_g = _REFERENCE_CACHE[n, layers]
    torch.testing.assert_close(fast_p, ref_p, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast_g, ref_g, rtol=0, atol=1e-9)
    if layers <= 4:  # against code that shares nothing with the package (both kernel modes)
        few = LEARNABLE[::2]  # 2 (H-Ent-Ry: the kernel's), 7 and 10 (closed form): the dense reference is slow at 17 qubits
        if ("dense", n, layers) not in _REFERENCE_CACHE:
            _REFERENCE_CACHE["dense", n, layers] = reference.probabilities(theta, few)
        torch.testing.assert_close(fast_p[::2], _REFERENCE_CACHE["dense", n, layers], rtol=0, atol=1e-12)


@pytest.mark.slow
def test_ry_rows_at_19_qubits_match_the_reference_where_the_high_bits_sums_are_flushed(monkeypatch):
    """At 19 qubits the kernel's backward runs 7 high bits: kernel.cpp's unrotate_tile_bits adds
    the angles' sums per column over 16 groups of rows before flushing them to float64, and the
    one-bit pass on the last high bit flushes four times, which no smaller size reaches (the final
    partial flush runs at 13-17 qubits: test_fast_paths_match_the_generic_complex_path...). The Ry row's values against the dense
    reference, its angles' gradient along two directions against the reference's central
    difference (float64), and float32's gradient against float64's."""
    load_kernel_or_skip(monkeypatch)
    n, layers = 19, 2
    cand = candidate(2)  # H-Ent-Ry: a row on ry_forward / ry_backward
    assert native._mode(cand, n, layers) == "ry"
    theta = _theta(n, layers, seed=19)
    coeffs = torch.randn(1, 2**n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    probs, grad = _value_and_grad(native.probabilities, theta, [cand], coeffs)
    torch.testing.assert_close(probs, reference.probabilities(theta, [cand]), rtol=0, atol=1e-12)
    assert grad.abs().max() > 1e-3
    gen = torch.Generator().manual_seed(4)
    for _ in range(2):
        direction = torch.randn(layers, n, generator=gen, dtype=torch.float64)
        want = reference.directional_derivative(theta, [cand], coeffs, direction)
        assert abs(float((grad * direction).sum()) - want) < 1e-8 * max(1.0, abs(want))
    _, grad32 = _value_and_grad(native.probabilities, theta.float(), [cand], coeffs.float())
    torch.testing.assert_close(grad32.double(), grad, rtol=0, atol=1e-4 * grad.abs().max().item())


def test_a_basis_map_that_is_not_gf2_linear_gets_no_closed_form(monkeypatch):
    n = 4
    shuffled = torch.randperm(2**n, generator=torch.Generator().manual_seed(0))  # not linear: 0 moves
    monkeypatch.setattr(closed_form, "entangler_permutation", lambda entangler, n: shuffled)
    assert closed_form.linear_images.__wrapped__(RING, n) is None
    monkeypatch.setattr(closed_form, "linear_images", closed_form.linear_images.__wrapped__)
    assert not closed_form.applies(Candidate(99, "none", RING, RX), n)


@pytest.mark.parametrize("n,layers", [(5, 3), (10, 4), (14, 15)])
def test_float32_end_to_end_agrees_with_float64_values_and_gradients(n, layers):
    theta = _theta(n, layers, seed=11)
    coeffs = torch.randn(12, 2**n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    p64, g64 = _value_and_grad(native.probabilities, theta, CANDIDATES, coeffs)
    p32, g32 = _value_and_grad(native.probabilities, theta.float(), CANDIDATES, coeffs.float())
    assert p32.dtype == g32.dtype == torch.float32
    # relative to each row's largest probability: at 14 qubits the entries themselves are ~1e-4.
    # Measured ~1e-6; float32 phases in the closed form (instead of float64 ones) give ~1e-5.
    scale = p64.abs().amax(1, keepdim=True)
    torch.testing.assert_close(p32.double() / scale, p64 / scale, rtol=0, atol=5e-6)
    torch.testing.assert_close(g32.double() / g64.abs().max(), g64 / g64.abs().max(), rtol=0, atol=1e-5)
    torch.testing.assert_close(p32.sum(1), torch.ones(12), rtol=0, atol=1e-5)


def test_closed_form_float32_keeps_its_phases_accurate_at_depth():
    # The phases Phi reach sum |theta| (~1e3 rad here): they are built in float64, which keeps the
    # float32 result at ~1.5e-6 of the largest probability; float32 phases measured ~6e-6.
    theta = _theta(12, 60, seed=11)
    p64 = closed_form.probabilities(theta, IQP)
    p32 = closed_form.probabilities(theta.float(), IQP)
    assert p32.dtype == torch.float32
    scale = p64.amax(1, keepdim=True)
    torch.testing.assert_close(p32.double() / scale, p64 / scale, rtol=0, atol=3e-6)


@pytest.mark.parametrize("n,layers", [(2, 3), (5, 4), (9, 3)])
def test_every_candidate_matches_pennylane_on_both_kernels(n, layers, kernel_mode):
    theta = _theta(n, layers, seed=n + 100 * layers)
    coeffs = torch.randn(12, 2**n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def run(backend):
        return _value_and_grad(lambda t, c: probabilities(t, c, backend=backend), theta, CANDIDATES, coeffs)

    (p, g), (ref_p, ref_g) = run("native"), run("pennylane")
    torch.testing.assert_close(p, ref_p, rtol=0, atol=1e-10)
    torch.testing.assert_close(g, ref_g, rtol=0, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,layers", [(2, 2), (3, 4), (11, 3), (12, 2), (13, 3), (14, 5)])
def test_cpp_kernel_matches_the_torch_layers(n, layers, dtype, monkeypatch):
    load_kernel_or_skip(monkeypatch)
    ry = tuple(c for c in CANDIDATES if c.rotation == RY)
    theta = _theta(n, layers, seed=n * layers, dtype=dtype)
    coeffs = torch.randn(len(ry), 2**n, generator=torch.Generator().manual_seed(6), dtype=dtype)
    fast = _value_and_grad(native._simulate_group, theta, ry, coeffs)
    monkeypatch.setenv(kernel.ENV, "torch")
    slow = _value_and_grad(native._simulate_group, theta, ry, coeffs)
    atol = (1e-12, 1e-10) if dtype == torch.float64 else (1e-6, 1e-4)
    torch.testing.assert_close(fast[0], slow[0], rtol=0, atol=atol[0])
    torch.testing.assert_close(fast[1], slow[1], rtol=0, atol=atol[1])
    assert fast[1].abs().max() > 1e-3


def test_kernel_mode_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(kernel.ENV, "torch")
    assert kernel.mode() == "torch" and kernel.load() is None
    monkeypatch.setenv(kernel.ENV, "fortran")
    with pytest.raises(ValueError, match=kernel.ENV):
        kernel.mode()


# --- memory chunking (backend.memory_mb) -----------------------------------------------------------
def test_chunked_simulation_gives_the_same_probabilities_and_gradients(kernel_mode, monkeypatch):
    """A tiny budget simulates wide32's candidates a few rows at a time (checkpointed on the torch
    path): the same probabilities and gradients as one batch, to rounding."""
    from diffqas_runner.config import search_space_file

    space = search_space_file("wide32")
    n, layers = 12, 3  # a Ry row needs 0.25 MB on the kernel, 1.1 MB on pure torch: 1 MB holds 4 or 1
    theta = torch.rand((layers, n, 3), dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 6.3
    coeffs = torch.randn(len(space), 2**n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def run(memory_mb):
        t = theta.clone().requires_grad_()
        probs = native.probabilities(t, space, memory_mb=memory_mb)
        (grad,) = torch.autograd.grad((coeffs * probs).sum(), t)
        return probs.detach(), grad

    calls = []
    real = native._simulate_group
    monkeypatch.setattr(native, "_simulate_group", lambda th, cands, mode=None: calls.append(len(cands)) or real(th, cands, mode))
    whole = run(10**6)
    batches = len(calls)
    calls.clear()
    chunked = run(1)
    per_row = native.row_bytes("ry", n, layers, torch.float64, kernel_mode == "cpp")  # the smallest rows
    assert max(calls) <= max(1, 2**20 // per_row) and len(calls) > batches  # it did chunk
    # to rounding: batched first-layer products round differently for different batch sizes
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(chunked[1], whole[1], rtol=1e-12, atol=1e-12)


def test_the_default_budget_is_half_the_free_memory_decided_once(monkeypatch):
    native.default_memory_mb.cache_clear()
    monkeypatch.setattr(native, "available_mb", lambda: 1000)
    assert native.default_memory_mb() == 500
    monkeypatch.setattr(native, "available_mb", lambda: 10)
    assert native.default_memory_mb() == 500  # once per process
    native.default_memory_mb.cache_clear()


# --- the Ry + Z-phase kernel (RyRz, RzRy, Rot rows) ------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,layers", [(1, 2), (2, 3), (5, 2), (12, 1), (12, 2), (13, 2), (14, 3)])  # n >= 13: high-bit tiles
def test_yz_kernel_matches_the_general_complex_kernel_on_states_and_gradients(n, layers, dtype, monkeypatch):
    """kernel.YZLayers (Ry on both planes, Z rotations as diagonal phases) against
    kernel.ComplexLayers (one 2x2 complex matrix per wire, separate code) on the same layers:
    random complex start states, random permutations and signs, every placement of the Z
    rotations; states and the gradients of state, Ry angles and Z angles."""
    load_kernel_or_skip(monkeypatch)
    gen = torch.Generator().manual_seed(n * 10 + layers)
    rows, dim = 2, 2**n
    start = torch.randn(rows, 2, dim, generator=gen, dtype=torch.float64).to(dtype)
    perm = torch.stack([torch.randperm(dim, generator=gen) for _ in range(rows)]).to(torch.int32)
    sign = torch.where(torch.rand(rows, dim, generator=gen) < 0.5, -1.0, 1.0).to(dtype)
    weights = torch.randn(rows, 2, dim, generator=gen, dtype=torch.float64).to(dtype)

    def run(fast, axes, theta, signs):
        state, t = start.clone().requires_grad_(), theta.clone().requires_grad_()
        if fast:
            pre = t[..., 0] if axes[0] == "Z" else None
            post = t[..., -1] if axes[-1] == "Z" else None
            out = kernel.YZLayers.apply(state, t[..., axes.index("Y")], pre, post, perm, signs)
        else:
            out = kernel.ComplexLayers.apply(state, native._single_qubit("complex", t, axes), perm, signs)
        return (out.detach(), *torch.autograd.grad((weights * out).sum(), (state, t)))

    for axes in (("Y", "Z"), ("Z", "Y"), ("Z", "Y", "Z")):
        for signs in (None, sign):
            theta = (torch.rand(layers, n, len(axes), generator=gen, dtype=torch.float64) * 12 - 6).to(dtype)
            fast, slow = run(True, axes, theta, signs), run(False, axes, theta, signs)
            tol = 1e-12 if dtype == torch.float64 else 2e-5
            for a, b, what in zip(fast, slow, ("state", "d state", "d angles")):
                torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, float(b.abs().max())), msg=f"{axes} {what}")
            assert fast[2].abs().max() > 1e-2  # the angles matter


def test_native_sends_ry_between_z_rows_to_the_yz_kernel(monkeypatch):
    """RyRz / Rot / RzRy rows take the Ry + Z-phase kernel in `native`; other complex rows do not."""
    load_kernel_or_skip(monkeypatch)
    used = []
    for cls in (kernel.YZLayers, kernel.ComplexLayers):
        real = cls.apply
        monkeypatch.setattr(cls, "apply", lambda *a, real=real, cls=cls: used.append(cls) or real(*a))
    for axes, expected in ((("Y", "Z"), kernel.YZLayers), (("Z", "Y", "Z"), kernel.YZLayers), (("Y", "X"), kernel.ComplexLayers)):
        used.clear()
        cand = Candidate(1, "H", RING, Rotation(axes))
        native._simulate_group(_theta(4, 3).unsqueeze(-1).repeat(1, 1, len(axes)), (cand,), "complex")
        assert used == [expected], axes


@pytest.mark.parametrize("n", [9, 14])
def test_kernel_results_do_not_depend_on_the_thread_count(n, monkeypatch):
    """Every job writes its own slice and partial sums, added in job order: 1 and 2 threads give the
    same bits (Ry, Ry + Z-phase and general complex rows, values and gradients)."""
    load_kernel_or_skip(monkeypatch)
    cands = (
        Candidate(1, "H", RING, RY),
        Candidate(2, "none", Entangler("cz", "chain"), Rotation(("Z", "Y", "Z"))),
        Candidate(3, "H", RING, Rotation(("Y", "X"))),
    )
    theta = torch.rand(3, n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) * 6.3
    coeffs = torch.randn(2**n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for cand in cands:
                t = theta[..., :1].squeeze(-1) if cand.rotation == RY else theta[..., : cand.rotation.n_angles]
                t = t.clone().requires_grad_()
                p = native._simulate_group(t, (cand,), native._layer_mode(cand))
                out.append((p.detach(), *torch.autograd.grad((coeffs * p).sum(), t)))
    finally:
        torch.set_num_threads(before)
    for one, two in zip(out[: len(cands)], out[len(cands) :]):
        assert all(torch.equal(a, b) for a, b in zip(one, two))
