"""Backend kernels: the choice of `config.kernels`, and oneDNN convolutions through XLA's FFI
(values and gradients against XLA's, what `onednn.conv_general_dilated` covers, build errors
that say what is missing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxseg import kernels
from jaxseg.kernels import depthwise, onednn
from jaxseg.models.unet import UNet

ROOT = Path(__file__).resolve().parents[1]
NHWC = ("NHWC", "HWIO", "NHWC")
needs_onednn = pytest.mark.skipif(
    not onednn.available(), reason="oneDNN (e.g. libdnnl-dev) or a C++ compiler is missing"
)


def lax_conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)


def value_and_grads(conv, x, kernel, weights):
    return jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(conv(x, k) * weights), argnums=(0, 1)))(x, kernel)


def uses_ffi(fn, *args) -> bool:
    return "ffi_call" in str(jax.make_jaxpr(fn)(*args))


@pytest.fixture
def fresh_choice():
    kernels.resolve.cache_clear()
    kernels.convolution.cache_clear()
    yield
    kernels.resolve.cache_clear()
    kernels.convolution.cache_clear()


def test_xla_is_lax_and_unknown_names_are_an_error(fresh_choice):
    assert kernels.convolution("xla") is jax.lax.conv_general_dilated
    with pytest.raises(ValueError, match="config.kernels must be one of .*'cudnn'"):
        kernels.convolution("cudnn")


def test_without_onednn_auto_falls_back_and_onednn_is_an_error(fresh_choice, monkeypatch, caplog):
    monkeypatch.setattr(onednn, "unavailable_reason", lambda: "no oneDNN here")
    with caplog.at_level("WARNING", logger="jaxseg"):
        assert kernels.resolve("auto") == "xla"
    assert "XLA's convolutions (no oneDNN here)" in caplog.text
    dense = kernels.convolution("auto")  # XLA's, with the CPU's depthwise route around it
    x, k = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 2))
    assert "ffi" not in str(jax.make_jaxpr(lambda x, k: dense(x, k, (1, 1), "SAME", dimension_numbers=NHWC))(x, k))
    with pytest.raises(RuntimeError, match="config.kernels='onednn' cannot run here: no oneDNN here"):
        kernels.convolution("onednn")


@needs_onednn
def test_auto_takes_onednn_where_it_runs(fresh_choice):
    assert kernels.resolve("auto") == kernels.resolve("onednn") == "onednn"
    x, k = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 2))
    for name in ("auto", "onednn"):
        convolve = kernels.convolution(name)
        assert uses_ffi(lambda x, k, c=convolve: c(x, k, (1, 1), "SAME", dimension_numbers=NHWC), x, k)


@needs_onednn
@pytest.mark.parametrize(
    "x_shape, k_shape, strides, padding, dilation, groups",
    [
        (*case, 1)
        for case in [
            ((2, 9, 7, 5), (3, 3, 5, 6), (1, 1), "SAME", (1, 1)),
            ((1, 8, 8, 3), (1, 1, 3, 4), (1, 1), "SAME", (1, 1)),
            ((2, 6, 10, 4), (5, 5, 4, 3), (1, 1), "SAME", (1, 1)),
            ((2, 8, 8, 4), (2, 2, 4, 3), (1, 1), "SAME", (1, 1)),  # even kernel: XLA's "SAME" pads 0 before, 1 after
            (
                (2, 7, 9, 3),
                (1, 3, 3, 4),
                (1, 1),
                "SAME",
                (1, 1),
            ),  # non-square kernels: rows and columns padded differently
            ((1, 6, 5, 2), (3, 2, 2, 3), (1, 1), "SAME", (1, 1)),
            ((1, 3, 4, 2), (5, 5, 2, 2), (1, 1), "SAME", (1, 1)),  # a kernel larger than the image
            ((3, 16, 16, 32), (3, 3, 32, 16), (1, 1), "SAME", (1, 1)),
            ((2, 9, 11, 5), (3, 3, 5, 6), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # ResNet's stride-2 3x3, odd sizes
            ((1, 15, 13, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3)), (1, 1)),  # ResNet's stem
            ((2, 10, 10, 4), (1, 1, 4, 6), (2, 2), "VALID", (1, 1)),  # shortcut: the last row and column unused
            ((2, 16, 16, 4), (3, 3, 4, 3), (1, 1), ((6, 6), (6, 6)), (6, 6)),  # DeepLab's dilated ASPP
            ((1, 12, 12, 3), (3, 3, 3, 4), (2, 1), "SAME", (2, 1)),
            ((1, 9, 9, 2), (4, 4, 2, 3), (4, 4), "VALID", (1, 1)),  # patch embedding; a row and a column unused
            ((1, 9, 9, 2), (3, 3, 2, 3), (2, 2), ((0, 2), (1, 0)), (1, 1)),  # uneven explicit pads
        ]
    ]
    + [
        ((2, 9, 9, 6), (3, 3, 1, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), 6),  # depthwise (MiT's Mix-FFN)
        ((1, 12, 12, 4), (7, 7, 1, 4), (1, 1), ((3, 3), (3, 3)), (1, 1), 4),  # ConvNeXt's 7x7
        ((2, 9, 9, 6), (3, 3, 1, 12), (2, 2), ((1, 1), (1, 1)), (1, 1), 6),  # a channel multiplier, strided
        ((2, 16, 16, 4), (3, 3, 1, 4), (1, 1), ((6, 6), (6, 6)), (6, 6), 4),  # DeepLab's separable ASPP
        ((2, 10, 10, 8), (3, 3, 2, 8), (1, 1), ((2, 2), (2, 2)), (2, 2), 4),  # grouped (ResNeXt)
    ],
)
def test_values_and_gradients_match_xla(x_shape, k_shape, strides, padding, dilation, groups):
    def conv(convolve):
        return lambda x, k: convolve(
            x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC, feature_group_count=groups
        )

    ours, reference = conv(onednn.conv_general_dilated), conv(jax.lax.conv_general_dilated)
    kx, kk, kw = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape)
    kernel = jax.random.normal(kk, k_shape)
    ref_outputs = jax.jit(reference)(x, kernel)
    weights = jax.random.normal(kw, ref_outputs.shape)
    assert uses_ffi(ours, x, kernel)
    _, (dx, dk) = value_and_grads(ours, x, kernel, weights)
    _, (ref_dx, ref_dk) = value_and_grads(reference, x, kernel, weights)
    # The outputs, not the scalar objective: its sum cancels (0.12 from ~760 terms of size ~7),
    # so its relative error measures the summation order rather than the convolution.
    for ours_, ref in [(jax.jit(ours)(x, kernel), ref_outputs), (dx, ref_dx), (dk, ref_dk)]:
        np.testing.assert_allclose(ours_, ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(ref).max()))


@needs_onednn
def test_vmap_over_a_member_axis_matches_each_member():
    kx, kk = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (3, 2, 8, 8, 4))
    kernels = jax.random.normal(kk, (3, 3, 3, 4, 5))
    loss = lambda x, k: jnp.sum(jnp.sin(onednn.conv2d(x, k)))
    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=1)))(x, kernels)
    for member in range(3):
        ref = jax.grad(lambda k: jnp.sum(jnp.sin(lax_conv(x[member], k))))(kernels[member])
        np.testing.assert_allclose(grads[member], ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(ref).max()))


@needs_onednn
def test_conv_general_dilated_covers_float32_convolutions():
    x, k = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 2))

    def route(x, k, strides=(1, 1), padding="SAME", **options):
        return onednn.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC, **options)

    assert uses_ffi(route, x, k)
    assert uses_ffi(lambda x, k: route(x, k, strides=(2, 2)), x, k)
    assert uses_ffi(lambda x, k: route(x, k, padding="VALID", rhs_dilation=(2, 2)), x, k)
    assert uses_ffi(lambda x, k: route(x, k, padding=((0, 2), (1, 1))), x, k)
    assert uses_ffi(lambda x, k: route(x, k, feature_group_count=2), x, jnp.ones((3, 3, 2, 2)))
    kept = {  # what XLA keeps, it computes as lax does
        "bfloat16": (x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), {}),
        "negative pads": (x, k, {"padding": ((-1, 1), (1, 1))}),
        "transposed": (x, k, {"lhs_dilation": (2, 2), "padding": ((1, 1), (1, 1))}),
        "empty output": (x, jnp.ones((9, 9, 4, 2)), {"padding": "VALID"}),
    }
    for name, (x_, k_, options) in kept.items():
        assert not uses_ffi(lambda x, k: route(x, k, **options), x_, k_), name
        options = {"strides": (1, 1), "padding": "SAME", **options}
        np.testing.assert_array_equal(
            route(x_, k_, **options),
            jax.lax.conv_general_dilated(
                x_, k_, options.pop("strides"), options.pop("padding"), dimension_numbers=NHWC, **options
            ),
        )


@needs_onednn
def test_a_unet_gives_the_same_loss_and_gradients_on_onednn_and_on_xla():
    images = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))

    def loss_of(**options):
        graphdef, params, rest = nnx.split(UNet(3, depth=2, base_width=8, rngs=nnx.Rngs(0), **options), nnx.Param, ...)

        def loss(params):
            logits = nnx.merge(graphdef, params, rest, copy=True)(images, train=True)
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

        return loss, params

    loss, params = loss_of(conv_general_dilated=onednn.conv_general_dilated)
    ref_loss, ref_params = loss_of()
    assert uses_ffi(loss, params) and not uses_ffi(ref_loss, ref_params)
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    ref_value, ref_grads = jax.jit(jax.value_and_grad(ref_loss))(ref_params)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for ours, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * float(jnp.abs(ref).max()))


def test_bad_operands_are_an_error():
    with pytest.raises(ValueError, match="float32"):
        onednn.conv2d(jnp.ones((1, 4, 4, 2), jnp.bfloat16), jnp.ones((3, 3, 2, 2), jnp.bfloat16))
    with pytest.raises(ValueError, match=r"kernel \[KH, KW, C / groups, O\]"):
        onednn.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 5, 2)))
    with pytest.raises(ValueError, match=r"strides and dilation >= 1; got strides \(0, 1\)"):
        onednn.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), strides=(0, 1))
    with pytest.raises(ValueError, match="non-empty output"):
        onednn.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((5, 5, 2, 2)), padding="VALID")
    with pytest.raises(ValueError, match="pads >= 0"):
        onednn.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), padding=((-1, 0), (0, 0)))


def test_a_missing_compiler_or_a_failed_build_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(onednn.OneDnnUnavailable, match="running the C\\+\\+ compiler .* failed"):
        onednn.build(tmp_path / "conv.so")
    # A compiler that writes part of its output, then fails with a message.
    failing = tmp_path / "failing-c++"
    failing.write_text(
        '#!/bin/sh\nwhile [ "$1" != -o ]; do shift; done; echo partial > "$2"\n'
        'echo "conv.cc:1: error: no oneapi/dnnl/dnnl.hpp" >&2; exit 1\n'
    )
    failing.chmod(0o755)
    monkeypatch.setenv("CXX", str(failing))
    with pytest.raises(onednn.OneDnnUnavailable, match="building onednn_conv.cc failed .*no oneapi/dnnl/dnnl.hpp"):
        onednn.build(tmp_path / "cache" / "conv.so")
    assert list((tmp_path / "cache").iterdir()) == []  # no partial library left behind
    (tmp_path / "file").write_text("")
    with pytest.raises(onednn.OneDnnUnavailable, match="JAXSEG_CACHE_DIR"):
        onednn.build(tmp_path / "file" / "conv.so")  # a cache directory that cannot exist


def test_the_library_name_follows_the_source_and_jaxlib(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXSEG_CACHE_DIR", str(tmp_path))
    path = onednn.library_path()
    assert path.parent == tmp_path and path.name.startswith("onednn_conv-") and path.suffix == ".so"
    monkeypatch.setattr(onednn.jaxlib, "__version__", "0.0.0")
    assert onednn.library_path() != path
    other_jaxlib = onednn.library_path()
    monkeypatch.setenv("CXX", "clang++")
    assert onednn.library_path() not in (path, other_jaxlib)


@needs_onednn
def test_a_cached_library_that_does_not_load_is_rebuilt(tmp_path):
    onednn.library_path(tmp_path).write_text("not a shared library")
    library = onednn.load(tmp_path)
    assert hasattr(library, "JaxsegOneDnnConvForward")


@needs_onednn
def test_the_handlers_check_shapes():
    x, kernel = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 3))
    same = onednn.geometry_of(x.shape, kernel.shape)
    with pytest.raises(
        Exception, match=r"shapes do not fit: x \[1, 4, 4, 2\], kernel \[3, 3, 2, 3\], output \[1, 4, 4, 5\], strides"
    ):
        jax.block_until_ready(onednn._call("forward", (1, 4, 4, 5), same, x, kernel))
    strided = same._replace(strides=(2, 2))  # the output's size must follow the geometry
    with pytest.raises(Exception, match=r"output \[1, 4, 4, 3\], strides \[2, 2\], dilation \[1, 1\]"):
        jax.block_until_ready(onednn._call("forward", (1, 4, 4, 3), strided, x, kernel))


@needs_onednn
def test_conv2d_works_in_a_fresh_process_without_asking_available_first():
    script = (
        "import jax, jax.numpy as jnp\n"
        "from jaxseg.kernels import onednn\n"
        "y = jax.jit(onednn.conv2d)(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 3)))\n"
        "print(float(y[0, 1, 1, 0]), float(y[0, 0, 0, 0]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["18.0", "8.0"]  # 9 taps x 2 channels inside, 4 x 2 at a corner


@needs_onednn
def test_multi_device_programs_keep_xla_convolutions():
    # XLA cannot partition an FFI call across devices: with 2 CPU devices "auto" is XLA's.
    script = (
        "import jax\n"
        "from jaxseg import kernels\n"
        "print(jax.device_count(), kernels.resolve('auto'))\n"
        "try:\n"
        "    kernels.resolve('onednn')\n"
        "except RuntimeError as error:\n"
        "    print('devices' in str(error))\n"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert out.stdout.split() == ["2", "xla", "True"]


@pytest.mark.parametrize(
    "shape, kernel, strides, padding, dilation, multiplier",
    [
        ((2, 9, 11, 6), 3, (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
        ((2, 9, 11, 6), 3, (2, 2), ((1, 1), (1, 1)), (1, 1), 1),  # strided, odd sizes
        ((2, 16, 16, 4), 3, (1, 1), ((6, 6), (6, 6)), (6, 6), 1),  # DeepLab's dilated ASPP
        ((1, 12, 10, 5), 7, (1, 1), "SAME", (1, 1), 2),  # ConvNeXt's 7x7; a channel multiplier
        ((1, 13, 12, 3), 5, (2, 1), "VALID", (1, 2), 1),
    ],
)
def test_depthwise_shifts_equal_xlas_grouped_convolution(shape, kernel, strides, padding, dilation, multiplier):
    x = jax.random.normal(jax.random.key(0), shape)
    k = jax.random.normal(jax.random.key(1), (kernel, kernel, 1, shape[-1] * multiplier))

    def conv(convolve):
        return lambda x, k: convolve(
            x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=NHWC, feature_group_count=shape[-1]
        )

    routed = conv(depthwise.routed(jax.lax.conv_general_dilated))
    reference = conv(jax.lax.conv_general_dilated)
    assert "conv_general_dilated" not in str(jax.make_jaxpr(routed)(x, k))
    np.testing.assert_allclose(routed(x, k), reference(x, k), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))  # noqa: E731
    for ours, theirs in zip(jax.grad(loss(routed), (0, 1))(x, k), jax.grad(loss(reference), (0, 1))(x, k)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * float(jnp.abs(theirs).max()))
    half = routed(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(half.astype(jnp.float32), reference(x, k), rtol=0.05, atol=0.1)


def test_depthwise_route_leaves_other_convolutions_to_the_wrapped_function():
    calls = []

    def spy(*args, **options):
        calls.append(options.get("feature_group_count", args[7] if len(args) > 7 else 1))
        return jax.lax.conv_general_dilated(*args, **options)

    routed = depthwise.routed(spy)
    x = jnp.ones((1, 8, 8, 4))
    routed(x, jnp.ones((3, 3, 4, 4)), (1, 1), "SAME", dimension_numbers=NHWC)  # dense
    routed(x, jnp.ones((3, 3, 2, 4)), (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2)  # grouped
    routed(x, jnp.ones((3, 3, 1, 4)), (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=4)  # depthwise
    assert calls == [1, 2]


def test_cpu_routes_compute_depthwise_layers_as_shifts_and_xla_keeps_its_own(fresh_choice):
    layer = nnx.Conv(4, 4, (3, 3), feature_group_count=4, rngs=nnx.Rngs(0))
    x = jnp.ones((1, 8, 8, 4))
    for name, shifted in (("xla", False), ("auto", True)):
        layer.conv_general_dilated = kernels.convolution(name)
        assert ("conv_general_dilated" not in str(jax.make_jaxpr(lambda x: layer(x))(x))) == shifted


@needs_onednn
def test_onednn_takes_float32_depthwise_layers_and_shifts_take_bfloat16_ones(fresh_choice):
    graphs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        layer = nnx.Conv(4, 4, (3, 3), feature_group_count=4, dtype=dtype, rngs=nnx.Rngs(0))
        layer.conv_general_dilated = kernels.convolution("onednn")
        graphs[dtype] = str(jax.make_jaxpr(lambda x, layer=layer: layer(x))(jnp.ones((1, 8, 8, 4))))
    assert "ffi_call" in graphs[jnp.float32]
    half = graphs[jnp.bfloat16]
    assert "ffi_call" not in half and "conv_general_dilated" not in half
