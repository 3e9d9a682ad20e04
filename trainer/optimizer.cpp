#include "trainer/optimizer.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>

#include "data/error.h"
#include "ops/adamw.h"
#include "ops/adamw_fused.h"
#include "trainer/paged_state.h"

namespace qtrain {
namespace {

using ops::AdamWFormat;

int64_t align16(int64_t x) { return (x + 15) & ~int64_t{15}; }
int64_t blocks_of(int64_t n) { return (n + ops::kAdamW8bitBlock - 1) / ops::kAdamW8bitBlock; }

// Bytes of the state of k elements of one parameter, laid out [s1 | s2 | absmax1 | absmax2], each part
// 16-byte aligned (float parts stay aligned wherever a piece starts).
int64_t part1_bytes(AdamWFormat f, int64_t k) { return align16(f == AdamWFormat::kFloat32 ? 4 * k : k); }
int64_t absmax_bytes(AdamWFormat f, int64_t k) { return f == AdamWFormat::kFloat32 ? 0 : align16(4 * blocks_of(k)); }
int64_t piece_bytes(AdamWFormat f, int64_t k) { return 2 * part1_bytes(f, k) + 2 * absmax_bytes(f, k); }

// A slice [begin, begin+n) of one parameter whose state lives in one page; begin is a multiple of 256, so
// blocks never straddle pieces (ops/adamw_fused.h: any cut at block boundaries gives the same bits).
struct Piece {
  int64_t param, begin, n, page;
  int64_t off_s1, off_s2, off_a1, off_a2;  // byte offsets in the page
  AdamWFormat format;
};

struct Layout {
  std::vector<Piece> pieces;  // by page, then by parameter
  int64_t num_pages = 0;
  int64_t used = 0;  // bytes used in the last page
};

// Greedy: parameters in order, as many whole blocks as fit in the current page, the rest on the next pages.
Layout pack(const std::vector<int64_t>& numel, const std::vector<AdamWFormat>& fmt, int64_t page_bytes) {
  Layout l;
  int64_t page = 0, used = 0;
  for (std::size_t i = 0; i < numel.size(); ++i) {
    int64_t begin = 0;
    while (begin < numel[i]) {
      const int64_t r = numel[i] - begin;
      const int64_t free = page_bytes - used;
      int64_t k = r;
      if (piece_bytes(fmt[i], r) > free) {
        int64_t b = free / piece_bytes(fmt[i], ops::kAdamW8bitBlock) + 1;
        while (b > 0 && piece_bytes(fmt[i], b * ops::kAdamW8bitBlock) > free) --b;
        k = std::min(r, b * ops::kAdamW8bitBlock);
      }
      if (k == 0) {
        if (used == 0)
          throw UsageError("optimizer.page_kb: a page of " + std::to_string(page_bytes) +
                           " bytes cannot hold one 256-element block of state");
        ++page, used = 0;
        continue;
      }
      Piece pc{static_cast<int64_t>(i), begin, k, page, 0, 0, 0, 0, fmt[i]};
      pc.off_s1 = used;
      pc.off_s2 = pc.off_s1 + part1_bytes(fmt[i], k);
      pc.off_a1 = pc.off_s2 + part1_bytes(fmt[i], k);
      pc.off_a2 = pc.off_a1 + absmax_bytes(fmt[i], k);
      l.pieces.push_back(pc);
      used += piece_bytes(fmt[i], k);
      begin += k;
    }
  }
  l.num_pages = page + 1;
  l.used = used;
  return l;
}

// AdamW, bitsandbytes' update: 32-bit state, or 8-bit blockwise for parameters of >= min_8bit_size elements.
// The state is one flat byte buffer in pages (trainer/paged_state.h); unpaged = one page holding everything,
// stepped with one fused launch per format.
class AdamW final : public Optimizer {
 public:
  AdamW(const ops::AdamWParams& hp, NamedTensors params, const OptimizerSection& c)
      : hp_(hp), params_(std::move(params)), bits_(c.bits) {
    if (params_.empty()) throw UsageError("optimizer: no adapter parameters to train");
    const at::Tensor& first = params_.front().second;
    std::vector<int64_t> numel;
    for (const auto& [name, p] : params_) {
      if (p.scalar_type() != first.scalar_type() || p.device() != first.device() || !p.is_contiguous())
        throw UsageError("optimizer: adapter parameter '" + name + "' must be contiguous with the dtype and device of '" +
                         params_.front().first + "'");
      numel.push_back(p.numel());
      formats_.push_back(c.bits == 8 && p.numel() >= c.min_8bit_size ? AdamWFormat::kBlockwise8bit : AdamWFormat::kFloat32);
    }
    const at::Device device = first.device();
    if (c.paged) {
      const int64_t page_bytes = c.page_kb * 1024;
      layout_ = pack(numel, formats_, page_bytes);
      int64_t slots = layout_.num_pages;
      if (c.device_budget_mb > 0) {
        slots = static_cast<int64_t>(c.device_budget_mb * 1024 * 1024) / page_bytes;
        if (slots < 1)
          throw UsageError("optimizer.device_budget_mb: " + std::to_string(c.device_budget_mb) +
                           " MiB is less than one page (optimizer.page_kb: " + std::to_string(c.page_kb) + ")");
      }
      pager_ = std::make_unique<PagedState>(layout_.num_pages, page_bytes, device, slots);
    } else {
      layout_ = pack(numel, formats_, std::numeric_limits<int64_t>::max() / 2);
      pager_ = std::make_unique<PagedState>(1, std::max<int64_t>(16, layout_.used), device, 1);
    }
    if (std::find(formats_.begin(), formats_.end(), AdamWFormat::kBlockwise8bit) != formats_.end()) {
      qmap1_ = ops::dynamic_map(true).to(device);
      qmap2_ = ops::dynamic_map(false).to(device);
    }
    by_page_.resize(layout_.num_pages);
    for (std::size_t i = 0; i < layout_.pieces.size(); ++i) by_page_[layout_.pieces[i].page].push_back(i);
  }

  const NamedTensors& params() const override { return params_; }

  void step(int64_t update, double lr, double grad_scale) override {
    ops::AdamWParams hp = hp_;
    hp.lr = lr;
    const auto s = ops::adamw_step_scalars(hp, update, grad_scale);
    std::vector<at::Tensor> grads;  // contiguous, alive for the whole step; undefined = no update
    for (const auto& [name, p] : params_) grads.push_back(p.grad().defined() ? p.grad().contiguous() : at::Tensor());
    const at::Tensor& first = params_.front().second;
    const int64_t es = first.element_size();
    pager_->visit([&](const std::vector<PagedState::Resident>& batch) {
      std::vector<ops::AdamWSegment> segs[2];
      for (const PagedState::Resident& r : batch) {
        for (std::size_t idx : by_page_[r.page]) {
          const Piece& pc = layout_.pieces[idx];
          if (!grads[pc.param].defined()) continue;
          ops::AdamWSegment seg;
          seg.p = static_cast<char*>(params_[pc.param].second.data_ptr()) + pc.begin * es;
          seg.g = static_cast<const char*>(grads[pc.param].data_ptr()) + pc.begin * es;
          seg.s1 = r.data + pc.off_s1;
          seg.s2 = r.data + pc.off_s2;
          if (pc.format == AdamWFormat::kBlockwise8bit) {
            seg.absmax1 = reinterpret_cast<float*>(r.data + pc.off_a1);
            seg.absmax2 = reinterpret_cast<float*>(r.data + pc.off_a2);
          }
          seg.n = pc.n;
          segs[pc.format == AdamWFormat::kBlockwise8bit].push_back(seg);
        }
      }
      if (!segs[0].empty())
        ops::adamw_fused_step(AdamWFormat::kFloat32, std::move(segs[0]), first.scalar_type(), first.device(), s);
      if (!segs[1].empty())
        ops::adamw_fused_step(AdamWFormat::kBlockwise8bit, std::move(segs[1]), first.scalar_type(), first.device(), s,
                              qmap1_, qmap2_);
    });
    // Raw-pointer writes bypass autograd's version counter; bump it as an in-place op would.
    for (const auto& [name, p] : params_)
      if (p.grad().defined() && !p.is_inference()) p.unsafeGetTensorImpl()->bump_version();
  }

  std::string kind() const override { return bits_ == 8 ? "adamw_8bit" : "adamw_32bit"; }

  // Per parameter, whatever the paging: 32-bit "<name>/exp_avg", "<name>/exp_avg_sq" (float32, the param's
  // shape); 8-bit "<name>/state1", "<name>/state2" (uint8 [numel], bnb's codes) and "<name>/absmax1",
  // "<name>/absmax2" (float32 [ceil(numel/256)]), as bnb's state dict names them.
  NamedTensors state() const override {
    const at::Tensor bytes = pager_->read_all();
    std::vector<std::vector<at::Tensor>> parts(params_.size());
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& p = params_[i].second;
      if (formats_[i] == AdamWFormat::kFloat32) {
        parts[i] = {at::zeros(p.sizes(), at::kFloat), at::zeros(p.sizes(), at::kFloat)};
      } else {
        parts[i] = {at::zeros({p.numel()}, at::kByte), at::zeros({p.numel()}, at::kByte),
                    at::zeros({blocks_of(p.numel())}, at::kFloat), at::zeros({blocks_of(p.numel())}, at::kFloat)};
      }
    }
    for_each_part(bytes, parts, /*to_pages=*/false);
    NamedTensors out;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const auto names = part_names(i);
      for (std::size_t j = 0; j < names.size(); ++j) out.emplace_back(params_[i].first + names[j], parts[i][j]);
    }
    return out;
  }

  void load_state(const NamedTensors& state, const std::string& source) override {
    std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
    std::size_t expected = 0;
    for (std::size_t i = 0; i < params_.size(); ++i) expected += part_names(i).size();
    if (by_name.size() != expected)
      throw InputError(source + ": optimizer state has " + std::to_string(by_name.size()) + " tensors, this model's " +
                       std::to_string(params_.size()) + " adapter tensors with " + kind() + " state need " +
                       std::to_string(expected));
    std::vector<std::vector<at::Tensor>> parts(params_.size());
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& p = params_[i].second;
      const auto names = part_names(i);
      for (std::size_t j = 0; j < names.size(); ++j) {
        const std::string key = params_[i].first + names[j];
        auto it = by_name.find(key);
        if (it == by_name.end())
          throw InputError(source + ": optimizer state has no tensor '" + key + "' (" + kind() + " state with " +
                           (formats_[i] == AdamWFormat::kFloat32 ? "32-bit" : "8-bit") + " state for this parameter)");
        const bool f32 = formats_[i] == AdamWFormat::kFloat32;
        const at::ScalarType dt = f32 || j >= 2 ? at::kFloat : at::kByte;
        const std::vector<int64_t> shape = f32 ? p.sizes().vec() : std::vector<int64_t>{j < 2 ? p.numel() : blocks_of(p.numel())};
        if (it->second.scalar_type() != dt || it->second.sizes().vec() != shape)
          throw InputError(source + ": optimizer tensor '" + key + "' is " + c10::toString(it->second.scalar_type()) +
                           c10::str(it->second.sizes()) + ", expected " + c10::toString(dt) + c10::str(at::IntArrayRef(shape)));
        parts[i].push_back(it->second.to(at::kCPU).contiguous());
      }
    }
    at::Tensor bytes = at::zeros({pager_->num_pages() * pager_->page_bytes()}, at::kByte);
    for_each_part(bytes, parts, /*to_pages=*/true);
    pager_->write_all(bytes);
  }

  int64_t state_bytes() const override { return pager_->device_bytes(); }
  int64_t host_state_bytes() const override { return pager_->host_bytes(); }
  const PagedState* pager() const override { return pager_.get(); }

 private:
  std::vector<std::string> part_names(std::size_t i) const {
    if (formats_[i] == AdamWFormat::kFloat32) return {"/exp_avg", "/exp_avg_sq"};
    return {"/state1", "/state2", "/absmax1", "/absmax2"};
  }

  // Copies every piece between the flat page bytes (CPU) and the per-parameter tensors (CPU, contiguous).
  void for_each_part(const at::Tensor& bytes, std::vector<std::vector<at::Tensor>>& parts, bool to_pages) const {
    uint8_t* base = bytes.data_ptr<uint8_t>();
    for (const Piece& pc : layout_.pieces) {
      uint8_t* page = base + pc.page * pager_->page_bytes();
      auto& t = parts[pc.param];
      auto move = [&](int64_t off, const at::Tensor& whole, int64_t first, int64_t count) {
        uint8_t* tensor_bytes = static_cast<uint8_t*>(whole.data_ptr()) + first * whole.element_size();
        const std::size_t len = static_cast<std::size_t>(count * whole.element_size());
        if (to_pages) std::memcpy(page + off, tensor_bytes, len);
        else std::memcpy(tensor_bytes, page + off, len);
      };
      move(pc.off_s1, t[0], pc.begin, pc.n);
      move(pc.off_s2, t[1], pc.begin, pc.n);
      if (pc.format == AdamWFormat::kBlockwise8bit) {
        const int64_t b0 = pc.begin / ops::kAdamW8bitBlock;
        move(pc.off_a1, t[2], b0, blocks_of(pc.n));
        move(pc.off_a2, t[3], b0, blocks_of(pc.n));
      }
    }
  }

  ops::AdamWParams hp_;
  NamedTensors params_;
  int64_t bits_;
  std::vector<AdamWFormat> formats_;  // parallel to params_
  Layout layout_;
  std::vector<std::vector<std::size_t>> by_page_;  // piece indices of each page
  std::unique_ptr<PagedState> pager_;
  at::Tensor qmap1_, qmap2_;  // 8-bit only: bnb's signed / unsigned dynamic maps on the device
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const OptimizerSection& c, double weight_decay, NamedTensors params) {
  // load_recipe resolves the ecosystem's names (adamw_8bit, paged_adamw_32bit, ...) to adamw + bits + paged.
  if (c.name != "adamw" || (c.bits != 32 && c.bits != 8))
    throw UsageError("optimizer: " + c.name + " with " + std::to_string(c.bits) + "-bit state is not implemented");
  return std::make_unique<AdamW>(ops::AdamWParams{0.0, c.beta1, c.beta2, c.eps, weight_decay}, std::move(params), c);
}

}  // namespace qtrain
