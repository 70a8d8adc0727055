// A one-line progress bar on stderr with throughput and ETA; silent when stderr is not a TTY
// unless forced (then it prints a line every `min_interval_s`).
#pragma once
#include <chrono>
#include <string>

namespace ecdlm {

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, std::string unit = "it");
  // `extra` is appended (e.g. "loss 3.21"); `units_done` drives the rate (e.g. tokens).
  void update(int64_t done, const std::string& extra = "", double units_done = -1);
  void finish(const std::string& extra = "");
  void set_total(int64_t total) { total_ = total; }
  static void set_enabled(bool on);

 private:
  void draw(bool final);
  std::string label_, unit_, extra_;
  int64_t total_, done_ = 0;
  double units_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool tty_;
};

std::string format_duration(double seconds);

}  // namespace ecdlm
