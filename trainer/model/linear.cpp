#include "trainer/model/linear.h"

#include "ops/qlora_linear.h"

namespace qtrain {

at::Tensor Linear::dense_weight(at::ScalarType dtype) const {
  return qweight ? ops::dequantize_4bit(*qweight, dtype) : weight.to(dtype);
}

at::Tensor Linear::forward(const at::Tensor& x, const RunContext* ctx) const {
  if (ctx && ctx->on_linear_input) ctx->on_linear_input(*this, x);
  if (!lora) {
    // A 4-bit W without an adapter still goes through the QLoRA op (its frozen form): plain autograd
    // through at::linear(x, deq(W)) would keep the full-precision W alive until backward.
    if (qweight) return ops::qlora_linear(x, ops::QLoraLinearArgs{&*qweight, bias, {}, {}, 1.0, {}});
    return at::linear(x, weight, bias);
  }
  at::Tensor mask;  // like x; drawn from the context's generator so recompute can replay it
  if (ctx && ctx->training && lora->dropout > 0) {
    TORCH_CHECK(ctx->dropout_gen.defined(), "LoRA dropout needs RunContext::dropout_gen");
    // From the run's generator (on the training device) so recompute and resume replay it exactly; in
    // the adapter dtype, so 1/(1-p) and x·mask are not rounded to bf16 (PEFT applies dropout after
    // casting x to the LoRA dtype).
    mask = ops::lora_dropout_mask(x.sizes(), lora->dropout, ctx->dropout_gen, lora->A.scalar_type()).to(x.device());
  }
  if (qweight) return ops::qlora_linear(x, ops::QLoraLinearArgs{&*qweight, bias, lora->A, lora->B, lora->scale, mask});
  // Dense base (quantization off): PEFT's LoRA forward with plain autograd ops. The LoRA branch runs
  // in the adapter dtype and the sum is cast back to the base output dtype.
  at::Tensor base = at::linear(x, weight, bias);
  at::Tensor xl = (mask.defined() ? x * mask : x).to(lora->A.scalar_type());
  return (base + at::linear(at::linear(xl, lora->A), lora->B) * lora->scale).to(base.scalar_type());
}

}  // namespace qtrain
