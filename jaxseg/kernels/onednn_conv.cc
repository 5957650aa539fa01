// oneDNN convolutions as XLA FFI handlers for the CPU backend (built and loaded by
// jaxseg/kernels/onednn.py).
//
// All three take NHWC activations and HWIO kernels in float32 (grouped as XLA groups them:
// `groups` attribute, kernel [kh, kw, c / groups, o]), and the geometry as
// attributes of two values each (rows, columns): `strides`, `dilation` (XLA's: 1 is none),
// `pad_before` and `pad_after` (explicit, non-negative; the caller turns "SAME" into pads as
// lax does). oneDNN picks its own weight layout (`format_tag::any`); weights are reordered from
// and to HWIO around the call. Shapes that do not fit and exceptions from oneDNN come back as
// FFI errors, not aborts. Written for the oneDNN 2.x API (Debian 12's libdnnl-dev is 2.6.3).

#include <cstdint>
#include <exception>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

#if DNNL_VERSION_MAJOR != 2
#error "jaxseg's oneDNN convolutions are written for oneDNN 2.x (convolution_*::desc)"
#endif

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;
using Type = dnnl::memory::data_type;
using Span = ffi::Span<const int64_t>;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  static thread_local dnnl::stream stream(Engine());
  return stream;
}

// The convolution's geometry, as the FFI attributes carry it.
struct Geometry {
  Span strides, dilation, pad_before, pad_after;
  int64_t groups;
};

// The output size along one axis, as XLA computes it (floor division).
int64_t OutputSize(int64_t in, int64_t k, int64_t stride, int64_t dilation, int64_t before, int64_t after) {
  return (in + before + after - ((k - 1) * dilation + 1)) / stride + 1;
}

// The problem in oneDNN's terms: logical NCHW / OIHW dimensions, laid out as NHWC / HWIO.
struct Problem {
  memory::desc src, dst, weights_hwio, weights_any;
  memory::dims strides, dilates, pad_before, pad_after;

  // x [n, h, w, c], kernel [kh, kw, c, o], output [n, oh, ow, o].
  Problem(Span x, Span kernel, Span y, const Geometry& g)
      : src({x[0], x[3], x[1], x[2]}, Type::f32, Tag::nhwc),
        dst({y[0], y[3], y[1], y[2]}, Type::f32, Tag::nhwc),
        weights_hwio(Weights(kernel, g.groups)),
        weights_any(Weights(kernel, g.groups).dims(), Type::f32, Tag::any),
        strides({g.strides[0], g.strides[1]}),
        dilates({g.dilation[0] - 1, g.dilation[1] - 1}),  // oneDNN counts the gaps: 0 is none
        pad_before({g.pad_before[0], g.pad_before[1]}),
        pad_after({ExactPadAfter(x[1], kernel[0], y[1], g, 0), ExactPadAfter(x[2], kernel[1], y[2], g, 1)}) {}

  // The HWIO kernel [kh, kw, c / groups, o] as oneDNN's weights: OIHW, or with groups GOIHW,
  // output channel o in group o / (o_total / groups) as XLA counts them (strides of HWIGO).
  static memory::desc Weights(Span kernel, int64_t groups) {
    int64_t kh = kernel[0], kw = kernel[1], in = kernel[2], out = kernel[3];
    if (groups == 1) return memory::desc({out, in, kh, kw}, Type::f32, Tag::hwio);
    int64_t per_group = out / groups;
    return memory::desc({groups, per_group, in, kh, kw}, Type::f32,
                        memory::dims{per_group, 1, out, kw * in * out, in * out});
  }

  // The trailing pad that the output's last window reaches: XLA drops what lies beyond it
  // (floor division), oneDNN wants it said, as a negative pad where input rows go unused (its
  // 1x1 strided kernel gradient is wrong otherwise).
  static int64_t ExactPadAfter(int64_t in, int64_t k, int64_t out, const Geometry& g, int axis) {
    return (out - 1) * g.strides[axis] + (k - 1) * g.dilation[axis] + 1 - in - g.pad_before[axis];
  }

  dnnl::convolution_forward::primitive_desc Forward() const {
    dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
                                         weights_any, dst, strides, dilates, pad_before, pad_after);
    return dnnl::convolution_forward::primitive_desc(desc, Engine());
  }
};

// `kernel` (HWIO, caller's memory) in the layout `wanted`: the same memory, or a reordered copy.
memory WeightsAs(const memory::desc& wanted, memory kernel) {
  if (wanted == kernel.get_desc()) return kernel;
  memory copy(wanted, Engine());
  dnnl::reorder(kernel, copy).execute(Stream(), kernel, copy);
  return copy;
}

std::string Shape(Span dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

// x [N, H, W, C], kernel [KH, KW, C, O], y [N, OH, OW, O]: an error naming the shapes and the
// geometry unless they fit.
ffi::Error CheckShapes(Span x, Span kernel, Span y,
                       const Geometry& g) {
  bool attributes = g.strides.size() == 2 && g.dilation.size() == 2 && g.pad_before.size() == 2 &&
                    g.pad_after.size() == 2;
  bool fits = attributes && g.groups >= 1 && kernel[2] * g.groups == x[3] && kernel[3] % g.groups == 0 &&
              y[0] == x[0] && y[3] == kernel[3];
  for (int axis = 0; fits && axis < 2; ++axis) {
    fits = g.strides[axis] >= 1 && g.dilation[axis] >= 1 && g.pad_before[axis] >= 0 && g.pad_after[axis] >= 0 &&
           y[axis + 1] == OutputSize(x[axis + 1], kernel[axis], g.strides[axis], g.dilation[axis],
                                     g.pad_before[axis], g.pad_after[axis]);
  }
  if (fits) return ffi::Error::Success();
  std::string geometry = attributes ? ", strides " + Shape(g.strides) + ", dilation " + Shape(g.dilation) +
                                          ", pads " + Shape(g.pad_before) + " before, " + Shape(g.pad_after) + " after, " +
                                          std::to_string(g.groups) + " groups"
                                    : ", attributes of 2 values expected";
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN convolution: shapes do not fit: x " + Shape(x) +
                                                          ", kernel " + Shape(kernel) + ", output " + Shape(y) +
                                                          geometry);
}

// Runs `body` (which waits for its stream before its temporaries go) with oneDNN's exceptions
// turned into FFI errors that name the shapes.
template <typename Body>
ffi::Error Guarded(Span x, Span kernel, Span y,
                   const Geometry& g, Body body) {
  if (ffi::Error error = CheckShapes(x, kernel, y, g); error.failure()) return error;
  try {
    body(Problem(x, kernel, y, g));
    return ffi::Error::Success();
  } catch (const std::exception& error) {
    return ffi::Error(ffi::ErrorCode::kInternal, "oneDNN convolution with x " + Shape(x) + ", kernel " + Shape(kernel) +
                                                     ": " + error.what());
  }
}

ffi::Error Forward(ffi::BufferR4<ffi::F32> x, ffi::BufferR4<ffi::F32> kernel, ffi::ResultBufferR4<ffi::F32> y,
                   Span strides, Span dilation, Span pad_before, Span pad_after, int64_t groups) {
  Geometry g{strides, dilation, pad_before, pad_after, groups};
  return Guarded(x.dimensions(), kernel.dimensions(), y->dimensions(), g, [&](const Problem& p) {
    auto pd = p.Forward();
    memory xm(p.src, Engine(), x.typed_data()), ym(p.dst, Engine(), y->typed_data()),
        km(p.weights_hwio, Engine(), kernel.typed_data());
    memory wm = WeightsAs(pd.weights_desc(), km);
    dnnl::convolution_forward(pd).execute(Stream(), {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}});
    Stream().wait();
  });
}

ffi::Error BackwardData(ffi::BufferR4<ffi::F32> dy, ffi::BufferR4<ffi::F32> kernel, ffi::ResultBufferR4<ffi::F32> dx,
                        Span strides, Span dilation, Span pad_before, Span pad_after, int64_t groups) {
  Geometry g{strides, dilation, pad_before, pad_after, groups};
  return Guarded(dx->dimensions(), kernel.dimensions(), dy.dimensions(), g, [&](const Problem& p) {
    dnnl::convolution_backward_data::desc desc(dnnl::algorithm::convolution_direct, p.src, p.weights_any, p.dst,
                                               p.strides, p.dilates, p.pad_before, p.pad_after);
    dnnl::convolution_backward_data::primitive_desc pd(desc, Engine(), p.Forward());
    memory dxm(p.src, Engine(), dx->typed_data()), dym(p.dst, Engine(), dy.typed_data()),
        km(p.weights_hwio, Engine(), kernel.typed_data());
    memory wm = WeightsAs(pd.weights_desc(), km);
    dnnl::convolution_backward_data(pd).execute(
        Stream(), {{DNNL_ARG_DIFF_SRC, dxm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_DST, dym}});
    Stream().wait();
  });
}

ffi::Error BackwardWeights(ffi::BufferR4<ffi::F32> x, ffi::BufferR4<ffi::F32> dy, ffi::ResultBufferR4<ffi::F32> dk,
                           Span strides, Span dilation, Span pad_before, Span pad_after, int64_t groups) {
  Geometry g{strides, dilation, pad_before, pad_after, groups};
  return Guarded(x.dimensions(), dk->dimensions(), dy.dimensions(), g, [&](const Problem& p) {
    dnnl::convolution_backward_weights::desc desc(dnnl::algorithm::convolution_direct, p.src, p.weights_any, p.dst,
                                                  p.strides, p.dilates, p.pad_before, p.pad_after);
    dnnl::convolution_backward_weights::primitive_desc pd(desc, Engine(), p.Forward());
    memory xm(p.src, Engine(), x.typed_data()), dym(p.dst, Engine(), dy.typed_data()),
        out(p.weights_hwio, Engine(), dk->typed_data());
    bool direct = pd.diff_weights_desc() == p.weights_hwio;
    memory dkm = direct ? out : memory(pd.diff_weights_desc(), Engine());
    dnnl::convolution_backward_weights(pd).execute(
        Stream(), {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_DIFF_WEIGHTS, dkm}});
    if (!direct) dnnl::reorder(dkm, out).execute(Stream(), dkm, out);
    Stream().wait();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegOneDnnConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Ret<ffi::BufferR4<ffi::F32>>()
                                  .Attr<Span>("strides")
                                  .Attr<Span>("dilation")
                                  .Attr<Span>("pad_before")
                                  .Attr<Span>("pad_after")
                                  .Attr<int64_t>("groups"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegOneDnnConvBackwardData, BackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Ret<ffi::BufferR4<ffi::F32>>()
                                  .Attr<Span>("strides")
                                  .Attr<Span>("dilation")
                                  .Attr<Span>("pad_before")
                                  .Attr<Span>("pad_after")
                                  .Attr<int64_t>("groups"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegOneDnnConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Ret<ffi::BufferR4<ffi::F32>>()
                                  .Attr<Span>("strides")
                                  .Attr<Span>("dilation")
                                  .Attr<Span>("pad_before")
                                  .Attr<Span>("pad_after")
                                  .Attr<int64_t>("groups"));
