#include "trainer/model/recompute.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

namespace qtrain {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What backward needs besides tensors, owned by the autograd node (a capsule in saved_data), so it
// lives exactly as long as the graph does.
struct Replay : torch::CustomClassHolder {
  LayerFn layer;
  std::optional<RunContext> run;
  bool input_requires_grad = false;  // an offloaded checkpoint is a host copy: remember what the input was
};

// The host copy of a checkpoint: pinned memory on CUDA (the device-to-host copy then runs asynchronously on the
// current stream), a separate tensor on the CPU (bit-identical either way: a copy).
at::Tensor offload_copy(const at::Tensor& h) {
  at::Tensor host = at::empty(h.sizes(), h.options().device(at::kCPU).pinned_memory(h.is_cuda()).requires_grad(false));
  host.copy_(h.detach(), /*non_blocking=*/h.is_cuda());
  return host;
}

struct RecomputeFn : public torch::autograd::Function<RecomputeFn> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor h, at::TensorList params, const LayerFn* layer,
                            const RunContext* run) {
    // Snapshot the dropout stream so backward draws the same masks.
    if (run && run->dropout_gen.defined()) ctx->saved_data["rng"] = run->dropout_gen.get_state();
    auto replay = c10::make_intrusive<Replay>();
    replay->layer = *layer;
    if (run) replay->run = *run;
    replay->input_requires_grad = h.requires_grad();
    ctx->saved_data["replay"] = at::IValue::make_capsule(replay);
    // Offloaded: the checkpoint lives in host memory (pinned on CUDA, so the copy is asynchronous; on the CPU a
    // separate copy, which keeps the path testable) and the device copy is freed with the caller's last use.
    const bool offload = run && run->offload_checkpoints;
    if (offload) ctx->saved_data["device"] = h.device().str();
    std::vector<at::Tensor> to_save = {offload ? offload_copy(h) : h};
    to_save.insert(to_save.end(), params.begin(), params.end());
    ctx->save_for_backward(to_save);
    at::NoGradGuard no_grad;
    return (*layer)(h, run);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto holder = c10::static_intrusive_pointer_cast<Replay>(ctx->saved_data["replay"].toCapsule());
    const LayerFn* layer = &holder->layer;
    const RunContext* run = holder->run ? &*holder->run : nullptr;
    RunContext replay;
    if (run) {
      replay = *run;
      if (ctx->saved_data.count("rng")) {
        // A private generator in the saved state: the caller's stream is left where it is.
        replay.dropout_gen = run->dropout_gen.clone();
        replay.dropout_gen.set_state(ctx->saved_data["rng"].toTensor());
      }
      replay.recompute = false;
    }
    at::Tensor h = saved[0].detach();
    if (ctx->saved_data.count("device")) {  // offloaded: back to the layer's device before the recompute
      const at::Device device(ctx->saved_data["device"].toStringRef());
      h = h.to(device, /*non_blocking=*/true, /*copy=*/true);
      h.requires_grad_(holder->input_requires_grad);
    } else {
      h.requires_grad_(saved[0].requires_grad());
    }
    std::vector<at::Tensor> inputs;
    if (h.requires_grad()) inputs.push_back(h);
    for (std::size_t i = 1; i < saved.size(); ++i) inputs.push_back(saved[i]);
    at::Tensor out;
    {
      at::AutoGradMode grad(true);
      out = (*layer)(h, run ? &replay : nullptr);
    }
    variable_list grads = torch::autograd::grad({out}, inputs, {grad_out[0]}, /*retain_graph=*/false,
                                                /*create_graph=*/false, /*allow_unused=*/true);
    variable_list result;
    std::size_t k = 0;
    result.push_back(h.requires_grad() ? grads[k++] : at::Tensor());
    for (std::size_t i = 1; i < saved.size(); ++i) result.push_back(grads[k++]);
    result.push_back(at::Tensor());  // layer
    result.push_back(at::Tensor());  // run
    return result;
  }
};

}  // namespace

at::Tensor recompute_layer(const LayerFn& layer, const at::Tensor& h, const std::vector<at::Tensor>& params,
                           const RunContext* ctx) {
  // `layer` is copied into the autograd node; it must capture by value what backward needs.
  return RecomputeFn::apply(h, at::TensorList(params), &layer, ctx);
}

}  // namespace qtrain
