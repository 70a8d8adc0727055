#include "ecdlm/dist/process_group.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <sstream>

#include "ecdlm/dist/c10d_impl.h"
#include "ecdlm/util/error.h"
#include "ecdlm/util/log.h"

namespace ecdlm::dist {
namespace {

using Ms = std::chrono::milliseconds;

const char* env_or_null(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name, int fallback, int lo, int hi) {
  const char* v = env_or_null(name);
  if (!v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < lo || x > hi)
    fail("environment", name, std::string("'") + v + "' is not an integer in [" + std::to_string(lo) + ", " +
                                  std::to_string(hi) + "]",
         "launch with `ecdlm launch` or torchrun, which set it");
  return static_cast<int>(x);
}

Ms to_ms(double s) { return Ms(static_cast<int64_t>(s * 1000.0)); }

bool is_loopback(const std::string& a) { return a == "localhost" || a.rfind("127.", 0) == 0 || a == "::1"; }

std::string hb_key(int r) { return "ecdlm/heartbeat/" + std::to_string(r); }

// The message of a c10d/Gloo exception without its C++ backtrace, on one line, bounded.
std::string brief(const std::exception& e) {
  const auto* ce = dynamic_cast<const c10::Error*>(&e);
  std::string m = ce ? ce->what_without_backtrace() : e.what();
  for (const char* cut : {"\nException raised from", "\nframe #"})
    if (auto p = m.find(cut); p != std::string::npos) m.resize(p);
  for (auto& c : m)
    if (c == '\n') c = ' ';
  return m.size() > 300 ? m.substr(0, 300) + "..." : m;
}

}  // namespace

DistEnv DistEnv::from_environment() {
  DistEnv e;
  if (!env_or_null("WORLD_SIZE") && !env_or_null("RANK")) return e;  // a single process, as ever
  e.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 20);
  e.rank = env_int("RANK", 0, 0, e.world_size - 1);
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0, e.world_size - 1);
  e.local_world_size = env_int("LOCAL_WORLD_SIZE", e.world_size, 1, e.world_size);
  if (e.local_rank >= e.local_world_size)
    fail("environment", "LOCAL_RANK", std::to_string(e.local_rank) + " is not below LOCAL_WORLD_SIZE " +
                                          std::to_string(e.local_world_size), "launch with `ecdlm launch` or torchrun");
  if (const char* a = env_or_null("MASTER_ADDR")) e.master_addr = a;
  else if (e.world_size > 1)
    fail("environment", "MASTER_ADDR", "not set (WORLD_SIZE is " + std::to_string(e.world_size) + ")",
         "set MASTER_ADDR and MASTER_PORT to rank 0's host and a free port");
  e.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
  return e;
}

std::shared_ptr<ProcessGroup> ProcessGroup::join(const DistEnv& env, double timeout_s) {
  if (!(timeout_s > 0)) fail("", "--dist-timeout", "must be positive", "e.g. --dist-timeout 300");
  std::shared_ptr<ProcessGroup> g(new ProcessGroup());
  g->env_ = env;
  g->impl_ = std::make_unique<Impl>();
  auto& im = *g->impl_;
  im.timeout_s = timeout_s;
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = static_cast<size_t>(env.world_size);
  so.waitWorkers = true;
  so.timeout = to_ms(timeout_s);
  try {
    im.store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    if (env.rank == 0 && msg.find("in use") != std::string::npos)
      fail("environment", "MASTER_PORT", "port " + std::to_string(env.master_port) + " on " + env.master_addr +
                                             " is in use",
           "pick a free port (--master-port or MASTER_PORT), or stop the process that holds it");
    fail("environment", "MASTER_ADDR", "rank " + std::to_string(env.rank) + " cannot join the group at " + where +
                                           " within " + std::to_string(timeout_s) + " s: " + brief(e),
         "start every rank (WORLD_SIZE " + std::to_string(env.world_size) +
             ") with the same MASTER_ADDR/MASTER_PORT, or raise --dist-timeout");
  }
  c10d::TCPStoreOptions ho = so;
  ho.isServer = false;
  ho.numWorkers = c10::nullopt;
  ho.timeout = Ms(10000);
  im.hb_store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, ho);

  auto opts = c10d::ProcessGroupGloo::Options::create(to_ms(timeout_s));
  if (const char* ifname = env_or_null("GLOO_SOCKET_IFNAME"))
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  else if (is_loopback(env.master_addr))
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  else
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  im.options = opts;
  for (int r = 0; r < env.world_size; ++r) im.members.push_back(r);
  try {
    im.pg = c10::make_intrusive<c10d::ProcessGroupGloo>(im.store, env.rank, env.world_size, opts);
  } catch (const std::exception& e) {
    fail("environment", "WORLD_SIZE", "rank " + std::to_string(env.rank) + " cannot connect to its peers: " + brief(e),
         "check that all " + std::to_string(env.world_size) + " ranks started, or raise --dist-timeout");
  }
  // One tick a second: after a failed collective, the ranks whose count stopped are the dead ones.
  im.hb_store->add(hb_key(env.rank), 1);
  im.heartbeat = std::thread([&im, r = env.rank] {
    while (!im.stop.load()) {
      for (int i = 0; i < 10 && !im.stop.load(); ++i) std::this_thread::sleep_for(Ms(100));
      try {
        im.hb_store->add(hb_key(r), 1);
      } catch (...) {
        return;  // the store (rank 0) is gone: the next collective reports it
      }
    }
  });
  LOG_INFO("dist: rank " << env.rank << " of " << env.world_size << " (local " << env.local_rank << " of "
                         << env.local_world_size << ") joined via " << where << ", Gloo, timeout "
                         << timeout_s << " s");
  return g;
}

std::shared_ptr<ProcessGroup> ProcessGroup::subgroup(const std::string& name, const std::vector<int>& ranks) {
  auto me = std::find(ranks.begin(), ranks.end(), rank());
  if (me == ranks.end()) throw std::invalid_argument("ProcessGroup::subgroup: this rank is not a member of " + name);
  std::shared_ptr<ProcessGroup> g(new ProcessGroup());
  g->env_ = env_;
  g->env_.rank = static_cast<int>(me - ranks.begin());
  g->env_.world_size = static_cast<int>(ranks.size());
  g->impl_ = std::make_unique<Impl>();
  auto& im = *g->impl_;
  im.timeout_s = impl_->timeout_s;
  im.hb_store = impl_->hb_store;  // the parent's heartbeat: it ticks for this rank already
  im.options = impl_->options;
  for (int r : ranks) im.members.push_back(impl_->members.at(static_cast<size_t>(r)));
  im.store = c10::make_intrusive<c10d::PrefixStore>("ecdlm/group/" + name, impl_->store);
  try {
    im.pg = c10::make_intrusive<c10d::ProcessGroupGloo>(im.store, g->env_.rank, g->env_.world_size, im.options);
  } catch (const std::exception& e) {
    rethrow_peer_failure("creating the process group " + name, e);
  }
  return g;
}

ProcessGroup::~ProcessGroup() {
  if (!impl_) return;
  impl_->stop = true;
  if (impl_->heartbeat.joinable()) impl_->heartbeat.join();
}

void ProcessGroup::rethrow_peer_failure(const std::string& op, const std::exception& e) {
  std::ostringstream os;
  os << "rank " << impl_->members.at(static_cast<size_t>(rank())) << ": " << op << " failed: " << brief(e) << ". ";
  // Which peers stopped ticking? Two reads 2.5 s apart on the heartbeat connection.
  std::vector<int> dead;
  try {
    const auto& m = impl_->members;
    std::vector<int64_t> a(m.size()), b(m.size());
    for (size_t i = 0; i < m.size(); ++i) a[i] = impl_->hb_store->add(hb_key(m[i]), 0);
    std::this_thread::sleep_for(Ms(2500));
    for (size_t i = 0; i < m.size(); ++i) b[i] = impl_->hb_store->add(hb_key(m[i]), 0);
    for (size_t i = 0; i < m.size(); ++i)
      if (static_cast<int>(i) != rank() && a[i] == b[i]) dead.push_back(m[i]);
  } catch (...) {
    dead = {0};  // rank 0 hosts the store: it cannot be reached, so rank 0 is gone
  }
  if (dead.empty()) {
    os << "No peer's heartbeat stopped: a rank is stalled (or diverged from the others' sequence of collectives)";
  } else {
    os << (dead.size() == 1 ? "Rank " : "Ranks ");
    for (size_t i = 0; i < dead.size(); ++i) os << (i ? ", " : "") << dead[i];
    os << (dead.size() == 1 ? " has" : " have") << " died or hung";
  }
  os << "; the last checkpoint is intact: fix the cause and restart with --resume";
  throw PeerError(os.str());
}

void ProcessGroup::all_reduce_sum(std::vector<torch::Tensor>& ts) {
  if (size() == 1 || ts.empty()) return;
  // One flat buffer per call: Gloo's multi-tensor allreduce means device replicas, not a list.
  std::vector<torch::Tensor> flat;
  for (auto& t : ts) flat.push_back(t.detach().to(torch::kFloat64).reshape({-1}));
  std::vector<torch::Tensor> buf{torch::cat(flat)};
  try {
    impl_->pg->allreduce(buf)->wait();
  } catch (const std::exception& e) {
    rethrow_peer_failure("all_reduce", e);
  }
  int64_t off = 0;
  torch::NoGradGuard ng;
  for (auto& t : ts) {
    const int64_t n = t.numel();
    t.copy_(buf[0].narrow(0, off, n).view(t.sizes()));
    off += n;
  }
}

void ProcessGroup::all_reduce_sum(torch::Tensor& t) {
  std::vector<torch::Tensor> v{t};
  all_reduce_sum(v);
}

void ProcessGroup::broadcast(torch::Tensor& t, int root) {
  if (size() == 1) return;
  std::vector<torch::Tensor> v{t.is_contiguous() ? t : t.contiguous()};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  try {
    impl_->pg->broadcast(v, o)->wait();
  } catch (const std::exception& e) {
    rethrow_peer_failure("broadcast", e);
  }
  if (!v[0].is_same(t)) {
    torch::NoGradGuard ng;
    t.copy_(v[0]);
  }
}

torch::Tensor ProcessGroup::all_gather(const torch::Tensor& t) {
  auto in = t.contiguous();
  if (size() == 1) return in.unsqueeze(0).clone();
  std::vector<int64_t> shape{size()};
  for (auto d : in.sizes()) shape.push_back(d);
  auto out = torch::empty(shape, in.options());
  std::vector<std::vector<torch::Tensor>> outs(1);
  for (int r = 0; r < size(); ++r) outs[0].push_back(out[r]);
  std::vector<torch::Tensor> ins{in};
  try {
    impl_->pg->allgather(outs, ins)->wait();
  } catch (const std::exception& e) {
    rethrow_peer_failure("all_gather", e);
  }
  return out;
}

void ProcessGroup::barrier() {
  if (size() == 1) return;
  try {
    impl_->pg->barrier()->wait();
  } catch (const std::exception& e) {
    rethrow_peer_failure("barrier", e);
  }
}

void ProcessGroup::check_same(const std::string& what, const std::string& value, const std::string& fix) {
  if (size() == 1) return;
  const std::string prefix = "ecdlm/check/" + std::to_string(impl_->check_seq++) + "/";
  std::vector<std::string> values(static_cast<size_t>(size()));
  try {
    impl_->store->set(prefix + std::to_string(rank()), std::vector<uint8_t>(value.begin(), value.end()));
    for (int r = 0; r < size(); ++r) {
      auto v = impl_->store->get(prefix + std::to_string(r));
      values[r] = std::string(v.begin(), v.end());
    }
  } catch (const std::exception& e) {
    rethrow_peer_failure("the start-up check of " + what, e);
  }
  for (int r = 1; r < size(); ++r)
    if (values[r] != values[0])
      fail("rank " + std::to_string(r), what,
           "differs across ranks: rank 0 has " + values[0] + ", rank " + std::to_string(r) + " has " + values[r],
           fix);
}

}  // namespace ecdlm::dist
