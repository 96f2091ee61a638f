#include "verify.h"

#include <cmath>
#include <cstdio>

#include "reference/reference.h"

namespace flashsdpa::cli {

void Comparison::append(const std::vector<double>& got_part, const std::vector<double>& ref64_part,
                        const std::vector<double>& lowp_part) {
  got.insert(got.end(), got_part.begin(), got_part.end());
  ref64.insert(ref64.end(), ref64_part.begin(), ref64_part.end());
  lowp.insert(lowp.end(), lowp_part.begin(), lowp_part.end());
}

Verdict Comparison::judge(double factor) const {
  Verdict verdict;
  verdict.elements = static_cast<int64_t>(ref64.size());
  verdict.message = reference::check_close(got, ref64, lowp, factor);
  verdict.pass = verdict.message.empty();
  double lowp_error = 0.0;
  for (size_t n = 0; n < ref64.size() && n < got.size() && n < lowp.size(); ++n) {
    if (!std::isfinite(ref64[n])) continue;
    if (std::isfinite(lowp[n])) lowp_error = std::fmax(lowp_error, std::fabs(lowp[n] - ref64[n]));
    if (std::isfinite(got[n])) verdict.max_error = std::fmax(verdict.max_error, std::fabs(got[n] - ref64[n]));
  }
  verdict.bound = factor * lowp_error + 1e-6;
  return verdict;
}

Verdict combine(const Verdict& a, const Verdict& b) {
  const auto margin = [](const Verdict& v) { return v.bound > 0 ? v.max_error / v.bound : 0.0; };
  Verdict worst = (!a.pass || (b.pass && margin(a) >= margin(b))) ? a : b;
  worst.pass = a.pass && b.pass;
  if (worst.message.empty()) worst.message = a.message.empty() ? b.message : a.message;
  worst.elements = a.elements + b.elements;
  return worst;
}

int64_t attended_pairs(int64_t seqlen_q, int64_t key_begin, int64_t key_end, int64_t window_left,
                       int64_t window_right) {
  const core::Mask mask = core::Mask::make(seqlen_q, key_begin, key_end, window_left, window_right);
  int64_t pairs = 0;
  for (int64_t i = 0; i < seqlen_q; ++i) pairs += core::max_i64(mask.row_end(i) - mask.row_begin(i), 0);
  return pairs;
}

std::string format_bytes(double bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024.0 && unit < 4) {
    bytes /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof(text), unit == 0 ? "%.0f %s" : "%.1f %s", bytes, kUnits[unit]);
  return text;
}

}  // namespace flashsdpa::cli
