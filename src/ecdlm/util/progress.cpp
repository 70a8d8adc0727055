#include "ecdlm/util/progress.h"

#include <unistd.h>

#include <cstdio>

namespace ecdlm {
namespace {
bool g_enabled = true;
}

void ProgressBar::set_enabled(bool on) { g_enabled = on; }

std::string format_duration(double s) {
  if (s < 0 || s > 1e7) return "?";
  char buf[32];
  int t = static_cast<int>(s + 0.5);
  if (t >= 3600)
    std::snprintf(buf, sizeof(buf), "%dh%02dm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(buf, sizeof(buf), "%dm%02ds", t / 60, t % 60);
  return buf;
}

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total),
      start_(std::chrono::steady_clock::now()), last_draw_(start_), tty_(::isatty(2)) {}

void ProgressBar::update(int64_t done, const std::string& extra, double units_done) {
  done_ = done;
  extra_ = extra;
  units_ = units_done >= 0 ? units_done : static_cast<double>(done);
  auto now = std::chrono::steady_clock::now();
  // TTY: redraw at most 10x per second; logs: one line every 30 s.
  double min_gap = tty_ ? 0.1 : 30.0;
  if (std::chrono::duration<double>(now - last_draw_).count() >= min_gap) draw(false);
}

void ProgressBar::finish(const std::string& extra) {
  if (!extra.empty()) extra_ = extra;
  draw(true);
}

void ProgressBar::draw(bool final) {
  if (!g_enabled) return;
  last_draw_ = std::chrono::steady_clock::now();
  double el = std::chrono::duration<double>(last_draw_ - start_).count();
  double frac = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 0.0;
  if (frac > 1) frac = 1;
  const int width = 24;
  std::string bar(static_cast<size_t>(frac * width), '#');
  bar.resize(width, '.');
  double rate = el > 0 ? units_ / el : 0.0;
  double eta = frac > 0 ? el * (1 - frac) / frac : -1;
  std::fprintf(stderr, "%s%s [%s] %3.0f%% %lld/%lld %.0f %s/s %s ETA %s %s%s", tty_ ? "\r" : "",
               label_.c_str(), bar.c_str(), frac * 100, static_cast<long long>(done_),
               static_cast<long long>(total_), rate, unit_.c_str(), format_duration(el).c_str(),
               final ? "0m00s" : format_duration(eta).c_str(), extra_.c_str(),
               tty_ ? (final ? "\n" : "\033[K") : "\n");
  std::fflush(stderr);
}

}  // namespace ecdlm
