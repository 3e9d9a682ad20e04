// Token-weighted causal-LM cross-entropy. The loss of an optimizer step is the mean over ALL its target
// tokens (every micro-batch, every rank), so each micro-batch contributes sum(CE) / step_tokens and
// k micro-batches of b rows give exactly the loss and gradients of one batch of k·b rows.
#pragma once

#include <ATen/ATen.h>

#include "trainer/model/model.h"

namespace qtrain {

struct LossSum {
  at::Tensor sum;        // scalar: Σ CE over the batch's target tokens (fp32 with grad; fp64 without, from the backward form)
  at::Tensor correct;    // scalar int64: targets whose argmax prediction is right (no grad)
  int64_t tokens = 0;    // target tokens counted
};

// hidden [B, T, H] from LlamaModel::hidden_states, labels [B, T] (labels[t] is position t's own token,
// -100 = untrained): predicts labels[:, 1:] from hidden[:, :-1], in fp32, in chunks of rows so the
// [tokens, vocab] logits never exist all at once.
LossSum causal_lm_loss(const LlamaModel& model, const at::Tensor& hidden, const at::Tensor& labels,
                       int64_t chunk_tokens = 4096);

// Training form: runs backward of scale·Σ CE all the way through the model, one chunk of the LM head at
// a time, so only one chunk's [n, vocab] fp32 logits ever exist (with autograd they would otherwise all
// be kept until backward: 16k tokens × a 128k vocabulary is 8 GiB). Within a chunk the LM head and the
// cross-entropy are fused by hand: the fp32 logits become the softmax and then their own gradient in
// place (4 bytes per logit in fp32 compute, 8 in bf16: the matmul's output and input beside the fp32
// buffer; autograd's log-softmax path held ~14). Returns the loss sum (no grad).
LossSum causal_lm_loss_backward(const LlamaModel& model, const at::Tensor& hidden, const at::Tensor& labels,
                                double scale, int64_t chunk_tokens = 4096);

}  // namespace qtrain
