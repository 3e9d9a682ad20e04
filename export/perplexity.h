// Perplexity of a language model over a text corpus, the way the GPTQ and AWQ papers measure it
// (../shared/reference/performance.md §4.1), and the KL divergence of a model from a reference on the
// same tokens (how far quantization moved the next-token distributions). Used by `qtrain eval` and by
// the export quality report.
//
// The protocol (GPTQ datautils.get_wikitext2 + llama_eval; AWQ's evaluation is the same):
//   1. the corpus is HF `datasets`' wikitext rows joined by "\n\n" and tokenized once, with the
//      tokenizer's own special tokens (BOS once at the very start for Llama; nothing for Qwen2);
//   2. the ids are cut into non-overlapping windows of seq_len (2048 in the papers) from the start; the
//      tail shorter than seq_len is dropped;
//   3. each window is run on its own (positions 0..seq_len-1, no context from the previous window) and
//      every token but its first is predicted: mean NLL = Σ CE / (windows · (seq_len - 1)), ppl = e^NLL.
//      GPTQ writes it as exp(Σ_w meanCE_w · seq_len / (windows · seq_len)): the same number, since every
//      window predicts the same seq_len - 1 tokens.
// The same model gives 5.47 under this protocol, 5.12 with 4096-token windows and 8.71 as lm_eval's word
// perplexity: compare only numbers measured the same way.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include <ATen/ATen.h>

#include "data/progress.h"
#include "data/tokenizer/tokenizer.h"
#include "trainer/model/model.h"

namespace qtrain {

// The text of a corpus file as HF `datasets` would feed it to the tokenizer in the GPTQ protocol: the
// file is read with universal newlines (CRLF and lone CR become LF, as Python's text mode does), split
// into lines that keep their "\n", whitespace-only lines (ASCII spaces and tabs; Python's strip() would also
// take Unicode spaces) become "" (the wikitext loader's rows), and the
// rows are joined with "\n\n". For the original wiki.test.raw this is exactly
// "\n\n".join(load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]).
// Throws InputError naming the file when it cannot be read or is empty.
std::string corpus_text(const std::filesystem::path& text_file);

// Token ids of corpus_text(text_file), tokenized in one piece with the tokenizer's special tokens (BOS
// once at the start for Llama-family tokenizers, as `tokenizer(text)` does). Throws InputError naming
// the file for invalid UTF-8.
std::vector<int64_t> corpus_ids(const Tokenizer& tok, const std::filesystem::path& text_file);

// Windows over a token stream. Window i covers ids[i·stride, i·stride + seq_len). stride == seq_len is
// the papers' non-overlapping protocol; stride < seq_len gives sliding windows (transformers' perplexity
// guide) where each window after the first scores only its last `stride` tokens, so every scored token
// has at least seq_len - stride tokens of context and none is scored twice.
struct TextWindows {
  at::Tensor ids;              // [n, seq_len] int64 on the CPU
  int64_t seq_len = 0;
  int64_t stride = 0;
  int64_t corpus_tokens = 0;   // tokens in the stream the windows were cut from
  int64_t available = 0;       // full windows the stream holds (n ≤ available when max_windows cut them)
  int64_t dropped_tail = 0;    // tokens after the last available window's end: never scored

  int64_t size() const { return ids.defined() ? ids.size(0) : 0; }
  // The first position of window i whose token is scored (predicted from the positions before it).
  int64_t scored_from(int64_t i) const { return i == 0 ? 1 : std::max<int64_t>(1, seq_len - stride); }
  // Tokens scored over all n windows: n·(seq_len - 1) for non-overlapping windows.
  int64_t scored_tokens() const;
};

// max_windows 0 = all. Throws UsageError for seq_len < 2, a stride outside [1, seq_len] (a larger
// stride would skip tokens), a negative max_windows, or a stream shorter than one window.
TextWindows make_windows(const std::vector<int64_t>& ids, int64_t seq_len, int64_t stride, int64_t max_windows);

struct NllResult {
  double nll = 0;      // mean negative log-likelihood (nats) per scored token
  double ppl = 0;      // exp(nll)
  int64_t tokens = 0;  // scored tokens
  double kl = -1;      // mean per-token KL(p_reference || p_model) in nats when a reference was given, else -1
};

// Called after each batch with the windows done so far, of `total`, and the running mean NLL to read if
// needed: reading it synchronises with the device, so a throttled progress line reads it only when it draws.
using WindowProgress = std::function<void(int64_t done, int64_t total, const std::function<double()>& running_nll)>;

// Shows window_nll's progress on `line`, with the running perplexity.
WindowProgress show_window_progress(ProgressLine& line);

// Mean NLL over every scored token of the windows, batch_size windows at a time. Logits are computed in
// the model's dtype (as transformers does in the papers' code) and turned into fp32 log-softmax a chunk
// of rows at a time, so [tokens, vocab] never exists in full. With `reference`, the reference model runs
// on the same batch and the mean KL(p_ref || p_model) over the same tokens is returned too; its logits
// are moved to the model's device. Throws UsageError when batch_size < 1, the windows are empty, an id
// is outside the vocabulary, or the reference's vocabulary differs from the model's. chunk_rows: rows of
// log-softmax at once (0 = about 256 MiB of fp32 logits; tests set it small to cross chunk edges).
NllResult window_nll(const LlamaModel& model, const TextWindows& w, int64_t batch_size,
                     const LlamaModel* reference = nullptr, const WindowProgress& progress = {}, int64_t chunk_rows = 0);

}  // namespace qtrain
