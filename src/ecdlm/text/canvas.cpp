#include "ecdlm/text/canvas.h"

namespace ecdlm::text {

std::string render_canvas(const Tokenizer& tok, const std::vector<int64_t>& ids, int64_t mask) {
  std::string out;
  std::vector<int32_t> run;
  auto flush = [&] {
    if (!run.empty()) out += tok.decode(run);
    run.clear();
  };
  for (auto id : ids) {
    if (id == mask) {
      flush();
      out += "\u2591";
    } else {
      run.push_back(static_cast<int32_t>(id));
    }
  }
  flush();
  return out;
}

}  // namespace ecdlm::text
