#include "ecdlm/dist/launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>

#include "ecdlm/util/error.h"

namespace ecdlm::dist {
namespace {

std::atomic<int> g_signal{0};
void on_signal(int sig) { g_signal = sig; }

// A port the kernel says is free now (as torchrun --standalone does; the window until rank 0
// binds it is short).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    fail("", "--master-port", std::string("cannot find a free port: ") + std::strerror(errno), "pass --master-port");
  }
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  int out_fd = -1, err_fd = -1;
  std::string out_buf, err_buf;
  bool done = false;
  int code = 0;
};

// Writes the complete lines of `buf` with the rank prefix (all of it at end of stream).
void flush_lines(std::string& buf, int rank, std::ostream& os, bool all) {
  size_t start = 0, nl;
  while ((nl = buf.find('\n', start)) != std::string::npos) {
    os << "[rank " << rank << "] " << buf.substr(start, nl - start + 1);
    start = nl + 1;
  }
  buf.erase(0, start);
  if (all && !buf.empty()) {
    os << "[rank " << rank << "] " << buf << "\n";
    buf.clear();
  }
  os.flush();
}

// Reads what is available on fd into buf; false at end of stream.
bool drain(int fd, std::string& buf) {
  char tmp[65536];
  const ssize_t n = ::read(fd, tmp, sizeof(tmp));
  if (n > 0) {
    buf.append(tmp, static_cast<size_t>(n));
    return true;
  }
  return n < 0 && (errno == EAGAIN || errno == EINTR);
}

}  // namespace

int launch(const LaunchParams& p, const std::vector<std::string>& argv) {
  if (p.nproc_per_node < 1) fail("", "--nproc-per-node", "must be at least 1");
  if (p.nnodes < 1) fail("", "--nnodes", "must be at least 1");
  if (p.node_rank < 0 || p.node_rank >= p.nnodes)
    fail("", "--node-rank", std::to_string(p.node_rank) + " is outside [0, " + std::to_string(p.nnodes) + ")");
  if (argv.empty()) fail("", "command", "nothing to launch", "e.g. ecdlm launch --nproc-per-node 2 -- train ...");
  if (argv[0] == "launch") fail("", "command", "launch cannot launch itself", "name a subcommand such as train");
  if (p.master_port < 0 || p.master_port > 65535) fail("", "--master-port", "outside [0, 65535]");
  if (p.nnodes > 1 && p.master_port == 0)
    fail("", "--master-port", "several machines need the same port on every one", "pass e.g. --master-port 29500");
  const int port = p.master_port ? p.master_port : free_port();
  const int world = p.nproc_per_node * p.nnodes;
  char exe[4096];
  const ssize_t el = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (el <= 0) fail("/proc/self/exe", "", "cannot find this binary");
  exe[el] = '\0';

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::vector<Rank> ranks(static_cast<size_t>(p.nproc_per_node));
  for (int local = 0; local < p.nproc_per_node; ++local) {
    Rank& r = ranks[local];
    r.rank = p.node_rank * p.nproc_per_node + local;
    int out[2], err[2];
    if (::pipe(out) != 0 || ::pipe(err) != 0) fail("", "", std::string("pipe: ") + std::strerror(errno));
    const pid_t pid = ::fork();
    if (pid < 0) fail("", "", std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      ::close(out[0]), ::close(out[1]), ::close(err[0]), ::close(err[1]);
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      auto set = [](const char* k, const std::string& v) { ::setenv(k, v.c_str(), 1); };
      set("RANK", std::to_string(r.rank));
      set("WORLD_SIZE", std::to_string(world));
      set("LOCAL_RANK", std::to_string(local));
      set("LOCAL_WORLD_SIZE", std::to_string(p.nproc_per_node));
      set("GROUP_RANK", std::to_string(p.node_rank));
      set("MASTER_ADDR", p.master_addr);
      set("MASTER_PORT", std::to_string(port));
      std::vector<char*> args{exe};
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(exe, args.data());
      std::fprintf(stderr, "ecdlm launch: exec %s: %s\n", exe, std::strerror(errno));
      ::_exit(127);
    }
    ::close(out[1]), ::close(err[1]);
    r.pid = pid;
    r.out_fd = out[0];
    r.err_fd = err[0];
  }
  std::cerr << "[launch] " << p.nproc_per_node << " ranks on this node (" << world << " in all), master "
            << p.master_addr << ":" << port << "\n";

  int result = 0, first_failed = -1;
  auto kill_all = [&](int sig) {
    for (auto& r : ranks)
      if (!r.done) ::kill(r.pid, sig);
  };
  std::chrono::steady_clock::time_point term_sent{};
  bool terminating = false, killed = false;
  for (;;) {
    // Output first, so a failing rank's last words are printed before the verdict.
    std::vector<pollfd> fds;
    std::vector<std::pair<Rank*, bool>> who;  // (rank, is_stderr)
    for (auto& r : ranks) {
      if (r.out_fd >= 0) fds.push_back({r.out_fd, POLLIN, 0}), who.push_back({&r, false});
      if (r.err_fd >= 0) fds.push_back({r.err_fd, POLLIN, 0}), who.push_back({&r, true});
    }
    if (!fds.empty()) ::poll(fds.data(), fds.size(), 100);
    for (size_t i = 0; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      Rank& r = *who[i].first;
      const bool is_err = who[i].second;
      std::string& buf = is_err ? r.err_buf : r.out_buf;
      const bool open = drain(fds[i].fd, buf);
      flush_lines(buf, r.rank, is_err ? std::cerr : std::cout, !open);
      if (!open) {
        ::close(fds[i].fd);
        (is_err ? r.err_fd : r.out_fd) = -1;
      }
    }
    if (const int sig = g_signal.exchange(0)) {
      std::cerr << "[launch] got signal " << sig << ", forwarding it to the ranks\n";
      kill_all(sig);
      if (result == 0) result = 128 + sig;
      if (!terminating) terminating = true, term_sent = std::chrono::steady_clock::now();
    }
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      for (auto& r : ranks) {
        if (r.pid != pid) continue;
        r.done = true;
        r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (r.code != 0 && first_failed < 0 && !terminating) {
          first_failed = r.rank;
          result = r.code;
          std::cerr << "[launch] rank " << r.rank << " "
                    << (WIFSIGNALED(status) ? "was killed by signal " + std::to_string(WTERMSIG(status))
                                            : "exited with code " + std::to_string(r.code))
                    << "; stopping the other ranks\n";
          kill_all(SIGTERM);
          terminating = true;
          term_sent = std::chrono::steady_clock::now();
        }
      }
    }
    bool all_done = true, pipes_open = false;
    for (auto& r : ranks) all_done = all_done && r.done, pipes_open = pipes_open || r.out_fd >= 0 || r.err_fd >= 0;
    if (all_done && !pipes_open) break;
    if (terminating && !killed && std::chrono::duration<double>(std::chrono::steady_clock::now() - term_sent).count() >
                           p.kill_grace_s) {
      kill_all(SIGKILL);
      killed = true;
    }
  }
  if (first_failed >= 0)
    std::cerr << "[launch] failed: rank " << first_failed << " (exit " << result << ")\n";
  return result;
}

}  // namespace ecdlm::dist
