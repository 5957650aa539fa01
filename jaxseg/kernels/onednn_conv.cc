// oneDNN convolutions as XLA FFI handlers for the CPU backend (built and loaded by
// jaxseg/kernels/onednn.py).
//
// All three take NHWC activations and HWIO kernels in float32, stride 1, no dilation, no
// groups, and "SAME" padding as XLA computes it for stride 1: (k - 1) / 2 before, the rest
// after. oneDNN picks its own weight layout (`format_tag::any`); weights are reordered from
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

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  static thread_local dnnl::stream stream(Engine());
  return stream;
}

// The problem in oneDNN's terms: logical NCHW / OIHW dimensions, laid out as NHWC / HWIO.
struct Problem {
  memory::desc src, dst, weights_hwio, weights_any;
  memory::dims strides{1, 1}, pad_before, pad_after;

  Problem(int64_t n, int64_t h, int64_t w, int64_t c, int64_t kh, int64_t kw, int64_t o)
      : src({n, c, h, w}, Type::f32, Tag::nhwc),
        dst({n, o, h, w}, Type::f32, Tag::nhwc),
        weights_hwio({o, c, kh, kw}, Type::f32, Tag::hwio),
        weights_any({o, c, kh, kw}, Type::f32, Tag::any),
        pad_before({(kh - 1) / 2, (kw - 1) / 2}),
        pad_after({kh - 1 - (kh - 1) / 2, kw - 1 - (kw - 1) / 2}) {}

  dnnl::convolution_forward::primitive_desc Forward() const {
    dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
                                         weights_any, dst, strides, pad_before, pad_after);
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

std::string Shape(ffi::Span<const int64_t> dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

// x [N, H, W, C], kernel [KH, KW, C, O], y [N, H, W, O]: an error naming the shapes unless they fit.
ffi::Error CheckShapes(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel, ffi::Span<const int64_t> y) {
  bool fits = kernel[2] == x[3] && y[0] == x[0] && y[1] == x[1] && y[2] == x[2] && y[3] == kernel[3];
  if (fits) return ffi::Error::Success();
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN convolution: shapes do not fit: x " + Shape(x) +
                                                          ", kernel " + Shape(kernel) + ", output " + Shape(y));
}

// Runs `body` (which waits for its stream before its temporaries go) with oneDNN's exceptions
// turned into FFI errors that name the shapes.
template <typename Body>
ffi::Error Guarded(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel, ffi::Span<const int64_t> y, Body body) {
  if (ffi::Error error = CheckShapes(x, kernel, y); error.failure()) return error;
  try {
    body();
    return ffi::Error::Success();
  } catch (const std::exception& error) {
    return ffi::Error(ffi::ErrorCode::kInternal, "oneDNN convolution with x " + Shape(x) + ", kernel " + Shape(kernel) +
                                                     ": " + error.what());
  }
}

ffi::Error Forward(ffi::BufferR4<ffi::F32> x, ffi::BufferR4<ffi::F32> kernel, ffi::ResultBufferR4<ffi::F32> y) {
  return Guarded(x.dimensions(), kernel.dimensions(), y->dimensions(), [&] {
    auto xd = x.dimensions(), kd = kernel.dimensions();
    Problem p(xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], kd[3]);
    auto pd = p.Forward();
    memory xm(p.src, Engine(), x.typed_data()), ym(p.dst, Engine(), y->typed_data()),
        km(p.weights_hwio, Engine(), kernel.typed_data());
    memory wm = WeightsAs(pd.weights_desc(), km);
    dnnl::convolution_forward(pd).execute(Stream(), {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}});
    Stream().wait();
  });
}

ffi::Error BackwardData(ffi::BufferR4<ffi::F32> dy, ffi::BufferR4<ffi::F32> kernel, ffi::ResultBufferR4<ffi::F32> dx) {
  return Guarded(dx->dimensions(), kernel.dimensions(), dy.dimensions(), [&] {
    auto xd = dx->dimensions(), kd = kernel.dimensions();
    Problem p(xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], kd[3]);
    dnnl::convolution_backward_data::desc desc(dnnl::algorithm::convolution_direct, p.src, p.weights_any, p.dst,
                                               p.strides, p.pad_before, p.pad_after);
    dnnl::convolution_backward_data::primitive_desc pd(desc, Engine(), p.Forward());
    memory dxm(p.src, Engine(), dx->typed_data()), dym(p.dst, Engine(), dy.typed_data()),
        km(p.weights_hwio, Engine(), kernel.typed_data());
    memory wm = WeightsAs(pd.weights_desc(), km);
    dnnl::convolution_backward_data(pd).execute(
        Stream(), {{DNNL_ARG_DIFF_SRC, dxm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_DST, dym}});
    Stream().wait();
  });
}

ffi::Error BackwardWeights(ffi::BufferR4<ffi::F32> x, ffi::BufferR4<ffi::F32> dy, ffi::ResultBufferR4<ffi::F32> dk) {
  return Guarded(x.dimensions(), dk->dimensions(), dy.dimensions(), [&] {
    auto xd = x.dimensions(), kd = dk->dimensions();
    Problem p(xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], kd[3]);
    dnnl::convolution_backward_weights::desc desc(dnnl::algorithm::convolution_direct, p.src, p.weights_any, p.dst,
                                                  p.strides, p.pad_before, p.pad_after);
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
                                  .Ret<ffi::BufferR4<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegOneDnnConvBackwardData, BackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Ret<ffi::BufferR4<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsegOneDnnConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Arg<ffi::BufferR4<ffi::F32>>()
                                  .Ret<ffi::BufferR4<ffi::F32>>());
