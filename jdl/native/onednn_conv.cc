// oneDNN 2-D convolutions as XLA FFI custom calls (jdl.onednn builds and loads this file).
//
// Three handlers, one per pass of a convolution: the forward, its input gradient and its
// kernel gradient. Activations are NHWC and kernels HWIO, as flax keeps them; oneDNN picks
// its own (blocked) layouts, and each call reorders in and out of them. Transposed
// convolutions are composed from the same three passes in jdl/onednn.py.
//
// Built against oneDNN 2.x or 3.x (their primitive-descriptor constructors differ).
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Dims = memory::dims;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// The logical shape and the geometry of one convolution: src -> dst through weights.
struct Geometry {
  Dims src, weights, dst, strides, pad_l, pad_r;  // src/dst (N, C, H, W), weights (O, I, H, W)
  std::vector<Dims> Key() const { return {src, weights, dst, strides, pad_l, pad_r}; }
};

memory::desc Nhwc(const Dims& dims) {
  return memory::desc(dims, memory::data_type::f32, memory::format_tag::nhwc);
}
memory::desc Hwio(const Dims& dims) {
  return memory::desc(dims, memory::data_type::f32, memory::format_tag::hwio);
}
memory::desc Any(const Dims& dims) {
  return memory::desc(dims, memory::data_type::f32, memory::format_tag::any);
}

// Scratchpads are passed in by each call (oneDNN's shared one is not safe when XLA runs
// two convolutions at once, or runs a primitive on a thread other than its creator's).
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

using ForwardPd = dnnl::convolution_forward::primitive_desc;
using InputGradPd = dnnl::convolution_backward_data::primitive_desc;
using KernelGradPd = dnnl::convolution_backward_weights::primitive_desc;
constexpr auto kDirect = dnnl::algorithm::convolution_direct;

#if DNNL_VERSION_MAJOR >= 3
ForwardPd MakeForwardPd(const Geometry& g) {
  return ForwardPd(Engine(), dnnl::prop_kind::forward_training, kDirect, Any(g.src),
                   Any(g.weights), Any(g.dst), g.strides, g.pad_l, g.pad_r, UserScratchpad());
}
InputGradPd MakeInputGradPd(const Geometry& g, const ForwardPd& hint) {
  return InputGradPd(Engine(), kDirect, Any(g.src), Any(g.weights), Any(g.dst), g.strides,
                     g.pad_l, g.pad_r, hint, UserScratchpad());
}
KernelGradPd MakeKernelGradPd(const Geometry& g, const ForwardPd& hint) {
  return KernelGradPd(Engine(), kDirect, Any(g.src), Any(g.weights), Any(g.dst), g.strides,
                      g.pad_l, g.pad_r, hint, UserScratchpad());
}
#else
ForwardPd MakeForwardPd(const Geometry& g) {
  dnnl::convolution_forward::desc desc(dnnl::prop_kind::forward_training, kDirect, Any(g.src),
                                       Any(g.weights), Any(g.dst), g.strides, g.pad_l, g.pad_r);
  return ForwardPd(desc, UserScratchpad(), Engine());
}
InputGradPd MakeInputGradPd(const Geometry& g, const ForwardPd& hint) {
  dnnl::convolution_backward_data::desc desc(kDirect, Any(g.src), Any(g.weights), Any(g.dst),
                                             g.strides, g.pad_l, g.pad_r);
  return InputGradPd(desc, UserScratchpad(), Engine(), hint);
}
KernelGradPd MakeKernelGradPd(const Geometry& g, const ForwardPd& hint) {
  dnnl::convolution_backward_weights::desc desc(kDirect, Any(g.src), Any(g.weights),
                                                Any(g.dst), g.strides, g.pad_l, g.pad_r);
  return KernelGradPd(desc, UserScratchpad(), Engine(), hint);
}
#endif

struct Primitives {
  ForwardPd forward_pd;
  InputGradPd input_grad_pd;
  KernelGradPd kernel_grad_pd;
  dnnl::primitive forward, input_grad, kernel_grad;
};

// The three passes of a geometry, made once per process (making them generates code).
const Primitives& PrimitivesFor(const Geometry& g) {
  static std::mutex mutex;
  static std::map<std::vector<Dims>, std::unique_ptr<Primitives>> made;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = made[g.Key()];
  if (!slot) {
    auto p = std::make_unique<Primitives>();
    p->forward_pd = MakeForwardPd(g);
    p->input_grad_pd = MakeInputGradPd(g, p->forward_pd);
    p->kernel_grad_pd = MakeKernelGradPd(g, p->forward_pd);
    p->forward = dnnl::convolution_forward(p->forward_pd);
    p->input_grad = dnnl::convolution_backward_data(p->input_grad_pd);
    p->kernel_grad = dnnl::convolution_backward_weights(p->kernel_grad_pd);
    slot = std::move(p);
  }
  return *slot;
}

// Per-thread buffers, kept between calls: a thread runs one call at a time, and fresh
// pages for every call cost as much as a small convolution. Slots 0-2 hold the operands'
// reordered copies, slot 3 the scratchpad.
constexpr int kScratchpadSlot = 3;

void* ThreadBuffer(int slot, size_t bytes) {
  struct Buffer {
    void* data = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[kScratchpadSlot + 1];
  Buffer& b = buffers[slot];
  if (b.size < bytes) {
    std::free(b.data);
    b.size = (bytes + 4095) / 4096 * 4096;
    b.data = std::aligned_alloc(4096, b.size);
    if (b.data == nullptr) throw std::bad_alloc();
  }
  return b.data;
}

// One operand of a pass: the caller's buffer (`user` layout) and the layout the primitive
// wants; inputs are read, the output is written.
struct Binding {
  int arg;  // DNNL_ARG_*
  memory::desc user, wanted;
  void* data;
  bool output;
};

// Runs `primitive` on three operands, reordering inputs in and the output out where the
// primitive's layouts differ from the caller's.
void Execute(const dnnl::primitive& primitive, const memory::desc& scratchpad,
             const Binding (&bindings)[3]) {
  dnnl::stream stream(Engine());
  std::unordered_map<int, memory> args;
  memory user_output, used_output;
  for (int slot = 0; slot < 3; ++slot) {
    const Binding& b = bindings[slot];
    memory user(b.user, Engine(), b.data), used = user;
    if (b.wanted != b.user) {
      used = memory(b.wanted, Engine(), ThreadBuffer(slot, b.wanted.get_size()));
      if (!b.output) dnnl::reorder(user, used).execute(stream, user, used);
    }
    if (b.output) {
      user_output = user;
      used_output = used;
    }
    args[b.arg] = used;
  }
  void* scratch = ThreadBuffer(kScratchpadSlot, scratchpad.get_size());
  args[DNNL_ARG_SCRATCHPAD] = memory(scratchpad, Engine(), scratch);
  primitive.execute(stream, args);
  if (used_output != user_output) {
    dnnl::reorder(used_output, user_output).execute(stream, used_output, user_output);
  }
  stream.wait();
}

template <typename Buffer>
Dims Nchw(const Buffer& b) {  // an NHWC buffer's logical (N, C, H, W)
  auto d = b.dimensions();
  return {d[0], d[3], d[1], d[2]};
}

template <typename Buffer>
Dims Oihw(const Buffer& b) {  // an HWIO buffer's logical (O, I, H, W)
  auto d = b.dimensions();
  return {d[3], d[2], d[0], d[1]};
}

Dims ToDims(ffi::Span<const int64_t> values) { return Dims(values.begin(), values.end()); }

// Runs `body`, turning C++ exceptions into an FFI error XLA reports to Python.
template <typename Body>
ffi::Error Guarded(const char* pass, Body body) {
  try {
    body();
    return ffi::Error::Success();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("jdl oneDNN convolution ") + pass + ": " + e.what());
  }
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Result = ffi::ResultBuffer<ffi::F32>;
using Ints = ffi::Span<const int64_t>;

}  // namespace

// y = conv(x, w)
ffi::Error ConvForward(F32 x, F32 w, F32Result y, Ints strides, Ints pad_l, Ints pad_r) {
  return Guarded("forward", [&] {
    Geometry g{Nchw(x), Oihw(w), Nchw(*y), ToDims(strides), ToDims(pad_l), ToDims(pad_r)};
    const Primitives& p = PrimitivesFor(g);
    const auto& pd = p.forward_pd;
    Execute(p.forward, pd.scratchpad_desc(),
            {{DNNL_ARG_SRC, Nhwc(g.src), pd.src_desc(), x.untyped_data(), false},
             {DNNL_ARG_WEIGHTS, Hwio(g.weights), pd.weights_desc(), w.untyped_data(), false},
             {DNNL_ARG_DST, Nhwc(g.dst), pd.dst_desc(), y->untyped_data(), true}});
  });
}

// dx from dy (the output's gradient) and w
ffi::Error ConvInputGrad(F32 dy, F32 w, F32Result dx, Ints strides, Ints pad_l, Ints pad_r) {
  return Guarded("input gradient", [&] {
    Geometry g{Nchw(*dx), Oihw(w), Nchw(dy), ToDims(strides), ToDims(pad_l), ToDims(pad_r)};
    const Primitives& p = PrimitivesFor(g);
    const auto& pd = p.input_grad_pd;
    Execute(p.input_grad, pd.scratchpad_desc(),
            {{DNNL_ARG_DIFF_DST, Nhwc(g.dst), pd.diff_dst_desc(), dy.untyped_data(), false},
             {DNNL_ARG_WEIGHTS, Hwio(g.weights), pd.weights_desc(), w.untyped_data(), false},
             {DNNL_ARG_DIFF_SRC, Nhwc(g.src), pd.diff_src_desc(), dx->untyped_data(), true}});
  });
}

// dw from x and dy
ffi::Error ConvKernelGrad(F32 x, F32 dy, F32Result dw, Ints strides, Ints pad_l, Ints pad_r) {
  return Guarded("kernel gradient", [&] {
    Geometry g{Nchw(x), Oihw(*dw), Nchw(dy), ToDims(strides), ToDims(pad_l), ToDims(pad_r)};
    const Primitives& p = PrimitivesFor(g);
    const auto& pd = p.kernel_grad_pd;
    Execute(p.kernel_grad, pd.scratchpad_desc(),
            {{DNNL_ARG_SRC, Nhwc(g.src), pd.src_desc(), x.untyped_data(), false},
             {DNNL_ARG_DIFF_DST, Nhwc(g.dst), pd.diff_dst_desc(), dy.untyped_data(), false},
             {DNNL_ARG_DIFF_WEIGHTS, Hwio(g.weights), pd.diff_weights_desc(),
              dw->untyped_data(), true}});
  });
}

#define JDL_CONV_BINDING                    \
  ffi::Ffi::Bind()                          \
      .Arg<F32>()                           \
      .Arg<F32>()                           \
      .Ret<F32>()                           \
      .Attr<Ints>("strides")                \
      .Attr<Ints>("pad_l")                  \
      .Attr<Ints>("pad_r")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JdlConvForward, ConvForward, JDL_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JdlConvInputGrad, ConvInputGrad, JDL_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JdlConvKernelGrad, ConvKernelGrad, JDL_CONV_BINDING);
