#include "export/perplexity.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "data/error.h"

namespace qtrain {

std::string corpus_text(const std::filesystem::path& text_file) {
  std::ifstream in(text_file, std::ios::binary);
  if (!in) throw InputError(text_file.string() + ": cannot open the corpus file");
  const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw InputError(text_file.string() + ": read error");
  if (raw.empty()) throw InputError(text_file.string() + ": the corpus file is empty");

  // Universal newlines: "\r\n" and a lone "\r" end a line, as in Python's text mode (the HF wikitext
  // loader opens the raw file that way; our shared copy of wiki.test.raw has CRLF endings).
  std::string text;
  text.reserve(raw.size() + raw.size() / 8);
  bool first_row = true;
  size_t i = 0;
  while (i < raw.size()) {
    size_t end = i;
    while (end < raw.size() && raw[end] != '\n' && raw[end] != '\r') ++end;
    const bool has_newline = end < raw.size();
    const std::string_view content(raw.data() + i, end - i);
    // A whitespace-only line is the loader's "" row; any other row keeps its line ending.
    const bool blank = content.find_first_not_of(" \t\f\v") == std::string_view::npos;
    if (!first_row) text += "\n\n";
    first_row = false;
    if (!blank) {
      text += content;
      if (has_newline) text += '\n';
    }
    if (!has_newline) break;
    i = end + (raw[end] == '\r' && end + 1 < raw.size() && raw[end + 1] == '\n' ? 2 : 1);
  }
  return text;
}

std::vector<int64_t> corpus_ids(const Tokenizer& tok, const std::filesystem::path& text_file) {
  const std::string text = corpus_text(text_file);
  std::vector<int32_t> ids32;
  try {
    ids32 = tok.encode(text, /*add_special=*/true);
  } catch (const InputError& e) {
    throw InputError(text_file.string() + ": " + e.what());
  }
  return {ids32.begin(), ids32.end()};
}

int64_t TextWindows::scored_tokens() const {
  int64_t n = 0;
  for (int64_t i = 0; i < size(); ++i) n += seq_len - scored_from(i);
  return n;
}

TextWindows make_windows(const std::vector<int64_t>& ids, int64_t seq_len, int64_t stride, int64_t max_windows) {
  if (seq_len < 2) throw UsageError("seq_len " + std::to_string(seq_len) + ": a window needs at least 2 tokens");
  if (stride < 1 || stride > seq_len)
    throw UsageError("stride " + std::to_string(stride) + " must be in [1, seq_len = " + std::to_string(seq_len) +
                     "] (a larger stride would skip tokens)");
  if (max_windows < 0) throw UsageError("max_windows " + std::to_string(max_windows) + " must be >= 0 (0 = all)");
  const auto total = static_cast<int64_t>(ids.size());
  if (total < seq_len)
    throw UsageError("the corpus has " + std::to_string(total) + " tokens, fewer than one window of seq_len " +
                     std::to_string(seq_len));
  TextWindows w;
  w.seq_len = seq_len;
  w.stride = stride;
  w.corpus_tokens = total;
  w.available = (total - seq_len) / stride + 1;
  w.dropped_tail = total - ((w.available - 1) * stride + seq_len);
  const int64_t n = max_windows > 0 ? std::min(max_windows, w.available) : w.available;
  // Window i is ids[i·stride, i·stride + seq_len): a strided view of the stream, copied once.
  const at::Tensor all = at::from_blob(const_cast<int64_t*>(ids.data()), {total}, at::kLong);
  w.ids = all.as_strided({n, seq_len}, {stride, 1}).clone();  // [n, seq_len]
  return w;
}

namespace {

// Rows of [*, vocab] fp32 log-softmax processed at once: ~256 MiB per fp32 tensor (a 128k vocabulary
// gives 512 rows, 32k gives 2048); the chunk holds a few such tensors.
int64_t rows_per_chunk(int64_t vocab) { return std::max<int64_t>(1, (int64_t{256} << 20) / (4 * vocab)); }

// Final hidden states [b, seq, hidden] of plain causal windows, layer by layer (the ops of forward()).
at::Tensor final_hidden(const LlamaModel& m, const at::Tensor& ids) {
  const LlamaModel::LayerInputs in = m.layer_inputs(ids.size(0), ids.size(1));
  at::Tensor h = m.embed(ids);
  for (int64_t l = 0; l < m.num_layers(); ++l) h = m.run_layer(l, h, in);
  return m.final_norm(h);
}

}  // namespace

WindowProgress show_window_progress(ProgressLine& line) {
  return [&line](int64_t done, int64_t, const std::function<double()>& nll) {
    line.update(done, [&nll] {
      char ppl[48];
      std::snprintf(ppl, sizeof ppl, "ppl %.4f", std::exp(nll()));
      return std::string(ppl);
    });
  };
}

NllResult window_nll(const LlamaModel& model, const TextWindows& w, int64_t batch_size, const LlamaModel* reference,
                     const WindowProgress& progress, int64_t chunk_rows) {
  if (batch_size < 1) throw UsageError("batch_size " + std::to_string(batch_size) + " must be >= 1");
  if (w.size() == 0) throw UsageError("window_nll: no windows to score");
  const int64_t vocab = model.config().vocab_size;
  if (reference && reference->config().vocab_size != vocab)
    throw UsageError("the reference model's vocabulary (" + std::to_string(reference->config().vocab_size) +
                     ") differs from the model's (" + std::to_string(vocab) + "): KL needs the same tokens");
  {
    const auto [lo, hi] = at::aminmax(w.ids);
    if (lo.item<int64_t>() < 0 || hi.item<int64_t>() >= vocab)
      throw InputError("token ids span [" + std::to_string(lo.item<int64_t>()) + ", " +
                       std::to_string(hi.item<int64_t>()) + "], outside the model's vocabulary of " +
                       std::to_string(vocab) + " (a tokenizer from another model?)");
  }
  at::NoGradGuard no_grad;
  const at::Device dev = model.device();
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(dev);
  at::Tensor nll_sum = at::zeros({}, f64), kl_sum = at::zeros({}, f64);  // stay on the device: one sync at the end
  const int64_t seq = w.seq_len, n = w.size(), chunk = chunk_rows > 0 ? chunk_rows : rows_per_chunk(vocab);
  int64_t tokens = 0;
  for (int64_t b0 = 0; b0 < n; b0 += batch_size) {
    const int64_t b = std::min(batch_size, n - b0);
    const at::Tensor ids = w.ids.narrow(0, b0, b);  // [b, seq] on the CPU (embed checks and moves it)
    // Predictor rows of the flattened [b·seq] positions: position p-1 predicts token p, for the scored
    // positions p of each window. Built on the host, so no device sync decides the shapes.
    std::vector<int64_t> rows;
    for (int64_t i = 0; i < b; ++i)
      for (int64_t p = w.scored_from(b0 + i); p < seq; ++p) rows.push_back(i * seq + p - 1);
    const auto nrows = static_cast<int64_t>(rows.size());
    const at::Tensor row_idx = at::tensor(rows, at::kLong);                      // [nrows]
    const at::Tensor targets = ids.reshape({-1}).index_select(0, row_idx + 1);   // [nrows]
    const at::Tensor h = final_hidden(model, ids).reshape({b * seq, -1});        // [b·seq, hidden]
    const at::Tensor h_ref = reference ? final_hidden(*reference, ids).reshape({b * seq, -1}) : at::Tensor();
    for (int64_t r0 = 0; r0 < nrows; r0 += chunk) {
      const int64_t r = std::min(chunk, nrows - r0);
      const at::Tensor idx = row_idx.narrow(0, r0, r).to(dev);
      // [r, vocab]: logits in the compute dtype, then fp32 log-softmax (the papers' .float() before CE).
      const at::Tensor logp = at::log_softmax(model.lm_head(h.index_select(0, idx)).to(at::kFloat), -1);
      const at::Tensor tgt = targets.narrow(0, r0, r).to(dev).unsqueeze(1);  // [r, 1]
      nll_sum -= logp.gather(1, tgt).sum().to(at::kDouble);
      if (reference) {
        const at::Tensor idx_ref = row_idx.narrow(0, r0, r).to(h_ref.device());
        const at::Tensor logp_ref =
            at::log_softmax(reference->lm_head(h_ref.index_select(0, idx_ref)).to(dev, at::kFloat), -1);
        // KL(p_ref || p) = Σ_v p_ref (log p_ref - log p); p_ref underflowing to 0 contributes 0.
        kl_sum += (logp_ref.exp() * (logp_ref - logp)).sum().to(at::kDouble);
      }
    }
    tokens += nrows;
    if (progress) progress(b0 + b, n, [&] { return nll_sum.item<double>() / static_cast<double>(tokens); });
  }
  NllResult res;
  res.tokens = tokens;
  res.nll = nll_sum.item<double>() / static_cast<double>(tokens);
  res.ppl = std::exp(res.nll);
  // A non-finite NLL (logits that overflowed, e.g. float16 activations) is not a measurement.
  if (!std::isfinite(res.nll))
    throw InputError("the model's logits are not finite on these windows (NLL " + std::to_string(res.nll) + " in " +
                     c10::toString(model.dtype()) + "): evaluate in float32 or bfloat16");
  if (reference) {
    const double kl = kl_sum.item<double>() / static_cast<double>(tokens);
    // KL ≥ 0; a model identical to its reference sums float32 rounding of either sign to about ±1e-9.
    res.kl = kl > -1e-6 ? std::max(0.0, kl) : kl;
    if (!std::isfinite(res.kl))
      throw InputError("the reference model's logits are not finite on these windows (KL " + std::to_string(kl) + " in " +
                       c10::toString(reference->dtype()) + "): evaluate in float32 or bfloat16");
  }
  return res;
}

}  // namespace qtrain
